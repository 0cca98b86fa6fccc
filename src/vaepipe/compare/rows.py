"""`make compare`'s data: the finished runs (read back by vaepipe.tracking.search), grouped by the protocol
their numbers were measured on, the params that differ between them, one row per run; runs with test
metrics apart from the train-only ones (trials).

A test metric depends on the test images (dataset, how many: data.limit), how they are binarized and
how many samples evaluate draws (mc_samples for the ELBO terms, iw_samples for the IW NLL): runs that
differ in any of these are never ranked against each other (test_protocol). Validation numbers depend
on the validation images (data.limit, data.val_size, data.split_seed) instead (validation_protocol)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from vaepipe import metrics as registry
from vaepipe.config import DATASET_SIZES, param_applies
from vaepipe.tracking.search import FINAL_TAG, PRUNED_TAG, TRIAL_TAG, RunRecord, metric_history

METRICS = registry.names(registry.TEST)  # metrics.json's, as evaluate logged them
VAL_METRICS = registry.names(registry.VALIDATION)  # val_metrics.json's, rebuilt from the epoch histories
IW_PARAM = "evaluate.iw_samples"
ARCH_PARAM = "model.arch"
EPOCH_CURVE = registry.get("loss").val_column  # per-epoch validation loss (step = epoch)
EPOCH_TIME = registry.EPOCH_TIME
DATASET_PARAM, LIMIT_PARAM, BINARIZE_PARAM = "data.dataset", "data.limit", "data.binarize"
UNKNOWN = "?"  # a protocol param the run did not log (a run older than the param)


@dataclass(frozen=True)
class Protocol:
    """What a group's numbers were measured on: (name, value) pairs, in a fixed order; runs are ranked
    only against runs of the same protocol."""

    kind: str  # "test" or "validation"
    items: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        """One line, e.g. `mnist, 10000 test images, binarize none, mc_samples 10, iw_samples 1000`."""
        return ", ".join(value if name == "dataset" else f"{value} {name}" if name.endswith("images")
                         else f"{name} {value}" for name, value in self.items)


def test_images(params: dict[str, str]) -> str:
    """How many test images evaluate scored: data.limit's first N of the dataset's test split (all when null).
    The params hold it, not a metric: evaluate logs numbers only, and data.limit decides it."""
    limit, dataset = params.get(LIMIT_PARAM), params.get(DATASET_PARAM)
    full = DATASET_SIZES.get(dataset or "", (None, None))[1]
    if limit is None:
        return UNKNOWN
    if limit in ("null", "None", ""):
        return str(full) if full else "all"
    limit_n = _int_or_none(limit)
    if limit_n is None:
        return limit
    return str(min(limit_n, full) if full else limit_n)


def test_protocol(run: RunRecord) -> Protocol:
    params = run.params
    return Protocol("test", (("dataset", params.get(DATASET_PARAM, UNKNOWN)), ("test images", test_images(params)),
                             ("binarize", params.get(BINARIZE_PARAM, UNKNOWN)),
                             ("mc_samples", params.get("evaluate.mc_samples", UNKNOWN)),
                             ("iw_samples", params.get(IW_PARAM, UNKNOWN))))


def validation_protocol(run: RunRecord) -> Protocol:
    """The validation images are data.val_size of the first data.limit training images, drawn by
    data.split_seed: a run that differs in any of them was validated on other images."""
    params = run.params
    limit = params.get(LIMIT_PARAM, UNKNOWN)
    return Protocol("validation", (("dataset", params.get(DATASET_PARAM, UNKNOWN)),
                                   ("limit", "all" if limit in ("null", "None", "") else limit),
                                   ("val_size", params.get("data.val_size", UNKNOWN)),
                                   ("split_seed", params.get("data.split_seed", UNKNOWN)),
                                   ("binarize", params.get(BINARIZE_PARAM, UNKNOWN))))


def group_by_protocol(runs: list[RunRecord], protocol: Callable[[RunRecord], Protocol] = test_protocol,
                      ) -> list[tuple[Protocol, list[RunRecord]]]:
    """The runs by protocol (each group in the runs' order), the largest group first, then by label."""
    groups: dict[Protocol, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(protocol(run), []).append(run)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[0].label))


