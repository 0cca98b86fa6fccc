"""Helpers for end-to-end tests: a throw-away git + DVC copy of this project, run with real processes."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# Small but not trivial: ~2000 images, epochs long enough (~0.5 s) to be interrupted in the middle.
SMALL_PARAMS = {
    "data": {"source": "pypi", "limit": 2000, "val_size": 200},
    "train": {"epochs": 6, "batch_size": 8, "steps_per_execution": 1, "jit_compile": False},
    "evaluate": {"iw_samples": 10, "mc_samples": 2},
}


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def stage_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "DVC_")) and k not in ("PYTHONPATH", "VAEPIPE_EXPERIMENT")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VAEPIPE_QUIET"] = "1"
    env["SHELL"] = "/bin/sh"  # the shell DVC runs stage commands with when SHELL is unset (as in CI)
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.invalid"
    env.update(extra)
    return env


def make_repo(path: Path, overrides: dict | None = None) -> Path:
    """Copy the project's tracked files (as in the working tree) into a fresh git repo at `path`."""
    listed = subprocess.run(["git", "-C", str(PROJECT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard", "--", "src", "stages", "dvc.yaml", "params.yaml",
                             ".dvc", ".dvcignore", ".gitignore", "data/.gitignore", "models/.gitignore",
                             "pyproject.toml"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    path.mkdir(parents=True, exist_ok=True)
    for name in filter(None, listed):
        source = PROJECT / name
        if source.is_file():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, path / name)
    params = yaml.safe_load((path / "params.yaml").read_text())
    write_params(path, merge(merge(params, SMALL_PARAMS), overrides or {}))
    env = stage_env()
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "test repo"]):
        subprocess.run(command, cwd=path, env=env, check=True, capture_output=True)
    return path


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def dvc_repro(repo: Path, *targets: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", "repro", *targets], cwd=repo, env=stage_env(), capture_output=True,
                          text=True, timeout=timeout)


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


# Test-only, run as `python -c` in a test repo: train's epoch 3 reports a NaN loss, so train stops with a
# checkpoint of 2 epochs (exit code 5).
POISON_EPOCH_3 = """
import math, runpy, sys
from vaepipe.train import epoch_end

original = epoch_end.EpochEnd.on_epoch_end

def poisoned(self, epoch, logs=None):
    if epoch == 2:
        logs["loss"] = math.nan
    return original(self, epoch, logs)

epoch_end.EpochEnd.on_epoch_end = poisoned
sys.argv = ["stages/train.py"]
runpy.run_path("stages/train.py", run_name="__main__")
"""
