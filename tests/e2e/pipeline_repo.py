"""Helpers for end-to-end tests: a throw-away git + DVC copy of this project, run with real processes."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import yaml
from project_copy import clean_env, copy_working_tree

PROJECT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# Small but not trivial: ~2000 images, epochs long enough (~0.5 s) to be interrupted in the middle.
SMALL_PARAMS = {
    "data": {"source": "pypi", "limit": 2000, "val_size": 200},
    "train": {"epochs": 6, "batch_size": 8, "steps_per_execution": 1, "jit_compile": False},
    "evaluate": {"iw_samples": 10, "mc_samples": 2},
}

# Quicker still: 256 images, 2 epochs at batch 32, the stacked fast path (the `quick` fixture's params).
QUICK_PARAMS = {"data": {"limit": 256, "val_size": 64},
                "train": {"epochs": 2, "batch_size": 32, "steps_per_execution": 100}}


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def stage_env(**extra: str) -> dict[str, str]:
    return clean_env(VENV_BIN, SHELL="/bin/sh",  # the shell DVC runs stage commands with when SHELL is unset (as in CI)
                     GIT_AUTHOR_NAME="test", GIT_COMMITTER_NAME="test",
                     GIT_AUTHOR_EMAIL="test@example.invalid", GIT_COMMITTER_EMAIL="test@example.invalid", **extra)


def make_repo(path: Path, overrides: dict | None = None) -> Path:
    """Copy the project's tracked files (as in the working tree) into a fresh git repo at `path`."""
    path.mkdir(parents=True, exist_ok=True)
    copy_working_tree(PROJECT, path, ["src", "stages", "dvc.yaml", "params.yaml", ".dvc", ".dvcignore", ".gitignore",
                                      "data/.gitignore", "models/.gitignore", "pyproject.toml"])
    params = yaml.safe_load((path / "params.yaml").read_text())
    write_params(path, merge(merge(params, SMALL_PARAMS), overrides or {}))
    env = stage_env()
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "test repo"]):
        subprocess.run(command, cwd=path, env=env, check=True, capture_output=True)
    return path


def tiny_dvc_repo(repo: Path, env: dict[str, str], files: dict[str, str]) -> Path:
    """A new git and DVC repository at `repo` holding `files` (name -> text: params.yaml, dvc.yaml, a stage
    script, .gitignore), committed: the smallest place to run `dvc exp run` in."""
    repo.mkdir()
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, env=env, capture_output=True, check=True)
    for name, text in files.items():
        (repo / name).write_text(text)
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny"]):
        subprocess.run(command, cwd=repo, env=env, capture_output=True, check=True)
    return repo


def copy_repo(source: Path, dest: Path) -> Path:
    """A copy of a test repo (outputs, dvc.lock, checkpoints, MLflow store) that stands on its own: the
    store's absolute artifact locations are moved to the copy's mlartifacts/, so nothing it logs lands in
    the source's."""
    shutil.copytree(source, dest, symlinks=True)
    db = dest / "mlflow.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for column in [row[1] for row in conn.execute(f"PRAGMA table_info('{table}')").fetchall()]:
                    conn.execute(f"UPDATE '{table}' SET \"{column}\" = replace(\"{column}\", ?, ?) "
                                 f"WHERE typeof(\"{column}\") = 'text' AND instr(\"{column}\", ?)",
                                 (str(source), str(dest), str(source)))
    return dest


