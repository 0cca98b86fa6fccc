"""MLflow tracking against real stores: a real `mlflow server` on 127.0.0.1 lost while a run is open, an
unreachable server, a failing stage. (The whole pipeline logging to a real server, read back through it:
tests/e2e/test_team.py, whose `dvc repro` logs to the team's server; queued DVC experiments run in
parallel, landing complete in the main store: tests/e2e/test_sweep_compare.py.)"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
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


