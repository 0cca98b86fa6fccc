"""The tables of `make compare`: their columns (the metrics' from vaepipe.metrics), each run's cells as text,
and as markdown. The ranked table holds the runs with test metrics; the train-only one the runs without
(trials)."""

from __future__ import annotations

import math

from vaepipe.compare.rows import IW_PARAM, METRICS, VAL_METRICS, Row
from vaepipe.tracking.search import DVC_EXPERIMENT_TAG

DIFFERING = "differing params"  # stands in COLUMNS for one column per param that differs, named by the param

# Every column of the table, in order: the test metrics in the registry's order (vaepipe.metrics), then iw_k,
# the protocol's evaluate.iw_samples (test_nll_iw's sample count).
COLUMNS = ("run", "dvc_experiment", "trial", DIFFERING, *METRICS, "iw_k", "epochs", "median_s_per_epoch")
# The runs without test metrics (train-only runs, a study's trials): their validation numbers.
TRAIN_ONLY_COLUMNS = ("run", "dvc_experiment", "trial", "pruned", DIFFERING, *VAL_METRICS, "epochs",
                      "median_s_per_epoch")
OPTIONAL = ("trial", "pruned")  # left out of a table where every run's cell is blank (no study)


def table(rows: list[Row], columns: tuple[str, ...] = COLUMNS) -> tuple[list[str], list[list[str]]]:
    """Header and cells (blank where a run lacks a value)."""
    kept = [column for column in columns
            if column not in OPTIONAL or any(cell for row in rows for cell in _cells(row, column))]
    differing = list(rows[0].differing) if rows else []
    header = [name for column in kept for name in (differing if column == DIFFERING else [column])]
    cells = [[cell for column in kept for cell in _cells(row, column)] for row in rows]
    return header, cells


def _cells(row: Row, column: str) -> list[str]:
    """The row's cells under `column`: one per differing param under DIFFERING, else one."""
    if column == DIFFERING:
        return list(row.differing.values())
    if column in METRICS or column in VAL_METRICS:
        return [number(row.metrics.get(column))]
    match column:
        case "run":
            return [row.run.name]
        case "dvc_experiment":
            return [row.run.tags.get("dvc.exp_name") or row.run.tags.get(DVC_EXPERIMENT_TAG, "")]
        case "trial":
            return [(row.trial or "") + (" final" if row.final else "")]
        case "pruned":
            return ["pruned" if row.pruned else ""]
        case "iw_k":
            return [row.run.params.get(IW_PARAM, "")]
        case "epochs":
            return [number(row.epochs)]
        case "median_s_per_epoch":
            return [number(row.median_epoch_s, digits=2)]
    raise ValueError(f"compare: no cell for column {column!r}")


def number(value: float | int | None, digits: int = 4) -> str:
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
