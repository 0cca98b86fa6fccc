"""MLflow tracking against real stores: a real `mlflow server` on 127.0.0.1 read back through its REST
API, an unreachable server, a failing stage, and queued DVC experiments run in parallel."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from pipeline_repo import PROJECT, VENV_BIN, dvc_repro, make_repo, mlflow_runs, run_stage, stage_env, wait_for

pytestmark = pytest.mark.e2e

QUICK = {"data": {"limit": 256}, "train": {"epochs": 2, "batch_size": 32, "steps_per_execution": 100,
                                           "jit_compile": True}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rest(base: str, endpoint: str, payload: dict | None = None) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode() if payload is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_unreachable_server_fails_fast_naming_the_uri(tmp_path):
    repo = make_repo(tmp_path / "repo", QUICK)
    assert dvc_repro(repo, "prepare").returncode == 0
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    started = time.monotonic()
    result = run_stage(repo, "train", MLFLOW_TRACKING_URI=uri)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert uri in result.stderr and "unreachable" in result.stderr
    assert elapsed < 15, elapsed
    assert not (repo / "models/vae.keras").exists() and not list((repo / "checkpoints").glob("*/*"))


def test_failing_stage_leaves_its_run_failed(tmp_path):
    """A training run that fails (a loss that overflows) is marked FAILED, never left RUNNING."""
    repo = make_repo(tmp_path / "repo", {**QUICK, "train": {**QUICK["train"], "beta": 1.0e39}})
    result = dvc_repro(repo)
    assert result.returncode != 0
    assert "loss became" in result.stderr
    assert [status for _, status in mlflow_runs(repo)] == ["FAILED"]


@contextmanager
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact root."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        env=stage_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(healthy, timeout=120, interval=1, what="mlflow server /health")
        yield base, server
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_pipeline_logs_to_a_real_mlflow_server(tmp_path):
    with mlflow_server(tmp_path) as (base, _):
        repo = make_repo(tmp_path / "repo", QUICK)
        result = subprocess.run(["dvc", "repro"], cwd=repo, env=stage_env(MLFLOW_TRACKING_URI=base),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert not (repo / "mlflow.db").exists()  # nothing went to the local store

        experiment = rest(base, "experiments/get-by-name?experiment_name=vaepipe")["experiment"]
        runs = rest(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
        run_id = runs[0]["info"]["run_id"]
        metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
        local = json.loads((repo / "metrics.json").read_text())
        assert metrics["test_loss"] == pytest.approx(local["test_loss"]) and local["mlflow_run_id"] == run_id
        params = {p["key"]: p["value"] for p in runs[0]["data"]["params"]}
        assert params["model.latent_dim"] == "2" and params["data.limit"] == "256"
        history = rest(base, f"metrics/get-history?run_id={run_id}&metric_key=val_loss")["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2]
        plots = rest(base, f"artifacts/list?run_id={run_id}&path=plots")["files"]
        assert {Path(f["path"]).name for f in plots} >= {"reconstructions.png", "loss_curves.png"}


# A stage body that loses its tracking server while its run is open (the server's process group is
# argv[1]): the run cannot be closed, and that must be one clear error line, not a traceback.
LOSES_SERVER = """
import os, signal, socket, sys, time
from vaepipe import tracking
from vaepipe.errors import run_stage

def main():
    with tracking.active_run(None, start=dict(run_name="lost", params={"a": 1}, tags={})):
        os.killpg(int(sys.argv[1]), signal.SIGKILL)
        time.sleep(1.0)

run_stage(main)
"""


def test_a_server_lost_before_the_run_closes_is_one_clear_error(tmp_path):
    with mlflow_server(tmp_path) as (base, server):
        result = subprocess.run([str(VENV_BIN / "python"), "-c", LOSES_SERVER, str(server.pid)], cwd=PROJECT,
                                env=stage_env(PYTHONPATH="src", MLFLOW_TRACKING_URI=base),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode != 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.search(rf"could not mark MLflow run \w+ FINISHED in {re.escape(base)}", result.stderr), result.stderr[-3000:]


def test_queued_experiments_land_in_the_main_store(tmp_path):
    """Two experiments run by `dvc queue start -j 2` execute in temporary copies while a third
    `dvc repro` runs in the workspace; all their runs, with every artifact, must land complete in the
    main repository's store."""
    repo = make_repo(tmp_path / "repo", QUICK)
    assert dvc_repro(repo).returncode == 0
    env = stage_env()
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=repo, env=env, check=True)
    for latent in (3, 4):
        queued = subprocess.run(["dvc", "exp", "run", "--queue", "-S", f"model.latent_dim={latent}",
                                 "-n", f"latent{latent}"], cwd=repo, env=env, capture_output=True, text=True)
        assert queued.returncode == 0, queued.stderr
    try:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=repo, env=env, check=True, capture_output=True)
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
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow_runs(repo)
    assert len(runs) == 4 and all(status == "FINISHED" for _, status in runs), runs
    workspace_run = client.get_run(json.loads((repo / "metrics.json").read_text())["mlflow_run_id"])
    assert workspace_run.data.params["model.latent_dim"] == "5" and "test_loss" in workspace_run.data.metrics
    exp_runs = [client.get_run(run_id) for run_id, _ in runs if client.get_run(run_id).data.tags.get("dvc.exp_name")]
    assert sorted(r.data.tags["dvc.exp_name"] for r in exp_runs) == ["latent3", "latent4"]
    for run in exp_runs:
        assert run.data.params["model.latent_dim"] == run.data.tags["dvc.exp_name"][-1]
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
        assert "test_nll_iw" in run.data.metrics
        plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
        assert "reconstructions.png" in plots
        # The artifact files themselves exist in the main repo (the temporary copies are gone).
        assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(repo / "mlartifacts")
        assert (Path(run.info.artifact_uri.removeprefix("file://")) / "plots" / "reconstructions.png").exists()
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert all(r.info.run_id in shown.stdout for r in exp_runs)  # the run id is a metric DVC shows
