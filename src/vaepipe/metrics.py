"""Every metric vaepipe measures, declared once: its name, where it is measured, its direction, a short
label, and whether `make compare` (or the plot stage) draws it. The epoch log, val_metrics.json, metrics.json,
MLflow, `make compare`'s tables and figures, `make tune`'s objective check and the plots read this module.
It imports no TensorFlow (compare and tune import it).

Where a metric is measured (`Metric.where`):
- "epoch": per epoch by both training loops, on the training split as `name` and on the validation split as
  `val_name` (unless `validated=False`): train_log.csv's columns and MLflow's metrics (step = epoch).
- "validation": val_metrics.json, the train stage's summary of the validation columns (what a search reads):
  `val_name`, the last epoch's value, and `best_val_name`, the best epoch's, for the summaries an epoch
  metric declares. Derived from the epoch metrics, so a new epoch metric has its summary with no other edit.
  Only these can be `make tune` objectives: the search never reads the test split.
- "test": evaluate's metrics.json on the test split (and the MLflow run: evaluate logs its numbers).
  A test metric whose `compute` is None is measured by evaluation.py itself (it needs the model: the ELBO
  terms, the IW NLL, the kNN probe); any other is `compute(Arrays)`, a function of the arrays evaluate
  already has, so a new one is declared here alone (docs/extending.md, "A test metric").

A metric is a number measured on a split of the data that runs can be ranked by. The other keys of those
files are not metrics, and are named in INFO: train_log.csv's `epoch` (the row's index); val_metrics.json's
`epochs` and `pruned` (how long the run trained); metrics.json's `protocol` (sample counts, seed,
binarization, kNN k: what the numbers were measured with, by which compare groups runs; the table's `iw_k`
is that protocol's evaluate.iw_samples). `epoch_time` is a metric (per epoch, minimize) with no validation
column (it times training and validation together) and is never drawn; MLflow's `parameter_count`
describes the model and is not one.

The epoch metrics and their validation summaries are declared in vaepipe.epoch_metrics and read from here:
the train stage imports only that half, so declaring a test metric here does not make `dvc repro` retrain.
loss, recon and kl are also the training objective's terms (vaepipe.objectives, which neither module may
import: it needs TensorFlow); a test beside that registry should keep the two lists in step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The epoch half lives in epoch_metrics (what the train stage imports); read it from here.
from vaepipe.epoch_metrics import (  # noqa: F401  (re-exported: the registry's one entry point)
    EPOCH,
    EPOCH_METRICS,
    EPOCH_TIME,
    TEST,
    VALIDATION,
    Direction,
    Metric,
    Summary,
    Where,
    epoch,
    summarise,
    validation_metrics,
)

# The keys of each file that are not metrics (see above).
INFO: dict[str, tuple[str, ...]] = {EPOCH: ("epoch",), VALIDATION: ("epochs", "pruned"), TEST: ("protocol",)}


@dataclass(frozen=True)
class Arrays:
    """What evaluate has of the test split once the model has run: a test metric's `compute` reads these
    (NumPy, one row per image) instead of the model."""

    images: np.ndarray  # (n, 784): the test images as the model sees them
    labels: np.ndarray  # (n,)
    means: np.ndarray  # (n, latent): posterior means E_q[z|x]
    log_vars: np.ndarray  # (n, latent): posterior log-variances
    log_px: np.ndarray  # (n,): importance-sampled log p(x) (evaluate.iw_samples samples each)
    train_means: np.ndarray  # (n_train, latent): the training split's posterior means (the kNN probe's)
    train_labels: np.ndarray  # (n_train,)


def evaluated(name: str, label: str, direction: Direction = "minimize", **options) -> Metric:
    """A test metric: measured by evaluate on the test split."""
    return Metric(name, TEST, direction, label, **options)


def active_units(z_means: np.ndarray, threshold: float = 0.01) -> int:
    """Burda et al.'s active units: latent dimensions whose variance over x of E_q[z|x] exceeds threshold."""
    return int(np.sum(np.var(z_means, axis=0) > threshold))


