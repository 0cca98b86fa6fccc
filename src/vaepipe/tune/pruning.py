"""What a search trial's train stage adds to training, handed to it by stages/train.py (training's own code
imports nothing from here, so editing this file keeps an unfinished checkpoint resumable):

- `trial_callbacks`: pruning. After each epoch (once the end-of-epoch path has logged and checkpointed
  it) the epoch's val_loss goes to the trial in the study, and when the study's pruner says so the fit
  stops. The stage then ends as a finished run: outputs written (val_metrics.json says `pruned`), the
  MLflow run FINISHED with the tag vaepipe.pruned = "true", exit 0, so DVC commits the experiment and the
  driver tells the study PRUNED.
- `trial_outputs`: once the outputs are written, metrics.json replaced by the `train_only` marker.

The stage attaches to the RUNNING trial the driver asked for (pruners.running_trial), in the storage the
driver passes through the environment (storage.STORAGE_ENV). The study's pruner is rebuilt from what the
driver recorded in the study's user attributes (PRUNER_ATTR). Optuna is imported only for a trial: every
train stage imports this module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import keras

from vaepipe import paths, tracking
from vaepipe.config import Params

if TYPE_CHECKING:
    import optuna


def trial_callbacks(params: Params) -> list[keras.callbacks.Callback]:
    """For a search's trial (docs/search.md) that is RUNNING in its study: [ReportAndPrune]; else []."""
    if params.tune.trial < 0 or params.tune.final or not params.tune.study:
        return []
    return pruning_callbacks(params.tune.study, params.tune.trial, params.train.epochs)


def trial_outputs(params: Params) -> list[Callable[[Path], None]]:
    """The train stage's after-outputs hooks for a search's trial: [mark_train_only]; else []."""
    return [mark_train_only] if params.tune.trial >= 0 and not params.tune.final else []


def mark_train_only(model_file: Path) -> None:
    """A search's trial runs up to train only: the metrics.json it carries is its baseline's, test numbers
    of another model. Replaced by a marker, `dvc exp show` shows no test metrics for it (and dvc.lock then
    says evaluate has not run on this model, which is true)."""
    with paths.atomic_path(paths.METRICS_FILE) as tmp:
        tmp.write_text(json.dumps({"train_only": True}, indent=2) + "\n")


def attach(study_name: str, number: int) -> optuna.trial.Trial | None:
    """The RUNNING trial `number` of the study, or None (with one line saying why) when there is nothing to
    report to: e.g. an applied trial's experiment reproduced again, long after its study ended."""
    import optuna

    from vaepipe.tune.pruners import PRUNER_ATTR, make_pruner, running_trial
    from vaepipe.tune.storage import load_study, resolve_storage, storage_label

    storage = resolve_storage()
    try:
        study = load_study(study_name, storage)
    except Exception as error:  # noqa: BLE001  (a reproduction without the study: train all the same)
        print(f"tune: not reporting to study {study_name!r}: {error}", file=sys.stderr, flush=True)
        return None
    if len(study.directions) > 1:
        return None  # Optuna takes no intermediate values (and prunes nothing) in a multi-objective study
    spec = study.user_attrs.get(PRUNER_ATTR) or {}
    study.pruner = make_pruner(spec.get("kind", "none"), spec.get("startup", 5), spec.get("epochs", 1))
    found = [trial for trial in study.get_trials(deepcopy=False) if trial.number == number]
    if not found or found[0].state != optuna.trial.TrialState.RUNNING:
        state = found[0].state.name if found else "missing"
        print(f"tune: trial {number} of study {study_name!r} in {storage_label(storage)} is {state}, not RUNNING: "
              "training without reporting to it", file=sys.stderr, flush=True)
        return None
    return running_trial(study, storage, number)


def reported_column(study: optuna.Study) -> str:
    """The epoch-log column whose values go to the pruner: the one the study's objective summarises (val_recon
    for val_recon; val_loss for val_loss and best_val_loss), val_loss for a study that does not name it."""
    from vaepipe.epoch_metrics import validation_metrics
    from vaepipe.tune.storage import objective_names

    (name,) = objective_names(study) or ["val_loss"]
    columns = {metric.name: metric.column for metric in validation_metrics()}
    return columns.get(name) or "val_loss"


class ReportAndPrune(keras.callbacks.Callback):
    """Report each epoch's value of the objective's column to the trial; stop the fit when the pruner says so."""

    def __init__(self, trial: optuna.trial.Trial, epochs: int, column: str = "val_loss"):
        super().__init__()
        self.trial = trial
        self.epochs = epochs
        self.column = column
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get(self.column)
        if value is None:
            return
        self.trial.report(float(value), step=epoch)
        if epoch < self.epochs - 1 and self.trial.should_prune():  # after the last epoch: nothing left to save
            self.pruned_at = epoch
            tracking.set_tags({tracking.PRUNED_TAG: "true"})
            print(f"tune: trial {self.trial.number} pruned after epoch {epoch + 1} ({self.column} {float(value):.3f})",
                  file=sys.stderr, flush=True)
            self.model.stop_training = True


def pruning_callbacks(study_name: str, number: int, epochs: int) -> list[keras.callbacks.Callback]:
    """[ReportAndPrune] for a trial that is RUNNING in its study, else []."""
    trial = attach(study_name, number)
    return [ReportAndPrune(trial, epochs, reported_column(trial.study))] if trial is not None else []
