"""Sweeps through DVC's queue, read back by `make compare`: a 2 x 2 grid named at queue time
(`-S tracking.sweep=NAME`) tags every run of the grid, including a combination an earlier run already
trained (DVC's run-cache must not restore it without an MLflow run), and compare selects exactly them,
with the numbers `dvc exp show` has; its HTML page opens offline in Chromium with every image loaded."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest
from PIL import Image
from pipeline_repo import VENV_BIN, copy_repo, dvc_repro, mlflow_runs, stage_env, start_queue, stop_queue, wait_for
from test_browser import offline_page

pytestmark = pytest.mark.e2e



def test_sweep_queued_as_a_grid_is_what_compare_selects(quick, tmp_path):
    # A copy of the quick fixture's repo: latent_dim 2, no sweep, reproduced, so in the run-cache now.
    repo = copy_repo(quick, tmp_path / "repo")
    env = stage_env()
    assert [state for _, state in mlflow_runs(repo)] == ["FINISHED"]
    assert "Running stage" not in dvc_repro(repo).stdout  # up to date
    queued = subprocess.run(["dvc", "exp", "run", "--queue", "-S", "tracking.sweep=grid1",
                             "-S", "model.latent_dim=2,4", "-S", "train.beta=0.5,1.0"],
                            cwd=repo, env=env, capture_output=True, text=True)
    assert queued.returncode == 0, queued.stderr
    try:
        start_queue(repo, jobs=2)

        def all_done() -> str | None:
            status = subprocess.run(["dvc", "queue", "status"], cwd=repo, env=env, capture_output=True, text=True).stdout
            finished = "Queued" not in status and "Running" not in status
            return status if finished and status.count("Success") + status.count("Failed") >= 4 else None

        status = wait_for(all_done, timeout=1500, interval=3, what="the queued sweep")
        assert status.count("Success") == 4, status
    finally:
        stop_queue(repo)
    assert [state for _, state in mlflow_runs(repo)] == ["FINISHED"] * 5

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
        assert metrics["mlflow_run_id"] == row["run_id"]
        for name in ("test_loss", "test_recon", "test_kl", "test_nll_iw", "knn_accuracy"):
            assert float(row[name]) == pytest.approx(metrics[name], abs=6e-5), (row["run"], name)
        assert int(row["active_units"]) == metrics["active_units"]
    assert Image.open(out / "rate_distortion.png").text["Description"] == "points=4"

    everything = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare", "--out", str(tmp_path / "all")],
                                cwd=repo, env=stage_env(PYTHONPATH="src"), capture_output=True, text=True, timeout=300)
    assert everything.returncode == 0, everything.stderr[-3000:]
    with (tmp_path / "all" / "compare.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 5  # the workspace run too, outside the sweep

    with offline_page(out / "compare.html", tmp_path) as page:
        widths = page.evaluate("[...document.images].map(image => image.complete ? image.naturalWidth : 0)")
        # curves, rate-distortion, metrics against latent_dim and against beta
        assert len(widths) == 4 and all(width > 0 for width in widths), widths
        assert page.locator("table tbody tr").count() == 4


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
