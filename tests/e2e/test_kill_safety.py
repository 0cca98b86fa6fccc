"""One owner per piece of work, and nothing lost to a kill: a killed evaluate leaves the train run as it
found it; a second train beside an orphaned one stops in one line naming the orphan's PID, and no epoch is
logged twice; an empty run id is refused, never taken as "start a new run"."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import psutil
import pytest
import yaml
from pipeline_repo import SIGNAL_GATE, copy_repo, metric_history, mlflow_runs, stage_env, wait_for, write_params

pytestmark = pytest.mark.e2e

EPOCHS = 4  # the orphan's; its last waits for the test (the release file), so it is met while it trains


def test_a_killed_evaluate_leaves_the_train_run_finished(quick, tmp_path):
    repo = copy_repo(quick, tmp_path / "repo")
    [(train_run, status)] = mlflow_runs(repo)
    assert status == "FINISHED"
    process = subprocess.Popen([sys.executable, "stages/evaluate.py"], cwd=repo, env=stage_env(PYTHONPATH="src"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:  # the run is attached by now: scoring has begun
            if line.startswith("evaluate: ELBO terms"):
                break
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert mlflow_runs(repo) == [(train_run, "FINISHED")]  # not RUNNING, and no other run


def test_an_empty_run_id_is_refused_in_one_line_and_opens_no_run(quick, tmp_path):
    repo = copy_repo(quick, tmp_path / "repo")
    before = mlflow_runs(repo)
    (repo / "models" / "mlflow_run_id").write_text("")
    result = subprocess.run([sys.executable, "stages/evaluate.py"], cwd=repo, env=stage_env(PYTHONPATH="src"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 4, result.stderr[-2000:]  # errors.TrackingError
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "models/mlflow_run_id: '' is not an MLflow run id" in line and "dvc repro train" in line
    assert mlflow_runs(repo) == before


def test_a_second_train_beside_an_orphaned_one_stops_naming_its_pid(baseline, tmp_path):
    repo = copy_repo(baseline.repo, tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["epochs"] = EPOCHS
    write_params(repo, params)
    # The gate (programs/signal_gate.py, this repo's sitecustomize): the orphan's last epoch waits until the
    # test writes the release file, so it is still training when the second train meets it, however fast.
    shutil.copy2(SIGNAL_GATE, repo / "src" / "sitecustomize.py")
    release = tmp_path / "release"
    env = stage_env(VAEPIPE_TEST_SIGNAL_GATE=str(tmp_path / "gate"), VAEPIPE_TEST_RELEASE_FILE=str(release))
    dvc = subprocess.Popen(["dvc", "repro", "train"], cwd=repo, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = wait_for(lambda: next((path for path in (repo / "checkpoints").glob("*/train.lock")
                                      if path.read_text().strip()), None), timeout=300, what="train's checkpoint lock")
        orphan = psutil.Process(int(lock.read_text()))
        dvc.send_signal(signal.SIGKILL)  # dvc alone, as a closed terminal or a killed CI step might
        dvc.wait(timeout=30)
        assert orphan.is_running(), "the train stage outlives its dvc"
        second = subprocess.run(["dvc", "repro", "train"], cwd=repo, env=env, capture_output=True, text=True,
                                timeout=600)
        assert second.returncode != 0
        assert "Traceback" not in second.stderr
        held = [line for line in second.stderr.splitlines() if "is in use by train process" in line]
        assert held == [f"error: train: checkpoint {lock.parent.relative_to(repo)} is in use by train process "
                        f"{orphan.pid} (still running, e.g. after its `dvc` was killed): wait for it to finish, "
                        f"or stop it with `kill {orphan.pid}`, then run `dvc repro` again"], second.stderr[-2000:]
        assert orphan.is_running(), "the orphan was still training when the second train met it"
        release.touch()  # the orphan's last epoch may begin
        orphan.wait(timeout=900)
    finally:
        if dvc.poll() is None:
            os.killpg(dvc.pid, signal.SIGKILL)
    # The orphan finished and wrote its outputs as one set; DVC never recorded them (its dvc was killed).
    # Keeping that work is one command; then `dvc repro` has nothing left to do.
    subprocess.run(["dvc", "commit", "-f", "train"], cwd=repo, env=env, check=True, capture_output=True, timeout=300)
    third = subprocess.run(["dvc", "repro", "train"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "Running stage 'train'" not in third.stdout
    [orphans_run] = [run for run, _ in mlflow_runs(repo) if run != baseline.run_id]
    assert (repo / "models" / "mlflow_run_id").read_text().strip() == orphans_run
    assert dict(mlflow_runs(repo))[orphans_run] == "FINISHED"
    history = metric_history(repo, orphans_run)["loss"]
    assert sorted(history) == list(range(1, EPOCHS + 1)), sorted(history)
    with sqlite3.connect(repo / "mlflow.db") as conn:  # each epoch one row: not logged twice, not even equal
        twice = conn.execute("SELECT step, COUNT(*) FROM metrics WHERE key = 'loss' AND run_uuid = ? "
                             "GROUP BY step HAVING COUNT(*) > 1", (orphans_run,)).fetchall()
    assert twice == []
