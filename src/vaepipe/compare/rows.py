"""`make compare`'s data: the finished runs (read back by vaepipe.tracking.search), the params that differ
between them, one row per run."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from vaepipe.tracking.search import RunRecord, metric_history

METRICS = ("test_loss", "test_recon", "test_kl", "test_nll_iw", "active_units", "knn_accuracy")
IW_PARAM = "evaluate.iw_samples"
EPOCH_CURVE = "val_loss"  # per-epoch validation loss (step = epoch)
EPOCH_TIME = "epoch_time"


@dataclass
class Row:
    """One run's line of the table."""

    run: RunRecord
    differing: dict[str, str]
    metrics: dict[str, float]
    epochs: int | None = None
    median_epoch_s: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The run's differing params (its run name when nothing differs)."""
        return ", ".join(f"{key}={value}" for key, value in self.differing.items()) or self.run.name


def differing_params(runs: list[RunRecord]) -> list[str]:
    """The param names whose value is not the same in every run (a param a run lacks counts as a value)."""
    names = sorted({name for run in runs for name in run.params})
    return [name for name in names if len({run.params.get(name) for run in runs}) > 1]


def select(runs: list[RunRecord], last: int | None) -> tuple[list[RunRecord], dict[str, int]]:
    """(the FINISHED runs, newest first, at most `last` of them; how many runs of each other status)."""
    finished = [run for run in runs if run.status == "FINISHED"]
    left_out: dict[str, int] = {}
    for run in runs:
        if run.status != "FINISHED":
            left_out[run.status] = left_out.get(run.status, 0) + 1
    return (finished[:last] if last else finished), left_out


def build_rows(runs: list[RunRecord], sort_by: str) -> list[Row]:
    """The table's rows, sorted by `sort_by` (ascending; runs lacking it last), with epoch curves and times."""
    names = differing_params(runs)
    rows = []
    for run in runs:
        times = [value for _, value in metric_history(run.run_id, EPOCH_TIME)]
        rows.append(Row(run, {name: run.params.get(name, "") for name in names},
                        {key: run.metrics[key] for key in METRICS if key in run.metrics},
                        epochs=len(times) or _int_or_none(run.params.get("train.epochs")),
                        median_epoch_s=statistics.median(times) if times else None,
                        curve=metric_history(run.run_id, EPOCH_CURVE)))
    return sorted(rows, key=lambda row: _sort_key(row, sort_by))


def _sort_key(row: Row, sort_by: str) -> tuple:
    value = row.metrics.get(sort_by)
    if value is None or math.isnan(value):
        return (1, 0.0, row.run.name)
    return (0, value, row.run.name)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
