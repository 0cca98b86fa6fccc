"""A checkpoint is resumed only by the same params, training code and data: one written before an edit to
train's code, or over other prepared data, is not resumed (but kept: tests/e2e/test_other_checkpoints.py),
and train says so in one line; a fixed log message in tune/, the model logging or serving.py (run by the
stage, not training's code) leaves it resumable."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from pipeline_repo import copy_repo, metric_history, mlflow_runs, run_stage

pytestmark = pytest.mark.e2e



def interrupted_after_two_epochs(repo, poisoned) -> str:
    """The checkpoint of 2 epochs (and its FAILED run) that a NaN in epoch 3 left in this copy of the
    poisoned fixture's repo (train run once for all these tests); return that run's id."""
    assert poisoned.result.returncode == 5, poisoned.result.stderr[-3000:]
    state = json.loads(next((repo / "checkpoints").glob("*/state.json")).read_text())
    assert state["epoch"] == 2
    return next((repo / "checkpoints").glob("*/mlflow_run_id")).read_text().strip()


@pytest.fixture
def repo(poisoned, tmp_path):
    return copy_repo(poisoned.repo, tmp_path / "repo")


# Log messages in what the train stage hands training from outside (a search trial's pruning hook, the
# model logging, the served model's code): fixing one must not orphan an unfinished checkpoint.
LOG_MESSAGE_EDITS = (("tune/pruning.py", "pruned after epoch", "was pruned after epoch"),
                     ("tracking/model_logging.py", '"logging the model"', '"logging the trained model"'),
                     ("serving.py", "rows in one request", "rows in a single request"))


def test_unchanged_training_code_and_data_resume_after_a_log_message_is_fixed_in_tune(repo, poisoned):
    old_run = interrupted_after_two_epochs(repo, poisoned)
    for name, old, new in LOG_MESSAGE_EDITS:  # the stage runs these files, and still resumes
        module = repo / "src" / "vaepipe" / name
        assert old in module.read_text(), f"{name} no longer says {old!r}: pick another message"
        module.write_text(module.read_text().replace(old, new, 1))
    result = run_stage(repo, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after epoch 2" in result.stdout + result.stderr
    assert dict(mlflow_runs(repo))[old_run] == "FINISHED"


def test_checkpoint_of_other_code_is_not_resumed(repo, poisoned, baseline):
    old_run = interrupted_after_two_epochs(repo, poisoned)
    module = repo / "src" / "vaepipe" / "train" / "schedules.py"  # in train's import closure
    module.write_text(module.read_text() + "\n# an edit to the code train runs\n")

    result = run_stage(repo, "train")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    notices = [line for line in output.splitlines() if line.startswith("train: not resuming")]
    assert len(notices) == 1 and "written with other code;" in notices[0], output[-3000:]
    assert "resuming after epoch" not in output
    new_run = (repo / "models" / "mlflow_run_id").read_text().strip()
    assert new_run != old_run
    # Trained from scratch: every epoch logged once, the same numbers as an uninterrupted run.
    assert metric_history(repo, new_run)["loss"] == baseline.history["loss"]
    # The old code's checkpoint is kept (reverting the edit resumes it): train's own is gone.
    (kept,) = (repo / "checkpoints").iterdir()
    assert (kept / "mlflow_run_id").read_text().strip() == old_run
    (keeping,) = [line for line in output.splitlines() if line.startswith("train: keeping")]
    assert keeping.startswith(f"train: keeping 1 unfinished checkpoint of other settings (checkpoints/{kept.name}: 2 epochs; ")


def test_checkpoint_over_other_data_is_not_resumed(repo, poisoned):
    interrupted_after_two_epochs(repo, poisoned)
    # Other prepared data under the same params: one training image changed, meta.json updated to match.
    prepared = repo / "data" / "prepared"
    with np.load(prepared / "train.npz") as arrays:
        images, labels = arrays["images"].copy(), arrays["labels"]
    images[0] = 255 - images[0]
    with (prepared / "train.npz").open("wb") as handle:
        np.savez(handle, images=images, labels=labels)
    sys.path.insert(0, str(repo / "src"))
    try:
        from vaepipe.data import Split
        from vaepipe.prepared import arrays_sha256
    finally:
        sys.path.pop(0)
    meta = json.loads((prepared / "meta.json").read_text())
    meta["sha256"]["train"] = arrays_sha256(Split(images, labels))
    (prepared / "meta.json").write_text(json.dumps(meta))

    result = run_stage(repo, "train")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    notices = [line for line in output.splitlines() if line.startswith("train: not resuming")]
    assert len(notices) == 1 and "written with other data;" in notices[0], output[-3000:]
    assert "resuming after epoch" not in output
