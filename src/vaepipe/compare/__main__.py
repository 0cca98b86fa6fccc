"""`make compare`: read the finished runs back from the MLflow store, find the params that differ between
them, and write reports/compare.{md,csv,html} with the figures (vaepipe.compare.figures).

    python -m vaepipe.compare [--sweep NAME] [--study NAME [--storage URL]] [--filter "params.`model.arch` = 'mlp'"]
                              [--last N] [--sort METRIC]

The runs come from vaepipe.tracking (the same store the stages use; MLFLOW_TRACKING_URI honoured).
Runs that did not finish (FAILED, KILLED, RUNNING) are left out and counted in one line. Runs without
test metrics (train-only runs, a study's trials) are listed apart from the ranked table. With --study,
the study's runs only, and its trials table and figures (vaepipe.compare.study).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from vaepipe import paths, tracking
from vaepipe.compare import html
from vaepipe.compare.figures import draw_all
from vaepipe.compare.rows import METRICS, VAL_METRICS, Row, build_rows, has_test_metrics, select
from vaepipe.compare.table import TRAIN_ONLY_COLUMNS, markdown, table
from vaepipe.errors import TrackingError, VaepipeError
from vaepipe.tracking import search

REPORTS_DIR = paths.ROOT / "reports"
TRAIN_ONLY_TITLE = "Train-only runs (no test metrics: not ranked)"


def _write_csv(path: Path, header: list[str], cells: list[list[str]], rows: list[Row]) -> None:
    with paths.atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, "run_id"])
        writer.writerows([*cells_row, row.run.run_id] for cells_row, row in zip(cells, rows, strict=True))


def write_reports(rows: list[Row], out_dir: Path, ui_base: str, summary: str, train_only: list[Row] = (),
                  study=None) -> list[Path]:
    """compare.md, compare.csv (the ranked runs), compare_train_only.csv (when there are such runs),
    study_trials.csv (with a study: a vaepipe.compare.study.StudyPart), the figures and compare.html,
    each written atomically."""
    header, cells = table(rows)
    tables = [html.Table(None, header, cells, html.run_links(rows, ui_base),
                         note="" if rows else "No run of this selection has test metrics.")]
    md = [f"{summary}\n", markdown(header, cells)]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "compare.md", out_dir / "compare.csv", out_dir / "compare.html"]
    _write_csv(written[1], header, cells, rows)
    if train_only:
        only_header, only_cells = table(list(train_only), TRAIN_ONLY_COLUMNS)
        tables.append(html.Table(TRAIN_ONLY_TITLE, only_header, only_cells, html.run_links(list(train_only), ui_base)))
        md += [f"\n## {TRAIN_ONLY_TITLE}\n\n", markdown(only_header, only_cells)]
        written.append(out_dir / "compare_train_only.csv")
        _write_csv(written[-1], only_header, only_cells, list(train_only))
    figures = draw_all(rows, list(train_only))
    if study is not None:
        title = f"Study {study.name}: trials"
        tables.append(html.Table(title, study.header, study.cells, study.links, note=study.summary))
        md += [f"\n## {title}\n\n{study.summary}\n\n", markdown(study.header, study.cells)]
        written.append(out_dir / "study_trials.csv")
        with paths.atomic_path(written[-1]) as tmp, tmp.open("w", newline="") as handle:
            csv.writer(handle).writerows([study.header, *study.cells])
        figures.update(study.figures)
    with paths.atomic_path(written[0]) as tmp:
        tmp.write_text("".join(md) + "\n" + "".join(f"![{name}]({name})\n" for name in figures))
    for name, png in figures.items():
        with paths.atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(png)
        written.append(out_dir / name)
    with paths.atomic_path(written[2]) as tmp:
        tmp.write_text(html.page(len(rows) + len(train_only), summary, tables, figures))
    return written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vaepipe.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", help="only the runs tagged with this sweep (params.yaml tracking.sweep)")
    parser.add_argument("--study", help="only the runs of this Optuna study (`make tune`), with its trials "
                                        "table and figures")
    parser.add_argument("--storage", help="the study's Optuna storage URL (default: the journal file "
                                          ".optuna/journal.log, as `make tune`)")
    parser.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"params.`model.arch` = 'mlp'\"")
    parser.add_argument("--last", type=int, help="only the N most recent finished runs")
    parser.add_argument("--sort", default="test_loss", choices=(*METRICS, *VAL_METRICS),
                        help="sort by this metric (default test_loss; train-only runs by val_loss unless a "
                             "val_ metric is named)")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR, help="output directory (default reports/)")
    parser.add_argument("--ui-url", help="the MLflow UI the HTML links to (default: the tracking server, "
                                         "else `make ui` on --ui-host:--ui-port)")
    parser.add_argument("--ui-host", default="127.0.0.1")
    parser.add_argument("--ui-port", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.last is not None and args.last < 1:
        parser.error(f"--last must be at least 1, got {args.last}")
    for option in ("sweep", "study"):
        if "'" in (getattr(args, option) or ""):
            parser.error(f"--{option} {getattr(args, option)!r}: a name without quotes (')")
    if args.storage and not args.study:
        parser.error("--storage names where a study is: give --study NAME too")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selection = " and ".join(part for part in (args.sweep and f"sweep {args.sweep}",
                                               args.study and f"study {args.study}",
                                               args.filter and f"filter {args.filter}") if part) or "all runs"
    ui_base = args.ui_url or tracking.ui_base_url(args.ui_host, args.ui_port)
    try:
        runs, left_out = select(search.search_runs(args.filter, args.sweep, args.study), args.last)
        left = ", ".join(f"{count} {status}" for status, count in sorted(left_out.items()))
        if left:
            print(f"compare: left out {left} run(s) (not FINISHED)")
        if not runs and not args.study:
            print(f"compare: no FINISHED runs of experiment {tracking.EXPERIMENT_NAME} in {tracking.shown_uri()} "
                  f"({selection}); run `make run` or `dvc exp run` first", file=sys.stderr)
            return 1
        tested = [run for run in runs if has_test_metrics(run)]
        train_only = [run for run in runs if not has_test_metrics(run)]
        rows = build_rows(tested, args.sort)
        only_rows = build_rows(train_only, args.sort if args.sort in VAL_METRICS else "val_loss")
        study = None
        if args.study:
            from vaepipe.compare.study import study_part  # Optuna's import (~1 s) only for a study

            study = study_part(args.study, args.storage, [*rows, *only_rows], ui_base)
    except VaepipeError as error:  # the store's failure (1, as always), or no such study (load_study's error)
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, TrackingError) else error.exit_code
    summary = (f"{len(rows) + len(only_rows)} FINISHED run(s) of experiment {tracking.EXPERIMENT_NAME} in "
               f"{tracking.shown_uri()} ({selection}{', last ' + str(args.last) if args.last else ''}): "
               f"{len(rows)} with test metrics, sorted by {args.sort}"
               + (f"; {len(only_rows)} train-only, listed apart" if only_rows else "")
               + (f"; left out {left}" if left else ""))
    written = write_reports(rows, args.out, ui_base, summary, only_rows, study)
    header, cells = table(rows)
    print(markdown(header, cells), end="")
    if only_rows:
        print(f"compare: {len(only_rows)} train-only run(s) (no test metrics) listed apart in compare.md/html")
    if study is not None:
        print(f"compare: {study.summary}")
    print(f"compare: wrote {', '.join(path.name for path in written)} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
