"""`make compare`: read the finished runs back from the MLflow store, find the params that differ between
them, and write reports/compare.{md,csv,html} with the figures (vaepipe.compare.figures).

    python -m vaepipe.compare [--sweep NAME] [--filter "params.`model.arch` = 'mlp'"] [--last N] [--sort METRIC]

The runs come from vaepipe.tracking (the same store the stages use; MLFLOW_TRACKING_URI honoured).
Runs that did not finish (FAILED, KILLED, RUNNING) are left out and counted in one line.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from vaepipe import paths, tracking
from vaepipe.compare import html
from vaepipe.compare.figures import draw_all
from vaepipe.compare.rows import METRICS, Row, build_rows, select
from vaepipe.compare.table import markdown, table
from vaepipe.errors import TrackingError
from vaepipe.tracking import search

REPORTS_DIR = paths.ROOT / "reports"


def write_reports(rows: list[Row], out_dir: Path, ui_base: str, summary: str) -> list[Path]:
    """compare.md, compare.csv, the figures and compare.html, each written atomically."""
    header, cells = table(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "compare.md", out_dir / "compare.csv", out_dir / "compare.html"]
    with paths.atomic_path(written[0]) as tmp:
        tmp.write_text(f"{summary}\n\n{markdown(header, cells)}")
    with paths.atomic_path(written[1]) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, "run_id"])
        writer.writerows([*cells_row, row.run.run_id] for cells_row, row in zip(cells, rows, strict=True))
    figures = draw_all(rows)
    for name, png in figures.items():
        with paths.atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(png)
        written.append(out_dir / name)
    with paths.atomic_path(written[2]) as tmp:
        tmp.write_text(html.page(header, cells, rows, figures, ui_base, summary))
    return written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vaepipe.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", help="only the runs tagged with this sweep (params.yaml tracking.sweep)")
    parser.add_argument("--filter", default="", help="an MLflow search filter, e.g. \"params.`model.arch` = 'mlp'\"")
    parser.add_argument("--last", type=int, help="only the N most recent finished runs")
    parser.add_argument("--sort", default="test_loss", choices=METRICS, help="sort by this metric (default test_loss)")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR, help="output directory (default reports/)")
    parser.add_argument("--ui-url", help="the MLflow UI the HTML links to (default: the tracking server, "
                                         "else `make ui` on --ui-host:--ui-port)")
    parser.add_argument("--ui-host", default="127.0.0.1")
    parser.add_argument("--ui-port", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.last is not None and args.last < 1:
        parser.error(f"--last must be at least 1, got {args.last}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selection = " and ".join(part for part in (args.sweep and f"sweep {args.sweep}", args.filter and
                                               f"filter {args.filter}") if part) or "all runs"
    try:
        runs, left_out = select(search.search_runs(args.filter, args.sweep), args.last)
        left = ", ".join(f"{count} {status}" for status, count in sorted(left_out.items()))
        if left:
            print(f"compare: left out {left} run(s) (not FINISHED)")
        if not runs:
            print(f"compare: no FINISHED runs of experiment {tracking.EXPERIMENT_NAME} in {tracking.tracking_uri()} "
                  f"({selection}); run `make run` or `dvc exp run` first", file=sys.stderr)
            return 1
        rows = build_rows(runs, args.sort)
    except TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    summary = (f"{len(rows)} FINISHED run(s) of experiment {tracking.EXPERIMENT_NAME} in {tracking.tracking_uri()} "
               f"({selection}{', last ' + str(args.last) if args.last else ''}), sorted by {args.sort}"
               + (f"; left out {left}" if left else ""))
    written = write_reports(rows, args.out, args.ui_url or tracking.ui_base_url(args.ui_host, args.ui_port), summary)
    header, cells = table(rows)
    print(markdown(header, cells), end="")
    print(f"compare: wrote {', '.join(path.name for path in written)} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
