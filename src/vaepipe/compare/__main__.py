"""`make compare`: read the finished runs back from the MLflow store, find the params that differ between
them, and write reports/compare.{md,csv,html} with the figures (vaepipe.compare.figures).

    python -m vaepipe.compare [--sweep NAME] [--study NAME [--storage URL]] [--filter "params.`model.arch` = 'mlp'"]
                              [--last N] [--sort METRIC]

The runs come from vaepipe.tracking (the same store the stages use; MLFLOW_TRACKING_URI honoured).
Runs that did not finish (FAILED, KILLED, RUNNING) are left out and counted in one line. The runs with
test metrics are ranked in one table per test protocol (test images, binarization, mc_samples,
iw_samples, dataset: vaepipe.compare.rows), never across protocols; runs without test metrics
(train-only runs, a study's trials) are listed apart, one table per validation protocol. With --study,
the study's runs only, and its trials table and figures (vaepipe.compare.study). A --sweep, --study or
--filter that selects nothing lists the sweeps and studies there are.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from vaepipe import paths, tracking
from vaepipe.compare import html
from vaepipe.compare.figures import test_figures, validation_figures
from vaepipe.compare.rows import (
    METRICS,
    VAL_METRICS,
    Protocol,
    Row,
    build_rows,
    group_by_protocol,
    has_test_metrics,
    select,
    validation_protocol,
)
from vaepipe.compare.table import TRAIN_ONLY_COLUMNS, markdown, table
from vaepipe.errors import ConfigError, TrackingError, VaepipeError
from vaepipe.tracking import search
from vaepipe.tracking.store import is_http

REPORTS_DIR = paths.ROOT / "reports"
DEFAULT_SORT, TRAIN_ONLY_SORT = "test_loss", "val_loss"  # registry metrics (a test checks it)
TRAIN_ONLY_TITLE = "Train-only runs (no test metrics: not ranked)"
# Every file compare writes (the figures' names vary with the runs): an earlier compare's files that this
# one did not write again are removed, so reports/ holds one compare; a user's other files stay.
REPORT_FILES = ("compare.md", "compare.csv", "compare.html", "compare_train_only.csv", "study_trials.csv",
                "val_loss_curves*.png", "rate_distortion*.png", "metrics_vs_*.png", "study_history_*.png",
                "study_importances.png", "study_pareto_front.png")

Groups = list[tuple[Protocol, list[Row]]]


def _write_csv(path: Path, tables: list[tuple[Protocol, list[str], list[list[str]], list[Row]]]) -> None:
    """One CSV for several tables: a protocol column first and, for ranked tables, the rank within the
    protocol (a rank is never shared across protocols); the union of their columns; the run id last."""
    ranked = any(protocol.kind == "test" for protocol, *_ in tables)
    columns = ["protocol", *(["rank"] if ranked else [])]
    for _, header, _, _ in tables:
        columns += [name for name in header if name not in columns]
    with paths.atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, [*columns, "run_id"], restval="")
        writer.writeheader()
        for protocol, header, cells, rows in tables:
            for rank, (cells_row, row) in enumerate(zip(cells, rows, strict=True), start=1):
                writer.writerow({"protocol": protocol.label, **({"rank": rank} if ranked else {}),
                                 **dict(zip(header, cells_row, strict=True)), "run_id": row.run.run_id})


def _numbered(name: str, index: int, count: int, mark: str) -> str:
    """A figure's file name, numbered by its protocol group when there are several (rate_distortion-p2.png)."""
    return name if count == 1 else name.replace(".png", f"-{mark}{index}.png")


