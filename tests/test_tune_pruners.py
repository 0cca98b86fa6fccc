"""A trial's train stage reports to the RUNNING trial the driver asked for, and the driver marks trials a
killed `make tune` left behind, both through Optuna's public API (tune.pruners.running_trial: the storage's
lookup of a trial's id by its number), on real SQLite and journal storages where ids are not numbers."""

from __future__ import annotations

import socket
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from vaepipe.tune.driver import fail_abandoned
from vaepipe.tune.pruners import running_trial
from vaepipe.tune.storage import STORAGE_ENV, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=["sqlite", "journal"])
def storage(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}" if request.param == "sqlite" else str(tmp_path / "journal.log")


def busy_storage(storage: str) -> optuna.Study:
    """Another study's trials first, so the second study's trial ids are not its trial numbers."""
    other = optuna.create_study(study_name="other", storage=open_storage(storage))
    for _ in range(3):
        other.tell(other.ask(), 1.0)
    return optuna.create_study(study_name="s", storage=open_storage(storage))


def test_a_running_trial_is_reached_by_number_from_a_fresh_process_view(storage):
    study = busy_storage(storage)
    study.tell(study.ask(), 5.0)
    asked = study.ask()  # trial 1, RUNNING: what the driver hands to a DVC experiment
    seen = optuna.load_study(study_name="s", storage=open_storage(storage))  # what the stage opens
    trial = running_trial(seen, storage, asked.number)
    trial.report(3.0, step=0)
    trial.set_user_attr("from", "stage")
    [frozen] = [t for t in study.get_trials(deepcopy=False) if t.number == asked.number]
    assert frozen.intermediate_values == {0: 3.0} and frozen.user_attrs == {"from": "stage"}
    assert [t.intermediate_values for t in study.get_trials() if t.number != asked.number] == [{}]


def test_the_stage_attaches_to_its_running_trial(storage, monkeypatch):
    from vaepipe.tune.pruning import attach

    study = busy_storage(storage)
    asked = study.ask()
    monkeypatch.setenv(STORAGE_ENV, storage)
    trial = attach("s", asked.number)
    assert trial is not None and trial.number == asked.number
    trial.report(2.5, step=1)
    assert study.trials[0].intermediate_values == {1: 2.5}
    study.tell(asked, 2.5)
    assert attach("s", asked.number) is None  # COMPLETE: nothing left to report to


def test_a_trial_left_running_by_a_dead_driver_is_told_fail_as_abandoned(storage):
    study = busy_storage(storage)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    left = study.ask()
    left.set_user_attr("driver_host", socket.gethostname())
    left.set_user_attr("driver_pid", int(dead.stdout))
    alive = study.ask()
    alive.set_user_attr("driver_host", socket.gethostname())
    alive.set_user_attr("driver_pid", 1)
    fail_abandoned(study, storage)
    states = {t.number: (t.state, t.user_attrs.get("abandoned")) for t in study.get_trials()}
    assert states == {left.number: (TrialState.FAIL, True), alive.number: (TrialState.RUNNING, None)}


@pytest.mark.parametrize("objective, column", [("val_loss", "val_loss"), ("best_val_loss", "val_loss"),
                                               ("val_recon", "val_recon"), ("val_kl", "val_kl"), (None, "val_loss")])
def test_a_trial_reports_the_column_its_studys_objective_summarises(objective, column):
    """A val_recon study prunes by val_recon, not val_loss (whose trials it would otherwise compare)."""
    import optuna

    from vaepipe.tune.pruning import reported_column

    study = optuna.create_study()
    if objective is not None:
        study.set_metric_names([objective])
    assert reported_column(study) == column
