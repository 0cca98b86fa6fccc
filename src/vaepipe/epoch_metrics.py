"""The epoch half of the metric registry (vaepipe.metrics, which re-exports all of it): the Metric type,
the epoch metrics and their validation summaries (val_metrics.json). Apart from the test metrics so the
train stage, which writes val_metrics.json from these, does not depend on them: declaring a test metric must
not retrain (dvc.yaml's deps are each stage's imports). TF-free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

Where = Literal["epoch", "validation", "test"]
Direction = Literal["minimize", "maximize"]
Summary = Literal["last", "best"]
EPOCH, VALIDATION, TEST = "epoch", "validation", "test"
EPOCH_TIME = "epoch_time"  # the one epoch metric that is not a loss term: the loops' timing


@dataclass(frozen=True)
class Metric:
    name: str
    where: Where
    direction: Direction
    label: str  # a short description for tables, figures and error messages
    drawn: bool = True  # epoch: a loss-curve panel (plots.loss_curves); test: against each param (compare)
    validated: bool = True  # epoch: measured on the validation split too, as val_<name>
    summaries: tuple[Summary, ...] = ("last",)  # epoch: what val_metrics.json keeps of val_<name>
    # epoch: a term of the objective (vaepipe.objectives), which evaluate also measures on the test split, as
    # test_<name> (metrics.test_terms); test_drawn: whether compare draws that test metric
    tested: bool = False
    test_drawn: bool = True
    column: str | None = None  # validation: the epoch-log column it summarises
    summary: Summary | None = None  # validation: the last epoch's value, or the best (by direction)
    # test: a function of evaluate's arrays (metrics.Arrays) to the number; None: evaluation.py measures it
    compute: Callable[[Any], float] | None = None

    @property
    def objective(self) -> bool:
        """May be a `make tune` objective: the validation summary only (a trial never runs evaluate)."""
        return self.where == VALIDATION

    @property
    def val_column(self) -> str | None:
        """An epoch metric's validation column in train_log.csv and MLflow (None: training only)."""
        return f"val_{self.name}" if self.where == EPOCH and self.validated else None


def epoch(name: str, label: str, direction: Direction = "minimize", **options) -> Metric:
    """An epoch metric: measured per epoch in training (and validation, as val_<name>)."""
    return Metric(name, EPOCH, direction, label, **options)


# Per epoch, train and validation. loss is the objective's value: the negative ELBO (train.beta weighs the
# KL), or with train.objective iwae the negative k-sample bound.
EPOCH_METRICS: tuple[Metric, ...] = (
    epoch("loss", "the training objective (negative ELBO or IWAE bound), nats", summaries=("last", "best")),
    epoch("recon", "reconstruction term E_q[-log p(x|z)], nats", tested=True, test_drawn=False),
    epoch("kl", "KL term KL(q(z|x) || p(z)), nats", tested=True),
    epoch(EPOCH_TIME, "seconds per epoch (training and validation)", validated=False, drawn=False),
)


def validation_metrics(metrics: Iterable[Metric] | None = None) -> tuple[Metric, ...]:
    """val_metrics.json's metrics: each validated epoch metric's summaries, in declaration order."""
    found = []
    for metric in EPOCH_METRICS if metrics is None else metrics:
        for summary in metric.summaries if metric.val_column else ():
            name = metric.val_column if summary == "last" else f"best_{metric.val_column}"
            which = "last epoch" if summary == "last" else "best epoch"
            found.append(Metric(name, VALIDATION, metric.direction, f"{metric.label}, validation split, {which}",
                                drawn=False, column=metric.val_column, summary=summary))
    return tuple(found)


def summarise(metric: Metric, values: Iterable[float]) -> float | None:
    """A validation metric from its column's per-epoch values (None when there are none: no validation split)."""
    values = [float(value) for value in values]
    if not values:
        return None
    if metric.summary == "last":
        return values[-1]
    return min(values) if metric.direction == "minimize" else max(values)