def prepared_copy(source: Path, dest: Path, overrides: dict) -> Path:
    """A copy of a reproduced repo of the small params (copy_repo) with only prepare's output left, up to
    date in dvc.lock, and params = the small ones with `overrides` (none of prepare's): `dvc repro` there
    starts at train, as in a make_repo(dest, overrides) repo after its prepare stage: dvc.lock keeps only
    prepare's entry and DVC's run-cache is left out, or with no overrides DVC would restore the source's
    train from its cache instead of running it."""
    copy_repo(source, dest)
    shutil.rmtree(dest / ".dvc" / "cache" / "runs", ignore_errors=True)
    lock = yaml.safe_load((dest / "dvc.lock").read_text())
    lock["stages"] = {"prepare": lock["stages"]["prepare"]}
    (dest / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    for name in ("mlflow.db", "mlartifacts", "checkpoints", "plots", "models/vae.keras", "models/mlflow_run_id",
                 "metrics.json", "val_metrics.json", "train_log.csv"):
        path = dest / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    write_params(dest, merge(params, overrides))
    return dest


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_repro(repo: Path, *targets: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", "repro", *targets], cwd=repo, env=stage_env(), capture_output=True,
                          text=True, timeout=timeout)


def start_queue(repo: Path, jobs: int) -> None:
    """`dvc queue start -j jobs`: returns once the workers are spawned. Its output is not read: the
    processes that wait for the detached workers hold it, so reading it to the end waited until the
    workers exited (idle for 10 s), or for ever when a worker's idle monitor died, as DVC's filesystem
    broker can make it do under load (a JSONDecodeError on a half-written control message)."""
    subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=repo, env=stage_env(), check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)