@dataclass
class Row:
    """One run's line of a table."""

    run: RunRecord
    differing: dict[str, str]
    metrics: dict[str, float]
    epochs: int | None = None
    median_epoch_s: float | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def trial(self) -> str | None:
        """The study trial's number the run trained (or, for a final run, replays)."""
        return self.run.tags.get(TRIAL_TAG)

    @property
    def final(self) -> bool:
        return self.run.tags.get(FINAL_TAG) == "true"

    @property
    def pruned(self) -> bool:
        return self.run.tags.get(PRUNED_TAG) == "true"

    @property
    def label(self) -> str:
        """What a legend calls the run: its trial's number, else its run name (the params are in the table)."""
        if self.trial is None:
            return self.run.name
        return f"trial {self.trial}" + (" (final)" if self.final else "")


def has_test_metrics(run: RunRecord) -> bool:
    """Whether the run went through evaluate (a full run), not only train (a trial, a train-only run)."""
    return any(key in run.metrics for key in METRICS)


def shown_params(run: RunRecord) -> dict[str, str]:
    """The run's params, those its architecture does not read (model.hidden of a tutorial run) left out."""
    arch = run.params.get(ARCH_PARAM)
    return {name: value for name, value in run.params.items() if param_applies(name, arch)}


def differing_params(runs: list[RunRecord]) -> list[str]:
    """The param names whose value is not the same in every run the param applies to (a param a run
    lacks counts as a value; one its architecture does not read does not)."""
    shown = [shown_params(run) for run in runs]
    names = sorted({name for params in shown for name in params})
    return [name for name in names
            if len({params.get(name) for run, params in zip(runs, shown, strict=True)
                    if param_applies(name, run.params.get(ARCH_PARAM))}) > 1]


def select(runs: list[RunRecord], last: int | None) -> tuple[list[RunRecord], dict[str, int]]:
    """(the FINISHED runs, newest first, at most `last` of them; how many runs of each other status)."""
    finished = [run for run in runs if run.status == "FINISHED"]
    left_out: dict[str, int] = {}
    for run in runs:
        if run.status != "FINISHED":
            left_out[run.status] = left_out.get(run.status, 0) + 1
    return (finished[:last] if last else finished), left_out


def build_rows(runs: list[RunRecord], sort_by: str) -> list[Row]:
    """The table's rows, sorted by `sort_by`, best first (ascending for a metric to minimize, descending for
    one to maximize; runs lacking it last), with epoch curves and times; a param is blank in a run whose
    architecture does not read it."""
    names = differing_params(runs)
    rows = []
    for run in runs:
        times = [value for _, value in metric_history(run.run_id, EPOCH_TIME)]
        curve = metric_history(run.run_id, EPOCH_CURVE)
        shown = shown_params(run)
        metrics = {key: run.metrics[key] for key in METRICS if key in run.metrics}
        metrics.update(validation_metrics(run, {EPOCH_CURVE: curve}))
        rows.append(Row(run, {name: shown.get(name, "") for name in names}, metrics,
                        epochs=len(times) or _int_or_none(run.params.get("train.epochs")),
                        median_epoch_s=statistics.median(times) if times else None, curve=curve))
    return sorted(rows, key=lambda row: _sort_key(row, sort_by))


def validation_metrics(run: RunRecord, histories: dict[str, list[tuple[int, float]]] | None = None,
                       ) -> dict[str, float]:
    """val_metrics.json's metrics of a run, from its MLflow epoch metrics: a last epoch's value is the
    column's latest value, a best epoch's is read from the column's history (`histories`: those already
    fetched), or else taken as the run logged it."""
    histories = dict(histories or {})
    found = {}
    for metric in registry.of(registry.VALIDATION):
        if metric.summary == "last":
            value = run.metrics.get(metric.column)
        else:
            if metric.column not in histories:
                histories[metric.column] = metric_history(run.run_id, metric.column)
            history = [value for _, value in histories[metric.column]]
            value = registry.summarise(metric, history) if history else run.metrics.get(metric.name)
        if value is not None:
            found[metric.name] = value
    return found


def _sort_key(row: Row, sort_by: str) -> tuple:
    value = row.metrics.get(sort_by)
    if value is None or math.isnan(value):
        return (1, 0.0, row.run.name)
    return (0, -value if registry.get(sort_by).direction == "maximize" else value, row.run.name)


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
