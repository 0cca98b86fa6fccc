"""MLflow tracking against real stores: a real `mlflow server` on 127.0.0.1 read back through its REST
API, an unreachable server, a failing stage, and queued DVC experiments run in parallel."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from pipeline_repo import (
    PROJECT,
    VENV_BIN,
    MlflowServer,
    dvc_repro,
    free_port,
    make_repo,
    mlflow_runs,
    run_stage,
    stage_env,
    start_queue,
    stop_queue,
    wait_for,
)

pytestmark = pytest.mark.e2e

QUICK = {"data": {"limit": 256, "val_size": 64}, "train": {"epochs": 2, "batch_size": 32, "steps_per_execution": 100,
                                           "jit_compile": True}}


def test_unreachable_server_fails_fast_naming_the_uri(tmp_path):
    repo = make_repo(tmp_path / "repo", QUICK)
    assert dvc_repro(repo, "prepare").returncode == 0
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    started = time.monotonic()
    # PYTHONPROFILEIMPORTTIME: Python lists every module the stage imported (on stderr).
    result = run_stage(repo, "train", MLFLOW_TRACKING_URI=uri, PYTHONPROFILEIMPORTTIME="1")
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert uri in result.stderr and "unreachable" in result.stderr
    # Fast: before TensorFlow is even imported (whatever the machine's load: 2 s alone, 11 s once under
    # two busy workers), and nowhere near MLflow's retries (minutes).
    imported = re.findall(r"^import time:.*\|\s*(\S+)$", result.stderr, re.M)
    assert "vaepipe.config" in imported and not {"tensorflow", "keras"} & set(imported), imported[-20:]
    assert elapsed < 60, elapsed
    assert not (repo / "models/vae.keras").exists() and not list((repo / "checkpoints").glob("*/*"))


def test_failing_stage_leaves_its_run_failed(tmp_path):
    """A training run that fails (a loss that overflows) is marked FAILED, never left RUNNING."""
    repo = make_repo(tmp_path / "repo", {**QUICK, "train": {**QUICK["train"], "beta": 1.0e39}})
    result = dvc_repro(repo)
    assert result.returncode != 0
    assert "loss became" in result.stderr
    assert [status for _, status in mlflow_runs(repo)] == ["FAILED"]


@contextmanager
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A real `mlflow server` on 127.0.0.1 (pipeline_repo.MlflowServer), healthy, stopped afterwards."""
    server = MlflowServer(tmp_path)
    server.start()
    try:
        server.wait_healthy(timeout=120)
        yield server
    finally:
        server.stop()