EXPERIMENT_REF = re.compile(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+")  # DVC's refs/exps/<baseline>/<name>


def experiment_refs(repo: Path) -> set[str]:
    """The repository's experiment refs, read by git in milliseconds: a queued experiment's appears when its
    worker has collected it."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.split()
    return {ref for ref in refs if EXPERIMENT_REF.fullmatch(ref)}


def wait_for_queue(repo: Path, env: dict[str, str], count: int, known: set[str], timeout: float = 1200) -> str:
    """`dvc queue status` once `count` queued experiments have ended (none queued or running, `count` Success
    or Failed): its output. Each look at it is a DVC process of about a CPU second, which the queue's
    trainings share, so between looks the experiment refs beyond `known` are counted (git): it is asked
    every second once `count` have landed, else every 15 s (a failed experiment lands no ref)."""
    asked = [-math.inf]

    def all_done() -> str | None:
        if len(experiment_refs(repo) - known) < count and time.monotonic() - asked[0] < 15:
            return None
        asked[0] = time.monotonic()
        status = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True).stdout
        finished = "Queued" not in status and "Running" not in status
        return status if finished and status.count("Success") + status.count("Failed") >= count else None

    return wait_for(all_done, timeout=timeout, interval=1, what="the queued experiments")


def stop_queue(repo: Path) -> None:
    """`dvc queue stop --kill`, then SIGKILL what is left of this repo's queue workers (by pid)."""
    subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=stage_env(), capture_output=True, timeout=120)
    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if process.info["cwd"] == str(repo) and "queue-worker" in (process.info["cmdline"] or []):
                process.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def run_stage(repo: Path, stage: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    """One stage as `dvc repro` runs it: `python stages/<stage>.py` with PYTHONPATH=src."""
    return subprocess.run([str(VENV_BIN / "python"), f"stages/{stage}.py"], cwd=repo,
                          env=stage_env(PYTHONPATH="src", **env), capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- looking at the results


def mlflow_runs(repo: Path) -> list[tuple[str, str]]:
    """(run id, status) of every run in the repo's SQLite store."""
    db = repo / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT run_uuid, status FROM runs WHERE lifecycle_stage = 'active'").fetchall())


def metric_history(repo: Path, run_id: str) -> dict[str, dict[int, set[float]]]:
    """key -> step -> the set of distinct values logged for that step."""
    history: dict[str, dict[int, set[float]]] = {}
    with sqlite3.connect(repo / "mlflow.db") as conn:
        for key, step, value in conn.execute("SELECT key, step, value FROM metrics WHERE run_uuid = ?", (run_id,)):
            history.setdefault(key, {}).setdefault(step, set()).add(value)
    return history


def model_weights(model_file: Path) -> dict[str, np.ndarray]:
    """Every weight array saved in a `.keras` file (its model.weights.h5), by its path in that file: read
    with h5py, so the test process need not load TensorFlow to compare two models."""
    import h5py

    weights: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(model_file) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        h5.visititems(lambda name, item: weights.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return weights


def epoch_rows(log: Path) -> int:
    try:
        return max(0, len([line for line in log.read_text().splitlines() if line.strip()]) - 1)
    except FileNotFoundError:
        return 0


@dataclass
class Snapshot:
    """The good outputs a failed stage must leave exactly as they were."""

    files: dict[str, bytes | None] = field(default_factory=dict)
    runs: list[tuple[str, str]] = field(default_factory=list)

    OUTPUTS = ("models/vae.keras", "models/mlflow_run_id", "metrics.json", "train_log.csv",
               "data/prepared/train.npz", "data/prepared/validation.npz", "data/prepared/test.npz",
               "data/prepared/meta.json", "dvc.lock")

    @classmethod
    def take(cls, repo: Path) -> Snapshot:
        files = {name: (repo / name).read_bytes() if (repo / name).exists() else None for name in cls.OUTPUTS}
        return cls(files=files, runs=mlflow_runs(repo))

    def differences(self, other: Snapshot) -> list[str]:
        """Names of the outputs (and "MLflow runs") that differ: short, unlike a diff of the bytes."""
        changed = [name for name in self.OUTPUTS if self.files.get(name) != other.files.get(name)]
        return changed + (["MLflow runs"] if self.runs != other.runs else [])


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def read_metrics(repo: Path) -> dict:
    return json.loads((repo / "metrics.json").read_text())


# ---------------------------------------------------------------- MLflow servers

# For the servers the tests start: no MLflow job runner, whose eight Huey consumer processes (each a
# Python importing MLflow, about 240 MB) cost more CPU at start-up than the tests' whole use of the
# server; no test runs an MLflow job.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    """A port nothing listens on now (the OS's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(base: str, process: subprocess.Popen, timeout: float, interval: float = 0.5) -> None:
    """Until `GET {base}/health` answers 200 (an MLflow server or UI); fails at once if the process exited."""
    def healthy() -> bool:
        assert process.poll() is None, f"the server for {base} exited with {process.returncode}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(healthy, timeout=timeout, interval=interval, what=f"{base}/health")


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend and a local artifact root, whose port and
    store (under `root`) outlive its process, so it can be killed and started again as the same server."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.root = root
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "server-artifacts")],
            env=stage_env(**SERVER_ENV), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def wait_healthy(self, timeout: float = 150) -> None:
        wait_until_healthy(self.base, self.process, timeout=timeout)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Teardown: SIGKILL, since its graceful shutdown can take over 30 s on a loaded machine."""
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def rest(self, endpoint: str, payload: dict | None = None, **query: str) -> dict:
        url = f"{self.base}/api/2.0/mlflow/{endpoint}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def runs(self) -> list[dict]:
        try:
            experiment = self.rest("experiments/get-by-name", experiment_name="vaepipe")["experiment"]
        except urllib.error.HTTPError:  # not created yet
            return []
        return self.rest("runs/search", {"experiment_ids": [experiment["experiment_id"]]}).get("runs", [])

    def history(self, run_id: str, key: str) -> list[dict]:
        return self.rest("metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])


# Test-only programs that linters read: tests/e2e/programs/.
PROGRAMS = Path(__file__).resolve().parent / "programs"
SIGNAL_GATE = PROGRAMS / "signal_gate.py"


def train_poisoned_at_epoch_3(repo: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Train (as run_stage does) with epoch 3's loss reported NaN: it stops with a checkpoint of 2 epochs
    and exit code 5 (programs/poison_epoch_3.py)."""
    return subprocess.run([str(VENV_BIN / "python"), str(PROGRAMS / "poison_epoch_3.py")], cwd=repo,
                          env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=timeout)
