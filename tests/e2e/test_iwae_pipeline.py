"""The IWAE objective end to end: `dvc exp run -S train.objective=iwae -S train.iw_k=5` on small data
trains on the k-sample bound, and train_log.csv and MLflow show its value per epoch."""

from __future__ import annotations

import csv
import math
import subprocess

import pytest
from pipeline_repo import QUICK_PARAMS, copy_repo, metric_history, mlflow_runs, stage_env

from vaepipe.config import load_params

pytestmark = pytest.mark.e2e


def train_log(repo) -> list[dict[str, float]]:
    with (repo / "train_log.csv").open() as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def test_dvc_exp_run_with_the_iwae_objective_logs_its_loss_per_epoch(quick, tmp_path):
    repo = copy_repo(quick, tmp_path / "repo")
    elbo_log = train_log(repo)
    result = subprocess.run(["dvc", "exp", "run", "-S", "train.objective=iwae", "-S", "train.iw_k=5"], cwd=repo,
                            env=stage_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    params = load_params(repo / "params.yaml")
    assert (params.train.objective, params.train.iw_k) == ("iwae", 5)
    log = train_log(repo)
    epochs = QUICK_PARAMS["train"]["epochs"]
    assert [row["epoch"] for row in log] == list(range(epochs))
    for row, elbo_row in zip(log, elbo_log, strict=True):
        assert all(math.isfinite(row[key]) for key in ("loss", "recon", "kl", "val_loss", "val_recon", "val_kl"))
        assert row["loss"] != elbo_row["loss"]  # trained on another objective than the quick run's ELBO
        # loss is the negative IWAE-5 bound (beta weighting the log-ratio); recon + beta * kl the
        # negative (beta-)ELBO of the same draws, which the bound improves on (Jensen).
        assert row["loss"] < row["recon"] + params.train.beta * row["kl"], row

    new_runs = [run_id for run_id, _ in mlflow_runs(repo) if run_id not in dict(mlflow_runs(quick))]
    assert len(new_runs) == 1, mlflow_runs(repo)
    history = metric_history(repo, new_runs[0])  # MLflow's steps count epochs from 1
    assert {step: next(iter(values)) for step, values in history["loss"].items()} == pytest.approx(
        {index + 1: row["loss"] for index, row in enumerate(log)}, rel=1e-6)
