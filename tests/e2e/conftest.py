"""Shared fixture: one small pipeline run, reproduced once per test session (≈ 40 s)."""

from __future__ import annotations

import csv
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


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Baseline:
    """An uninterrupted `dvc repro` of the small params; its numbers are captured right away, so
    tests that damage this repo (and restore it) cannot change what the others compare against."""
    repo = make_repo(tmp_path_factory.mktemp("baseline") / "repo")
    result = dvc_repro(repo)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = mlflow_runs(repo)
    assert [status for _, status in runs] == ["FINISHED"], runs
    with (repo / "train_log.csv").open() as handle:
        train_log = list(csv.DictReader(handle))
    return Baseline(repo=repo, metrics=read_metrics(repo), run_id=runs[0][0],
                    history=metric_history(repo, runs[0][0]), train_log=train_log, snapshot=Snapshot.take(repo))