# evaluate's metrics.json, in its order (and the order compare shows them in).
TEST_METRICS: tuple[Metric, ...] = (
    evaluated("test_tutorial_loss", "the tutorial's loss (784 x mean BCE + mean KL), test split", drawn=False),
    evaluated("test_loss", "negative ELBO at beta 1: the sum of the objective's terms (test_recon + test_kl), nats"),
    evaluated("test_nll_iw", "importance-sampled negative log-likelihood (iw_samples), nats"),
    evaluated("active_units", "latent dimensions with Var_x E_q[z|x] > 0.01", "maximize", drawn=False,
              compute=lambda arrays: active_units(arrays.means)),
    evaluated("knn_accuracy", "5-nearest-neighbour label accuracy on test latent means", "maximize"),
)

# The rate-distortion plane's axes (Alemi et al. 2018): rate = the KL term, distortion = the reconstruction.
RATE_DISTORTION: dict[str, tuple[str, str]] = {TEST: ("test_kl", "test_recon"), VALIDATION: ("val_kl", "val_recon")}


def test_terms(metrics: tuple[Metric, ...] = EPOCH_METRICS) -> tuple[Metric, ...]:
    """The objective's terms measured by evaluate on the test split (test_recon, test_kl): derived from the epoch
    metrics declared `tested`, so a new loss term (docs/extending.md, "A loss term") needs no entry here."""
    return tuple(evaluated(f"test_{metric.name}", f"{metric.label}, test split (evaluate.mc_samples draws)",
                           metric.direction, drawn=metric.test_drawn)
                 for metric in metrics if metric.where == EPOCH and metric.tested)


def registry() -> tuple[Metric, ...]:
    """Every metric: the epoch metrics, their validation summaries, the test metrics. Read at call time, so a
    declaration appended to this file (docs/extending.md) counts like one in the tuples above."""
    every = (*EPOCH_METRICS, *validation_metrics(EPOCH_METRICS), *test_terms(EPOCH_METRICS), *TEST_METRICS)
    names = [metric.name for metric in every]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"vaepipe.metrics: {', '.join(duplicated)} declared more than once")
    return every


def of(where: Where) -> tuple[Metric, ...]:
    return tuple(metric for metric in registry() if metric.where == where)


def names(where: Where) -> tuple[str, ...]:
    return tuple(metric.name for metric in of(where))


def get(name: str) -> Metric:
    """The metric called `name`; KeyError naming the known ones."""
    for metric in registry():
        if metric.name == name:
            return metric
    raise KeyError(f"no metric {name!r} in vaepipe.metrics; known: {', '.join(m.name for m in registry())}")


def objective_names() -> tuple[str, ...]:
    """What a search file's `objective` may name (val_metrics.json's metrics)."""
    return tuple(metric.name for metric in registry() if metric.objective)


def epoch_columns() -> tuple[str, ...]:
    """train_log.csv's metric columns (with a validation split): each epoch metric, then its val_ column."""
    columns = names(EPOCH)
    return (*columns, *(metric.val_column for metric in of(EPOCH) if metric.val_column))


def metrics_json(measured: dict[str, float], arrays: Arrays) -> dict[str, float]:
    """metrics.json's metrics, in the registry's order: those evaluation.py measured (`measured`), and each
    declared one with a `compute`, computed from `arrays`. A declared metric nobody measures, or a measured
    one nobody declared, is an error (the registry and evaluate must not drift apart)."""
    results = {}
    for metric in of(TEST):
        if metric.compute is not None:
            results[metric.name] = metric.compute(arrays)
        elif metric.name in measured:
            results[metric.name] = measured[metric.name]
        else:
            raise ValueError(f"vaepipe.metrics declares test metric {metric.name!r} without a compute function, "
                             "and evaluation.py does not measure it: give it compute=")
    undeclared = sorted(set(measured) - set(results))
    if undeclared:
        raise ValueError(f"evaluation.py measures {', '.join(undeclared)}, which vaepipe.metrics does not declare")
    return results

