"""The metric registry (vaepipe.metrics) against what a real run writes, and docs/extending.md's test-metric
recipe carried out on a copy of the package. Both reuse the session's `quick` repo (a `dvc repro` of
QUICK_PARAMS: train_log.csv, val_metrics.json, metrics.json, one MLflow run): neither trains."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

import pytest
from pipeline_repo import PROJECT, VENV_BIN, copy_repo, metric_history, mlflow_runs, read_metrics, run_stage, stage_env

from vaepipe import metrics

pytestmark = pytest.mark.e2e

DOCS = PROJECT / "docs" / "extending.md"
NEW_METRIC = "mean_posterior_variance"  # the metric the recipe's example declares
NOT_METRICS_IN_MLFLOW = {"parameter_count"}  # the session logs the model's size: run info, not a metric


def read_compare_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_every_metric_a_run_writes_is_in_the_registry_and_in_compare(quick, tmp_path, monkeypatch):
    """train_log.csv, val_metrics.json and metrics.json hold exactly the registry's metrics (and the keys it
    names as not metrics); the MLflow run no other metric; compare's table every test metric, filled."""
    with (quick / "train_log.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header[0] == "epoch" and sorted(header[1:]) == sorted(metrics.epoch_columns())
    validation = json.loads((quick / "val_metrics.json").read_text())
    assert list(validation) == [*metrics.names(metrics.VALIDATION), *metrics.INFO[metrics.VALIDATION]]
    tested = read_metrics(quick)
    assert list(tested) == [*metrics.names(metrics.TEST), *metrics.INFO[metrics.TEST]]
    (run_id, _), = mlflow_runs(quick)
    logged = {key for key in metric_history(quick, run_id) if not key.startswith("system/")}
    known = {*metrics.epoch_columns(), *metrics.names(metrics.TEST)}
    assert logged - NOT_METRICS_IN_MLFLOW == known, sorted(logged ^ known)

    from vaepipe.compare.__main__ import main

    repo = copy_repo(quick, tmp_path / "repo")  # compare only reads; a copy keeps the shared store untouched
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    assert main(["--out", str(tmp_path / "reports")]) == 0
    (row,) = read_compare_csv(tmp_path / "reports" / "compare.csv")
    assert all(row[name] for name in metrics.names(metrics.TEST)), row
    assert float(row["test_tutorial_loss"]) == pytest.approx(tested["test_tutorial_loss"], rel=1e-3)


def documented_recipe() -> str:
    """The python block of docs/extending.md's "A test metric" section, as a user would paste it."""
    section = DOCS.read_text().split("## A test metric", 1)[1].split("\n## ", 1)[0]
    assert "**One file**: `src/vaepipe/metrics.py`" in section
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


def changed_files(copy: Path, original: Path) -> list[str]:
    def files(root: Path) -> dict[str, bytes]:
        return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}

    before, after = files(original), files(copy)
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def test_the_documented_test_metric_recipe_changes_one_file_and_reaches_metrics_json_mlflow_and_compare(
        quick, tmp_path):
    repo = copy_repo(quick, tmp_path / "repo")
    registry = repo / "src" / "vaepipe" / "metrics.py"
    registry.write_text(registry.read_text() + "\n\n" + documented_recipe())
    assert changed_files(repo / "src", PROJECT / "src") == ["vaepipe/metrics.py"]

    # The process is the point: the copy's package, with its one edited file, runs evaluate and compare.
    evaluated = run_stage(repo, "evaluate", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scored = read_metrics(repo)
    value = scored.pop(NEW_METRIC)
    assert value > 0.0  # a mean of variances
    assert scored == read_metrics(quick)  # the same model, seeds and protocol: every other number as before
    run_id = (repo / "models" / "mlflow_run_id").read_text().strip()
    (logged,) = set().union(*metric_history(repo, run_id)[NEW_METRIC].values())  # evaluate logs metrics.json
    assert logged == pytest.approx(value)

    compared = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare", "--out", "reports",
                               "--sort", NEW_METRIC], cwd=repo, env=stage_env(PYTHONPATH="src"),
                              capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr[-3000:]
    (row,) = read_compare_csv(repo / "reports" / "compare.csv")
    assert float(row[NEW_METRIC]) == pytest.approx(value, rel=1e-3)
    assert f"| {NEW_METRIC} |" in (repo / "reports" / "compare.md").read_text()
