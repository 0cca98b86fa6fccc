"""`make compare STUDY=name` over a real two-objective Optuna study whose trials are real (tiny) train
stage runs: each trial's params written to params.yaml, `stages/train.py` run as DVC runs it, its MLflow
run tagged per the search contract, the study told the run's last-epoch (val_recon, val_kl); one trial
replayed in full (train, then evaluate) as its final run. Compare's page then opens offline in Chromium
with every figure loaded, the Pareto front among them, and lists trials apart from the ranked final run."""

from __future__ import annotations

import csv
import re
import subprocess

import mlflow
import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution, IntDistribution
from PIL import Image
from pipeline_repo import VENV_BIN, merge, prepared_copy, run_stage, stage_env, write_params
from test_browser import offline_page

pytestmark = pytest.mark.e2e

SPACE = {"model.latent_dim": IntDistribution(2, 4), "train.beta": FloatDistribution(0.05, 8.0, log=True)}
# Three trials (the fewest that give a front and importances): each a train stage of the quick params.
TRIALS = [{"model.latent_dim": 2, "train.beta": 0.05}, {"model.latent_dim": 4, "train.beta": 0.5},
          {"model.latent_dim": 3, "train.beta": 8.0}]


def train(repo, base: dict, params: dict) -> str:
    """The train stage with `params` (dotted names) over `base`: the new MLflow run's id."""
    nested: dict = {}
    for name, value in params.items():
        section, key = name.split(".")
        nested.setdefault(section, {})[key] = value
    write_params(repo, merge(base, nested))
    result = run_stage(repo, "train", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return (repo / "models" / "mlflow_run_id").read_text().strip()


def test_a_two_objective_study_of_real_trials_compares_with_a_pareto_front(quick, tmp_path):
    repo = prepared_copy(quick, tmp_path / "repo", {})
    base = yaml.safe_load((repo / "params.yaml").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="rd", storage=storage, directions=["minimize", "minimize"])
    for params in TRIALS:
        study.enqueue_trial(params)
        trial = study.ask(SPACE)
        run_id = train(repo, base, trial.params)
        client.set_tag(run_id, "vaepipe.study", "rd")
        client.set_tag(run_id, "vaepipe.trial", str(trial.number))
        client.set_tag(run_id, "vaepipe.dvc_experiment", f"rd-{trial.number}")
        trial.set_user_attr("dvc_experiment", f"rd-{trial.number}")
        trial.set_user_attr("mlflow_run_id", run_id)
        metrics = client.get_run(run_id).data.metrics
        study.tell(trial, [metrics["val_recon"], metrics["val_kl"]])
    best = sorted(trial.number for trial in study.best_trials)
    # The final run of the first Pareto-optimal trial: its params trained again, then evaluated.
    final_id = train(repo, base, study.trials[best[0]].params)
    result = run_stage(repo, "evaluate", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for key, value in {"vaepipe.study": "rd", "vaepipe.trial": str(best[0]), "vaepipe.final": "true"}.items():
        client.set_tag(final_id, key, value)

    out = tmp_path / "reports"
    compare = subprocess.run([str(VENV_BIN / "python"), "-m", "vaepipe.compare", "--study", "rd", "--storage", storage,
                              "--out", str(out)], cwd=repo, env=stage_env(PYTHONPATH="src"), capture_output=True,
                             text=True, timeout=300)
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert "ExperimentalWarning" not in compare.stderr
    with (out / "compare.csv").open() as handle:
        assert [row["run_id"] for row in csv.DictReader(handle)] == [final_id]
    with (out / "compare_train_only.csv").open() as handle:
        assert sorted(row["trial"] for row in csv.DictReader(handle)) == ["0", "1", "2"]
    with (out / "study_trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    # The objectives are named by the train stage's metrics they equal; the final run is listed.
    assert list(trials[0])[2:4] == ["val_recon", "val_kl"] and len(trials) == 3
    assert trials[best[0]]["final run"] and all(row["state"] == "COMPLETE" for row in trials)
    # The Pareto front: the three trials as points on the rate-distortion plane, the non-dominated joined.
    joined = len(best) if len(best) >= 2 else 0
    assert Image.open(out / "study_pareto_front.png").text["Description"] == f"points={3 + joined}"
    figures = ["val_loss_curves.png", "study_history_val_recon.png", "study_history_val_kl.png",
               "study_importances.png", "study_pareto_front.png"]
    page_html = (out / "compare.html").read_text()
    assert set(figures) <= set(re.findall(r'<img alt="([^"]+)"', page_html))

    with offline_page(out / "compare.html", tmp_path) as page:
        loaded = page.evaluate("Object.fromEntries([...document.images].map(image => "
                               "[image.alt, image.complete ? image.naturalWidth : 0]))")
        assert set(figures) <= set(loaded) and all(width > 0 for width in loaded.values()), loaded
        tables = page.locator("table")
        assert tables.count() == 3  # ranked (the final run), train-only (the trials), the study's trials
        assert [tables.nth(i).locator("tbody tr").count() for i in range(3)] == [1, 3, 3]