def write_reports(groups: Groups, out_dir: Path, ui_base: str, summary: str, train_only: Groups = (),
                  study=None, links_note: str = "") -> list[Path]:
    """compare.md, compare.csv (the ranked runs: one table per test protocol), compare_train_only.csv (when
    there are such runs, one table per validation protocol), study_trials.csv (with a study: a
    vaepipe.compare.study.StudyPart), the figures and compare.html, each written atomically; then the
    files an earlier compare wrote and this one did not are removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "compare.md", out_dir / "compare.csv", out_dir / "compare.html"]
    tables, md, csv_tables = [], [f"{summary}\n"], []
    figures, captions = {}, {}
    several = len(groups) > 1
    for index, (protocol, rows) in enumerate(groups, start=1):
        header, cells = table(rows)
        title = f"Test protocol {index}: {protocol.label}" if several else f"Test protocol: {protocol.label}"
        tables.append(html.Table(title, header, cells, html.run_links(rows, ui_base),
                                 note=f"Ranked among these {len(rows)} run(s) only, not against another "
                                      "protocol's runs." if several else ""))
        md += [f"\n## {title}\n\n", markdown(header, cells)]
        csv_tables.append((protocol, header, cells, rows))
        for name, png in test_figures(rows).items():
            figures[_numbered(name, index, len(groups), "p")] = png
            captions[_numbered(name, index, len(groups), "p")] = f"{name} (test protocol: {protocol.label})"
    if not groups:
        tables.append(html.Table(None, [], [], [], note="No run of this selection has test metrics."))
        md.append("\nNo run of this selection has test metrics.\n")
    _write_csv(written[1], csv_tables)
    if train_only:
        only_tables = []
        for protocol, rows in train_only:
            only_header, only_cells = table(rows, TRAIN_ONLY_COLUMNS)
            title = f"{TRAIN_ONLY_TITLE}, validation protocol: {protocol.label}"
            tables.append(html.Table(title, only_header, only_cells, html.run_links(rows, ui_base)))
            md += [f"\n## {title}\n\n", markdown(only_header, only_cells)]
            only_tables.append((protocol, only_header, only_cells, rows))
        written.append(out_dir / "compare_train_only.csv")
        _write_csv(written[-1], only_tables)
    # The curves: one figure per validation protocol, the ranked runs' curves with the train-only ones.
    curves = group_by_protocol([row.run for _, rows in (*groups, *train_only) for row in rows], validation_protocol)
    by_run = {row.run.run_id: row for _, rows in (*groups, *train_only) for row in rows}
    for index, (protocol, runs) in enumerate(curves, start=1):
        for name, png in validation_figures([by_run[run.run_id] for run in runs]).items():
            figures[_numbered(name, index, len(curves), "v")] = png
            captions[_numbered(name, index, len(curves), "v")] = f"{name} (validation protocol: {protocol.label})"
    if study is not None:
        title = f"Study {study.name}: trials"
        tables.append(html.Table(title, study.header, study.cells, study.links, note=study.summary))
        md += [f"\n## {title}\n\n{study.summary}\n\n", markdown(study.header, study.cells)]
        written.append(out_dir / "study_trials.csv")
        with paths.atomic_path(written[-1]) as tmp, tmp.open("w", newline="") as handle:
            csv.writer(handle).writerows([study.header, *study.cells])
        figures.update(study.figures)
    if links_note:
        md.append(f"\n{links_note}\n")
    with paths.atomic_path(written[0]) as tmp:
        tmp.write_text("".join(md) + "\n" + "".join(f"![{captions.get(name, name)}]({name})\n" for name in figures))
    for name, png in figures.items():
        with paths.atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(png)
        written.append(out_dir / name)
    runs = sum(len(rows) for _, rows in (*groups, *train_only))
    with paths.atomic_path(written[2]) as tmp:
        tmp.write_text(html.page(runs, summary, tables, figures, links_note, captions))
    remove_stale(out_dir, written)
    return written


def remove_stale(out_dir: Path, written: list[Path]) -> list[Path]:
    """Remove the files of REPORT_FILES in out_dir that this compare did not write (an earlier one's)."""
    kept = {path.name for path in written}
    stale = sorted({path for pattern in REPORT_FILES for path in out_dir.glob(pattern)
                    if path.name not in kept and path.is_file()})
    for path in stale:
        path.unlink()
    return stale


def links_note(ui_base: str, ui_url_given: bool, host: str = "127.0.0.1", port: int = 5000) -> str:
    """Which MLflow UI the page's run links need: the tracking server itself, or `make ui` on this machine
    (with the HOST=/PORT= that compare was given, so the two agree)."""
    if ui_url_given:
        return f"Run links open the MLflow UI at {ui_base} (--ui-url): it must be running."
    if is_http(tracking.tracking_uri()):
        return f"Run links open the tracking server's UI at {ui_base}."
    extra = "".join(part for part in (host != "127.0.0.1" and f" HOST={host}", port != 5000 and f" PORT={port}") if part)
    return f"Run links open the MLflow UI at {ui_base}: start it first with `make ui{extra}` (it serves this local store)."


def what_exists(study_storage: str | None, study: str | None) -> str:
    """The sweeps and studies the store's runs are tagged with (FINISHED runs counted), and with --study
    the studies in the Optuna storage: what a name that matched nothing could have been."""
    runs = search.search_runs()
    finished = [run for run in runs if run.status == "FINISHED"]
    if not finished:
        return (f"the store holds no FINISHED run of experiment {tracking.EXPERIMENT_NAME}; "
                "run `make run` or `dvc exp run` first")

    def listing(tag: str) -> str:
        counts: dict[str, int] = {}
        for run in finished:
            if run.tags.get(tag):
                counts[run.tags[tag]] = counts.get(run.tags[tag], 0) + 1
        return ", ".join(f"{name} ({count} run{'s' if count > 1 else ''})" for name, count in sorted(counts.items()))

    parts = [f"the store holds {len(finished)} FINISHED run(s) of experiment {tracking.EXPERIMENT_NAME}",
             f"sweeps (SWEEP=): {listing(tracking.SWEEP_TAG) or 'none'}",
             f"studies with runs (STUDY=): {listing(search.STUDY_TAG) or 'none'}"]
    if study is not None:
        parts.append(study_listing(study_storage))
    return "; ".join(parts)


def study_listing(storage: str | None) -> str:
    from vaepipe.tune.storage import resolve_storage, storage_label, study_names

    try:
        names = study_names(storage)
    except Exception as error:  # an unreachable or broken storage: said, not raised (this is an error path)
        return f"the Optuna storage {storage_label(resolve_storage(storage))} cannot be read ({type(error).__name__})"
    return f"studies in {storage_label(resolve_storage(storage))}: {', '.join(names) or 'none'}"


def study_exists(name: str, storage: str | None) -> bool:
    from vaepipe.tune.storage import study_names

    try:
        return name in study_names(storage)
    except Exception:  # load_study says why in one line
        return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vaepipe.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", help="only the runs tagged with this sweep (params.yaml tracking.sweep)")
    parser.add_argument("--study", help="only the runs of this Optuna study (`make tune`), with its trials "
                                        "table and figures")
    parser.add_argument("--storage", help="the study's Optuna storage URL (default: the journal file "
                                          ".optuna/journal.log, as `make tune`)")
    parser.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"params.`model.arch` = 'mlp'\"")
    parser.add_argument("--last", type=int, help="only the N most recent finished runs")
    parser.add_argument("--sort", default=DEFAULT_SORT, choices=(*METRICS, *VAL_METRICS),
                        help=f"sort by this metric, best first (default {DEFAULT_SORT}; train-only runs by "
                             f"{TRAIN_ONLY_SORT} unless a validation metric is named)")
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
    selection = " and ".join(part for part in (args.sweep and f"sweep {args.sweep!r}",
                                               args.study and f"study {args.study!r}",
                                               args.filter and f"filter {args.filter}") if part) or "all runs"
    ui_base = args.ui_url or tracking.ui_base_url(args.ui_host, args.ui_port)
    try:
        runs, left_out = select(search.search_runs(args.filter, args.sweep, args.study), args.last)
        left = ", ".join(f"{count} {status}" for status, count in sorted(left_out.items()))
        if left:
            print(f"compare: left out {left} run(s) (not FINISHED)")
        selected = args.sweep or args.study or args.filter
        # A study with no runs yet still has its trials table, if the storage holds it.
        if not runs and (not args.study or not study_exists(args.study, args.storage)):
            if selected:
                print(f"compare: no FINISHED run matches {selection}; {what_exists(args.storage, args.study)}",
                      file=sys.stderr)
                return ConfigError.exit_code if args.study else 1
            print(f"compare: no FINISHED runs of experiment {tracking.EXPERIMENT_NAME} in {tracking.shown_uri()} "
                  f"({selection}); run `make run` or `dvc exp run` first", file=sys.stderr)
            return 1
        groups = [(protocol, build_rows(tested, args.sort))
                  for protocol, tested in group_by_protocol([run for run in runs if has_test_metrics(run)])]
        only_sort = args.sort if args.sort in VAL_METRICS else TRAIN_ONLY_SORT
        only_groups = [(protocol, build_rows(trained, only_sort)) for protocol, trained
                       in group_by_protocol([run for run in runs if not has_test_metrics(run)], validation_protocol)]
        ranked = sum(len(rows) for _, rows in groups)
        only = sum(len(rows) for _, rows in only_groups)
        study = None
        if args.study:
            from vaepipe.compare.study import study_part  # Optuna's import (~1 s) only for a study

            every_row = [row for _, rows in (*groups, *only_groups) for row in rows]
            study = study_part(args.study, args.storage, every_row, ui_base)
    except VaepipeError as error:  # the store's failure (1, as always), or no such study (load_study's error)
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, TrackingError) else error.exit_code
    summary = (f"{ranked + only} FINISHED run(s) of experiment {tracking.EXPERIMENT_NAME} in "
               f"{tracking.shown_uri()} ({selection}{', last ' + str(args.last) if args.last else ''}): "
               f"{ranked} with test metrics, sorted by {args.sort}"
               + (f" within each of {len(groups)} test protocols (never ranked across them)" if len(groups) > 1 else "")
               + (f"; {only} train-only, listed apart" if only else "")
               + (f"; left out {left}" if left else ""))
    note = links_note(ui_base, bool(args.ui_url), args.ui_host, args.ui_port)
    written = write_reports(groups, args.out, ui_base, summary, only_groups, study, note)
    for protocol, rows in groups:
        print(f"test protocol: {protocol.label}")
        header, cells = table(rows)
        print(markdown(header, cells), end="")
    if len(groups) > 1:
        print(f"compare: {len(groups)} test protocols: each ranked apart, never against each other")
    if only:
        print(f"compare: {only} train-only run(s) (no test metrics) listed apart in compare.md/html")
    if study is not None:
        print(f"compare: {study.summary}")
    print(f"compare: wrote {', '.join(path.name for path in written)} in {args.out}")
    print(f"compare: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
