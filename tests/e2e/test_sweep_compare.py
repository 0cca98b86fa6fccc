"""Sweeps through DVC's queue, read back by `make compare`: a 2 x 2 grid named at queue time
(`-S tracking.sweep=NAME`) tags every run of the grid, including a combination an earlier run already
trained (DVC's run-cache must not restore it without an MLflow run), and compare selects exactly them,
with the numbers `dvc exp show` has; its HTML page opens offline in Chromium with every image loaded.
The queue runs 2 at a time (`dvc queue start -j 2`, temporary copies) while a `dvc repro` runs in the
workspace, and every run lands complete in the main repository's store: metric histories, artifacts,
the model."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pipeline_repo import (
    QUICK_PARAMS,
    VENV_BIN,
    copy_repo,
    dvc_repro,
    experiment_refs,
    merge,
    mlflow_runs,
    stage_env,
    start_queue,
    stop_queue,
    wait_for_queue,
    write_params,
)
from test_browser import offline_page

from vaepipe.experiments import experiment_run_id

pytestmark = pytest.mark.e2e



def test_sweep_queued_as_a_grid_is_what_compare_selects(quick, tmp_path):
    # A copy of the quick fixture's repo: latent_dim 2, no sweep, reproduced, so in the run-cache now.
    repo = copy_repo(quick, tmp_path / "repo")
    env = stage_env()
    assert [state for _, state in mlflow_runs(repo)] == ["FINISHED"]
    assert "Running stage" not in dvc_repro(repo).stdout  # up to date
    known = experiment_refs(repo)
    queued = subprocess.run(["dvc", "exp", "run", "--queue", "-S", "tracking.sweep=grid1",
                             "-S", "model.latent_dim=2,4", "-S", "train.beta=0.5,1.0"],
                            cwd=repo, env=env, capture_output=True, text=True)
    assert queued.returncode == 0, queued.stderr
    try:
        start_queue(repo, jobs=2)
        write_params(repo, merge(yaml.safe_load((repo / "params.yaml").read_text()), {"model": {"latent_dim": 5}}))
        workspace = dvc_repro(repo, timeout=900)  # concurrently with the queued experiments
        assert workspace.returncode == 0, workspace.stderr[-3000:]
        status = wait_for_queue(repo, env, 4, known, timeout=1500)
        assert status.count("Success") == 4, status
    finally:
        stop_queue(repo)
    assert [state for _, state in mlflow_runs(repo)] == ["FINISHED"] * 6  # the fixture's, 4 queued, the workspace's
    every_run_is_complete_in_the_main_store(repo)

    out = tmp_path / "reports"
    result = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare", "--sweep", "grid1", "--out", str(out)],
                            cwd=repo, env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with (out / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((row["model.latent_dim"], row["train.beta"]) for row in rows) == [
        ("2", "0.5"), ("2", "1.0"), ("4", "0.5"), ("4", "1.0")]
    # Every row's numbers are the ones DVC recorded for that experiment.
    shown = experiment_metrics(subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env,
                                              capture_output=True, text=True, check=True).stdout)
    for row in rows:
        metrics = shown[row["dvc_experiment"]]
        assert experiment_run_id(row["dvc_experiment"], repo) == row["run_id"]  # what the experiment's train wrote
        for name in ("test_loss", "test_recon", "test_kl", "test_nll_iw", "knn_accuracy"):
            assert float(row[name]) == pytest.approx(metrics[name], abs=6e-5), (row["run"], name)
        assert int(row["active_units"]) == metrics["active_units"]
    assert Image.open(out / "rate_distortion.png").text["Description"] == "points=4"

    everything = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare", "--out", str(tmp_path / "all")],
                                cwd=repo, env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=300)
    assert everything.returncode == 0, everything.stderr[-3000:]
    with (tmp_path / "all" / "compare.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 6  # the workspace's runs too, outside the sweep

    with offline_page(out / "compare.html", tmp_path) as page:
        widths = page.evaluate("[...document.images].map(image => image.complete ? image.naturalWidth : 0)")
        # curves, rate-distortion, metrics against latent_dim and against beta
        assert len(widths) == 4 and all(width > 0 for width in widths), widths
        assert page.locator("table tbody tr").count() == 4


def every_run_is_complete_in_the_main_store(repo: Path) -> None:
    """The queued runs (temporary copies, gone now) and the workspace's latest hold what the workspace's
    stages wrote: every column of train_log.csv as a history over every epoch, every number of
    metrics.json, every PNG of plots/ (latent-2 runs draw the 2-D manifold as well), the model, all
    stored under the main repository's mlartifacts/."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    workspace_run = client.get_run((repo / "models" / "mlflow_run_id").read_text().strip())
    assert workspace_run.data.params["model.latent_dim"] == "5" and "test_loss" in workspace_run.data.metrics
    queued = [run for run in client.search_runs([workspace_run.info.experiment_id]) if run.data.tags.get("dvc.exp_name")]
    assert len(queued) == 4
    with (repo / "train_log.csv").open() as handle:
        per_epoch = [key for key in csv.DictReader(handle).fieldnames if key != "epoch"]
    evaluated = [key for key, value in json.loads((repo / "metrics.json").read_text()).items()
                 if isinstance(value, (int, float))]
    pngs = {f"plots/{png.name}" for png in (repo / "plots").glob("*.png")}
    expected_files = artifact_files(client, workspace_run.info.run_id)
    assert per_epoch and evaluated and pngs and pngs <= set(expected_files), (per_epoch, evaluated, pngs, expected_files)
    epochs = list(range(1, QUICK_PARAMS["train"]["epochs"] + 1))  # the quick fixture's, which the grid keeps
    for run in [*queued, workspace_run]:
        run_id, name = run.info.run_id, run.data.tags.get("dvc.exp_name", "workspace")
        latent_dim = int(run.data.params["model.latent_dim"])
        assert set(run.data.metrics) == set(workspace_run.data.metrics), name
        for key in per_epoch:
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == epochs, (name, key, history)
            assert all(math.isfinite(m.value) for m in history), (name, key, history)
        assert all(math.isfinite(run.data.metrics[key]) for key in evaluated), name
        files = artifact_files(client, run_id)
        manifold = {"plots/manifold.png"} if latent_dim == 2 else set()
        assert files.keys() == expected_files.keys() | manifold and all(size > 0 for size in files.values()), (name, files)
        root = Path(run.info.artifact_uri.removeprefix("file://"))
        assert root.is_relative_to(repo / "mlartifacts"), run.info.artifact_uri
        for png in pngs | manifold:
            assert (root / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), (name, png)
        models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        assert len(models) == 1, (name, models)
        model_dir = Path(models[0].artifact_location.removeprefix("file://"))
        assert model_dir.is_relative_to(repo / "mlartifacts"), models[0].artifact_location
        encoded = mlflow.pyfunc.load_model(str(model_dir)).predict(np.full((3, 784), 0.5, np.float32))
        assert encoded["z_mean"].shape == (3, latent_dim) and encoded["reconstruction"].shape == (3, 784), name


def artifact_files(client, run_id: str, path: str | None = None) -> dict[str, int]:
    """Every artifact file of a run (recursively) -> its size in bytes."""
    files: dict[str, int] = {}
    for item in client.list_artifacts(run_id, path):
        files.update(artifact_files(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return files


def experiment_metrics(show_json: str) -> dict[str, dict]:
    """{experiment name: metrics.json's values} from `dvc exp show --json`."""
    found: dict[str, dict] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            metrics = ((node.get("data") or {}).get("metrics") or {}).get("metrics.json", {}).get("data")
            if node.get("name") and metrics:
                found[node["name"]] = metrics
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(show_json))
    return found
