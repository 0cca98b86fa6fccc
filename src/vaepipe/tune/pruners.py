"""The study's pruner, as the driver chooses it and as a trial's train stage rebuilds it, and the running
trial that stage reports to (without Keras, so the driver never imports TensorFlow)."""

from __future__ import annotations

import optuna

from vaepipe.tune.storage import open_storage

PRUNER_ATTR = "vaepipe.pruner"  # {"kind": "median" | "hyperband" | "none", "startup": N, "epochs": E}


def make_pruner(kind: str, startup: int = 5, epochs: int = 1) -> optuna.pruners.BasePruner:
    """The study's pruner: Optuna's MedianPruner (after `startup` finished trials), HyperbandPruner over
    the epochs, or none."""
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=0)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


def running_trial(study: optuna.Study, storage: str, number: int) -> optuna.trial.Trial:
    """Trial `number` of `study` (in the resolved `storage`) as a Trial to report to or annotate while it
    runs, e.g. from the train stage that another process asked it for. Its id comes from the storage's
    public lookup by number: a FrozenTrial keeps its id private (`_trial_id`). Ids belong to the storage
    (database rows, journal order), so a storage object of our own finds the ones the study uses."""
    backend = open_storage(storage)
    if isinstance(backend, str):  # an RDB URL: Optuna opens it itself for studies, we open our own
        backend = optuna.storages.RDBStorage(backend)
    study_id = backend.get_study_id_from_name(study.study_name)
    return optuna.trial.Trial(study, backend.get_trial_id_from_study_id_trial_number(study_id, number))