def test_pipeline_logs_to_a_real_mlflow_server(tmp_path):
    with mlflow_server(tmp_path) as server:
        repo = make_repo(tmp_path / "repo", QUICK)
        result = subprocess.run(["dvc", "repro"], cwd=repo, env=stage_env(MLFLOW_TRACKING_URI=server.base),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not (repo / "mlflow.db").exists()  # nothing went to the local store

        runs = server.runs()
        assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
        run_id = runs[0]["info"]["run_id"]
        metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
        local = json.loads((repo / "metrics.json").read_text())
        assert metrics["test_loss"] == pytest.approx(local["test_loss"]) and local["mlflow_run_id"] == run_id
        params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
        assert params["model.latent_dim"] == "2" and params["data.limit"] == "256"
        history = server.history(run_id, "val_loss")
        assert sorted(m["step"] for m in history) == [1, 2]
        plots = server.rest("artifacts/list", run_id=run_id, path="plots")["files"]
        assert {Path(f["path"]).name for f in plots} >= {"reconstructions.png", "loss_curves.png"}


# A stage body that loses its tracking server while its run is open (the server's process group is
# argv[1]): the run cannot be closed, and that must be one clear error line, not a traceback.
LOSES_SERVER = """
import os, signal, socket, sys, time
from vaepipe import tracking
from vaepipe.process import run_stage

def main():
    with tracking.active_run(None, start=dict(run_name="lost", params={"a": 1}, tags={})):
        os.killpg(int(sys.argv[1]), signal.SIGKILL)
        time.sleep(1.0)

run_stage(main)
"""


def test_a_server_lost_before_the_run_closes_is_one_clear_error(tmp_path):
    with mlflow_server(tmp_path) as server:
        base = server.base
        result = subprocess.run([str(VENV_BIN / "python"), "-c", LOSES_SERVER, str(server.process.pid)], cwd=PROJECT,
                                env=stage_env(PYTHONPATH="src", MLFLOW_TRACKING_URI=base,
                                              MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0"),  # no 2-minute retry budget
                                capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.search(rf"could not mark MLflow run \w+ FINISHED in {re.escape(base)}", result.stderr), result.stderr[-3000:]


def test_queued_experiments_land_in_the_main_store(tmp_path):
    """Two experiments run by `dvc queue start -j 2` execute in temporary copies while a third
    `dvc repro` runs in the workspace; all their runs, with every artifact, must land complete in the
    main repository's store."""
    repo = make_repo(tmp_path / "repo", QUICK)
    first = dvc_repro(repo)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    env = stage_env()
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=repo, env=env, check=True)
    for latent in (3, 4):
        queued = subprocess.run(["dvc", "exp", "run", "--queue", "-S", f"model.latent_dim={latent}",
                                 "-n", f"latent{latent}"], cwd=repo, env=env, capture_output=True, text=True)
        assert queued.returncode == 0, queued.stderr
    try:
        start_queue(repo, jobs=2)
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["model"]["latent_dim"] = 5
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        workspace = dvc_repro(repo, timeout=900)  # concurrently with the two queued experiments
        assert workspace.returncode == 0, workspace.stderr[-3000:]

        def all_done() -> bool:
            status = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True).stdout
            return "Queued" not in status and "Running" not in status and status.count("Success") + status.count("Failed") >= 2

        wait_for(all_done, timeout=900, interval=3, what="queued experiments")
        status = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True).stdout
        assert status.count("Success") == 2, status
    finally:
        stop_queue(repo)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow_runs(repo)
    assert len(runs) == 4 and all(status == "FINISHED" for _, status in runs), runs
    workspace_run = client.get_run(json.loads((repo / "metrics.json").read_text())["mlflow_run_id"])
    assert workspace_run.data.params["model.latent_dim"] == "5" and "test_loss" in workspace_run.data.metrics
    exp_runs = [client.get_run(run_id) for run_id, _ in runs if client.get_run(run_id).data.tags.get("dvc.exp_name")]
    assert sorted(r.data.tags["dvc.exp_name"] for r in exp_runs) == ["latent3", "latent4"]

    # What a complete run holds, read from what the workspace's stages wrote: every column of
    # train_log.csv as a metric history over every epoch, every number of metrics.json, every PNG of
    # plots/ (latent_dim is 3, 4 and 5: no run draws the 2-D manifold), and the workspace run's artifacts.
    with (repo / "train_log.csv").open() as handle:
        per_epoch = [key for key in csv.DictReader(handle).fieldnames if key != "epoch"]
    evaluated = [key for key, value in json.loads((repo / "metrics.json").read_text()).items()
                 if isinstance(value, (int, float))]
    pngs = {f"plots/{png.name}" for png in (repo / "plots").glob("*.png")}
    expected_files = artifact_files(client, workspace_run.info.run_id)
    assert per_epoch and evaluated and pngs and pngs <= set(expected_files), (per_epoch, evaluated, pngs, expected_files)
    epochs = list(range(1, QUICK["train"]["epochs"] + 1))
    for run in exp_runs + [workspace_run]:
        run_id, name = run.info.run_id, run.data.tags.get("dvc.exp_name", "workspace")
        latent_dim = int(run.data.params["model.latent_dim"])
        assert run.data.params["model.latent_dim"] == run.data.tags.get("dvc.exp_name", "latent5")[-1]
        # Every metric history, complete: one value per epoch for the training curves.
        assert set(run.data.metrics) == set(workspace_run.data.metrics), name
        for key in per_epoch:
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == epochs, (name, key, history)
            assert all(math.isfinite(m.value) for m in history), (name, key, history)
        assert all(math.isfinite(run.data.metrics[key]) for key in evaluated), name
        # Every artifact, non-empty and stored in the main repo (the temporary copies are gone).
        files = artifact_files(client, run_id)
        assert files.keys() == expected_files.keys() and all(size > 0 for size in files.values()), (name, files)
        root = Path(run.info.artifact_uri.removeprefix("file://"))
        assert root.is_relative_to(repo / "mlartifacts"), run.info.artifact_uri
        for png in pngs:
            assert (root / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), (name, png)
        # The model: logged by this run, stored in the main repo, and it loads and encodes.
        models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        assert len(models) == 1, (name, models)
        model_dir = Path(models[0].artifact_location.removeprefix("file://"))
        assert model_dir.is_relative_to(repo / "mlartifacts"), models[0].artifact_location
        encoded = mlflow.pyfunc.load_model(str(model_dir)).predict(np.full((3, 784), 0.5, np.float32))
        assert encoded["z_mean"].shape == (3, latent_dim) and encoded["reconstruction"].shape == (3, 784), name
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert all(r.info.run_id in shown.stdout for r in exp_runs)  # the run id is a metric DVC shows


def artifact_files(client, run_id: str, path: str | None = None) -> dict[str, int]:
    """Every artifact file of a run (recursively) -> its size in bytes."""
    files: dict[str, int] = {}
    for item in client.list_artifacts(run_id, path):
        files.update(artifact_files(client, run_id, item.path) if item.is_dir else {item.path: item.file_size})
    return files
