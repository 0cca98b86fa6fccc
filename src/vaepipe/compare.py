"""`make compare`: read the finished runs back from the MLflow store, find the params that differ between
them, and write reports/compare.{md,csv,html} with the figures (vaepipe.compare_figures).

    python -m vaepipe.compare [--sweep NAME] [--filter "params.`model.arch` = 'mlp'"] [--last N] [--sort METRIC]

The runs come from vaepipe.tracking (the same store the stages use; MLFLOW_TRACKING_URI honoured).
Runs that did not finish (FAILED, KILLED, RUNNING) are left out and counted in one line.
"""

from __future__ import annotations

import argparse
import csv
import html
import math
import sys
from pathlib import Path

from vaepipe import compare_figures, paths, tracking
from vaepipe.compare_rows import IW_PARAM, METRICS, Row, build_rows, select
from vaepipe.errors import TrackingError
from vaepipe.tracking import search

REPORTS_DIR = paths.ROOT / "reports"


def table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells (blank where a run lacks a value)."""
    differing = list(rows[0].differing) if rows else []
    header = ["run", "dvc_experiment", *differing, *METRICS[:4], "iw_k", *METRICS[4:], "epochs", "median_s_per_epoch"]
    cells = []
    for row in rows:
        metric = [_number(row.metrics.get(key)) for key in METRICS]
        cells.append([row.run.name, row.run.tags.get("dvc.exp_name", ""), *row.differing.values(),
                      *metric[:4], row.run.params.get(IW_PARAM, ""), *metric[4:], _number(row.epochs),
                      _number(row.median_epoch_s, digits=2)])
    return header, cells


def _number(value: float | int | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def markdown(header: list[str], cells: list[list[str]]) -> str:
    escape = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def html_page(header: list[str], cells: list[list[str]], rows: list[Row], figures: dict[str, bytes],
              ui_base: str, summary: str) -> str:
    """One self-contained page: inline CSS, figures as data: URIs, each run linked to the MLflow UI."""
    import base64

    def cell(index: int, row_index: int, text: str) -> str:
        if index == 0:
            run = rows[row_index].run
            return f'<td><a href="{html.escape(tracking.run_url(ui_base, run.experiment_id, run.run_id))}">' \
                   f"{html.escape(text)}</a></td>"
        return f"<td>{html.escape(text)}</td>"

    body = "\n".join("<tr>" + "".join(cell(i, r, text) for i, text in enumerate(row)) + "</tr>"
                     for r, row in enumerate(cells))
    images = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(name)}</figcaption></figure>" for name, png in figures.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vaepipe: compare runs</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}} figure{{margin:1em 0}}</style></head>
<body><h1>vaepipe: {len(rows)} finished run(s)</h1><p>{html.escape(summary)}</p>
<table><thead><tr>{"".join(f"<th>{html.escape(name)}</th>" for name in header)}</tr></thead>
<tbody>
{body}
</tbody></table>
{images}
</body></html>
"""


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
    figures = compare_figures.draw_all(rows)
    for name, png in figures.items():
        with paths.atomic_path(out_dir / name) as tmp:
            tmp.write_bytes(png)
        written.append(out_dir / name)
    with paths.atomic_path(written[2]) as tmp:
        tmp.write_text(html_page(header, cells, rows, figures, ui_base, summary))
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
