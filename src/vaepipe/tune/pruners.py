"""The study's pruner, as the driver chooses it and as a trial's train stage rebuilds it (without Keras, so
the driver never imports TensorFlow)."""

from __future__ import annotations

import optuna

PRUNER_ATTR = "vaepipe.pruner"  # {"kind": "median" | "hyperband" | "none", "startup": N, "epochs": E}


def make_pruner(kind: str, startup: int = 5, epochs: int = 1) -> optuna.pruners.BasePruner:
    """The study's pruner: Optuna's MedianPruner (after `startup` finished trials), HyperbandPruner over
    the epochs, or none."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()
