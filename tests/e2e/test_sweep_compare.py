"""Sweeps through DVC's queue, read back by `make compare`: a sweep named at queue time
(`-S tracking.sweep=NAME`) tags every run of the grid, including a combination an earlier run already
trained (DVC's run-cache must not restore it without an MLflow run), and compare selects exactly them."""

from __future__ import annotations

import csv
import subprocess

import pytest
from pipeline_repo import VENV_BIN, dvc_repro, make_repo, mlflow_runs, stage_env, wait_for

pytestmark = pytest.mark.e2e

QUICK = {"data": {"limit": 256, "val_size": 64}, "train": {"epochs": 2, "batch_size": 32, "steps_per_execution": 100}}


def test_sweep_queued_as_a_grid_is_what_compare_selects(tmp_path):
    repo = make_repo(tmp_path / "repo", QUICK)
    env = stage_env()
    assert dvc_repro(repo, timeout=900).returncode == 0  # latent_dim 2, no sweep: in the run-cache now
    queued = subprocess.run(["dvc", "exp", "run", "--queue", "-S", "tracking.sweep=grid1",
                             "-S", "model.latent_dim=2,3"], cwd=repo, env=env, capture_output=True, text=True)
    assert queued.returncode == 0, queued.stderr
    try:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, check=True, capture_output=True)

        def all_done() -> str | None:
            status = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True).stdout
            finished = "Queued" not in status and "Running" not in status
            return status if finished and status.count("Success") + status.count("Failed") >= 2 else None

        status = wait_for(all_done, timeout=1200, interval=3, what="the queued sweep")
        assert status.count("Success") == 2, status
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True)
    assert [state for _, state in mlflow_runs(repo)] == ["FINISHED"] * 3

    out = tmp_path / "reports"
    result = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare", "--sweep", "grid1", "--out", str(out)],
                            cwd=repo, env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with (out / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["model.latent_dim"] for row in rows) == ["2", "3"]
    assert all(row["dvc_experiment"] for row in rows)  # queued runs carry their DVC experiment's name
    everything = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare", "--out", str(tmp_path / "all")],
                                cwd=repo, env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=300)
    assert everything.returncode == 0, everything.stderr[-3000:]
    with (tmp_path / "all" / "compare.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3  # the workspace run too, outside the sweep
