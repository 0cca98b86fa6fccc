"""A run of other settings keeps the unfinished checkpoints of the others (through real stage runs): the
interrupted setting resumes after it, in the same MLflow run, to an uninterrupted run's numbers; beyond
retention.MAX_KEPT the oldest is removed and its run, left RUNNING by a SIGKILL, is closed as KILLED with
the reason in a tag."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import time

import psutil
import pytest
import yaml
from pipeline_repo import (
    SIGNAL_GATE,
    VENV_BIN,
    copy_repo,
    metric_history,
    mlflow_runs,
    prepared_copy,
    run_stage,
    stage_env,
    wait_for,
    write_params,
)

from vaepipe.train.retention import MAX_KEPT

pytestmark = pytest.mark.e2e

OTHER_SETTING = {"train": {"epochs": 1}}  # the one-epoch try of another setting (another key)


def with_params(repo, overrides: dict) -> str:
    """Apply `overrides` to the repo's params.yaml; return the text it had."""
    before = (repo / "params.yaml").read_text()
    params = yaml.safe_load(before)
    for section, values in overrides.items():
        params[section].update(values)
    write_params(repo, params)
    return before


def output_lines(result: subprocess.CompletedProcess, prefix: str) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(prefix)]


def run_tag(repo, run_id: str, key: str) -> str | None:
    with sqlite3.connect(repo / "mlflow.db") as conn:
        row = conn.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = ?", (run_id, key)).fetchone()
    return row[0] if row else None


def test_an_interrupted_setting_resumes_after_a_run_of_another(poisoned, baseline, tmp_path):
    # Setting A stopped after epoch 2 (a NaN in epoch 3: programs/poison_epoch_3.py), its run FAILED.
    repo = copy_repo(poisoned.repo, tmp_path / "repo")
    assert poisoned.result.returncode == 5, poisoned.result.stderr[-3000:]
    (checkpoint_a,) = (repo / "checkpoints").iterdir()
    run_a = (checkpoint_a / "mlflow_run_id").read_text().strip()

    # Setting B, to its end: A's checkpoint stays, and train says so in one line.
    params_a = with_params(repo, OTHER_SETTING)
    result = run_stage(repo, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    notices = output_lines(result, "train: keeping")
    assert notices == [f"train: keeping 1 unfinished checkpoint of other settings (checkpoints/{checkpoint_a.name}: "
                       f"2 epochs; {notices[0].split('; ')[1].split(')')[0]}); `make clean-checkpoints` removes them"]
    assert notices[0].split("; ")[1].endswith(" MB)")
    assert not output_lines(result, "train: not resuming")
    assert [path.name for path in (repo / "checkpoints").iterdir()] == [checkpoint_a.name]  # B's own is gone
    run_b = (repo / "models" / "mlflow_run_id").read_text().strip()
    assert dict(mlflow_runs(repo))[run_b] == "FINISHED"

    # A again: resumed after epoch 2 in its own run, ending with the numbers of an uninterrupted run.
    (repo / "params.yaml").write_text(params_a)
    result = run_stage(repo, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming after epoch 2 of 6" in result.stdout + result.stderr
    assert not output_lines(result, "train: keeping")
    assert (repo / "models" / "mlflow_run_id").read_text().strip() == run_a
    assert dict(mlflow_runs(repo)) == {run_a: "FINISHED", run_b: "FINISHED"}
    assert metric_history(repo, run_a)["loss"] == baseline.history["loss"]
    assert list((repo / "checkpoints").iterdir()) == []


def sigkilled_train(repo, tmp_path) -> tuple[str, str]:
    """Train of the repo's params SIGKILLed after its first checkpoint; return (checkpoint key, run id)."""
    shutil.copy2(SIGNAL_GATE, repo / "src" / "sitecustomize.py")  # the last epoch waits: it cannot end first
    env = stage_env(PYTHONPATH="src", VAEPIPE_TEST_SIGNAL_GATE=str(tmp_path / "gate"))
    trainer = subprocess.Popen([str(VENV_BIN / "python"), "stages/train.py"], cwd=repo, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        state = wait_for(lambda: next((repo / "checkpoints").glob("*/state.json"), None), timeout=300,
                         what="train's first checkpoint")
        psutil.Process(trainer.pid).send_signal(signal.SIGKILL)
        assert trainer.wait(timeout=60) == -signal.SIGKILL
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    (repo / "src" / "sitecustomize.py").unlink()
    return state.parent.name, (state.parent / "mlflow_run_id").read_text().strip()


def test_beyond_the_bound_the_oldest_checkpoint_goes_and_its_sigkilled_run_is_killed(baseline, tmp_path):
    repo = prepared_copy(baseline.repo, tmp_path / "repo", {"train": {"epochs": 3}})
    oldest, run_id = sigkilled_train(repo, tmp_path)
    assert dict(mlflow_runs(repo)) == {run_id: "RUNNING"}  # a SIGKILL leaves it so: nothing else will close it
    # MAX_KEPT newer unfinished checkpoints of yet other keys (copies of that one, written later, no run).
    newer = []
    for n in range(MAX_KEPT):
        copy = shutil.copytree(repo / "checkpoints" / oldest, repo / "checkpoints" / f"{n:016x}")
        (copy / "mlflow_run_id").unlink()
        state = json.loads((copy / "state.json").read_text())
        (copy / "state.json").write_text(json.dumps({**state, "key": copy.name, "written": time.time() + n}))
        newer.append(copy.name)

    with_params(repo, OTHER_SETTING)
    result = run_stage(repo, "train")

    assert result.returncode == 0, result.stderr[-3000:]
    removed = output_lines(result, "train: removed checkpoint")
    assert len(removed) == 1 and removed[0].startswith(f"train: removed checkpoint checkpoints/{oldest} ("), removed
    assert removed[0].endswith(f"more than {MAX_KEPT} unfinished checkpoints of other settings; "
                               f"its MLflow run {run_id} marked KILLED")
    assert sorted(path.name for path in (repo / "checkpoints").iterdir()) == newer
    (kept,) = output_lines(result, "train: keeping")
    assert kept.startswith(f"train: keeping {MAX_KEPT} unfinished checkpoints of other settings (checkpoints/{newer[-1]}: ")
    assert dict(mlflow_runs(repo))[run_id] == "KILLED"
    assert run_tag(repo, run_id, "vaepipe.killed_reason") == (
        f"checkpoint removed: more than {MAX_KEPT} unfinished checkpoints kept")
