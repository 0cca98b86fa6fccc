"""The whole pipeline through real `dvc repro` in a temporary git repo, tracked in a real MLflow store:
outputs, exact reruns, one complete MLflow run per pipeline run, and the logged pyfunc model.

The repo is a copy of the session's `quick` one (tests/e2e/conftest.py: `dvc repro` of QUICK_PARAMS in a
fresh repo, which other modules share), and the rerun after a latent-size change is the session's
`two_runs` build (its `dvc repro` output kept): no pipeline is trained for this module alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from pipeline_repo import QUICK_PARAMS, copy_repo, dvc_repro, mlflow_runs, read_metrics

pytestmark = pytest.mark.e2e

LIMIT, VAL_SIZE = QUICK_PARAMS["data"]["limit"], QUICK_PARAMS["data"]["val_size"]  # 256 images, 64 held out
EPOCHS = QUICK_PARAMS["train"]["epochs"]
FIGURES = {"reconstructions.png", "loss_curves.png", "latent_space.png", "prior_samples.png",
           "interpolation.png", "manifold.png"}


@pytest.fixture(scope="module")
def pipeline(quick, tmp_path_factory) -> Path:
    """This module's copy of the `quick` repo: one `dvc repro` of QUICK_PARAMS, its outputs and its run."""
    return copy_repo(quick, tmp_path_factory.mktemp("pipeline") / "repo")


def mlflow_client(repo: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def test_repro_writes_every_output(pipeline):
    metrics = read_metrics(pipeline)
    for key in ("test_loss", "test_recon", "test_kl", "test_tutorial_loss", "test_nll_iw", "active_units", "knn_accuracy"):
        assert np.isfinite(metrics[key]), key
    assert metrics["test_loss"] == pytest.approx(metrics["test_recon"] + metrics["test_kl"])
    assert metrics["protocol"]["n_test"] == LIMIT and metrics["protocol"]["mc_samples"] == 2
    assert (pipeline / "models/vae.keras").stat().st_size > 0
    log_lines = (pipeline / "train_log.csv").read_text().splitlines()
    assert log_lines[0].split(",")[:2] == ["epoch", "epoch_time"] and len(log_lines) == 1 + EPOCHS
    assert {p.name for p in (pipeline / "plots").glob("*.png")} == FIGURES
    meta = json.loads((pipeline / "data/prepared/meta.json").read_text())
    # The first 256 training images, 64 of them held out for validation; the first 256 test images.
    assert meta["source"].startswith("pypi:")
    assert (meta["n_train"], meta["n_validation"], meta["n_test"]) == (LIMIT - VAL_SIZE, VAL_SIZE, LIMIT)
    assert {p.name for p in (pipeline / "data/prepared").glob("*.npz")} == {"train.npz", "validation.npz", "test.npz"}
    # Train validated on the validation split: val_* in the log are its numbers, not the test set's.
    header = log_lines[0].split(",")
    assert {"val_loss", "val_recon", "val_kl"} <= set(header)


def test_saved_model_loads_safely_and_matches_the_metrics(pipeline):
    from vaepipe.model import load_vae

    vae = load_vae(pipeline / "models/vae.keras")
    images = np.load(pipeline / "data/prepared/test.npz")["images"][:8].astype(np.float32) / 255
    z_mean, _ = vae.encoder(images)
    assert np.asarray(z_mean).shape == (8, 2)


def test_one_finished_run_holds_params_histories_metrics_and_figures(pipeline):
    client = mlflow_client(pipeline)
    runs = mlflow_runs(pipeline)
    assert [status for _, status in runs] == ["FINISHED"]
    run = client.get_run(runs[0][0])
    params = yaml.safe_load((pipeline / "params.yaml").read_text())
    expected = {f"{section}.{key}": value for section, values in params.items() for key, value in values.items()
                if section not in ("tracking", "tune")}  # bookkeeping (sweep, study, trial): tags, not params
    assert set(run.data.params) == set(expected)
    assert "tracking.sweep" not in run.data.params and "mlflow.note.content" in run.data.tags
    assert run.data.params["train.epochs"] == str(EPOCHS) and run.data.params["data.limit"] == str(LIMIT)
    for key in ("loss", "recon", "kl", "val_loss", "val_recon", "val_kl", "epoch_time"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
    metrics = read_metrics(pipeline)
    assert "mlflow_run_id" not in metrics  # metrics only: the run is models/mlflow_run_id
    assert (pipeline / "models/mlflow_run_id").read_text().strip() == run.info.run_id
    assert run.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"])
    assert run.data.metrics["knn_accuracy"] == pytest.approx(metrics["knn_accuracy"])
    plots = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == FIGURES
    meta = json.loads((pipeline / "data/prepared/meta.json").read_text())
    assert run.data.tags["data.sha256"] == meta["sha256"]["train"]
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40
    # Artifacts live at the repository root's mlartifacts/, not in a working directory.
    assert any((pipeline / "mlartifacts").rglob("reconstructions.png"))


def test_logged_pyfunc_model_gives_the_keras_models_outputs(pipeline):
    import mlflow

    from vaepipe.model import load_vae

    mlflow.set_tracking_uri(f"sqlite:///{pipeline / 'mlflow.db'}")
    versions = mlflow_client(pipeline).search_model_versions("name='vaepipe-vae'")
    version = max(versions, key=lambda v: int(v.version))
    assert version.run_id == (pipeline / "models/mlflow_run_id").read_text().strip()
    served = mlflow.pyfunc.load_model(f"models:/vaepipe-vae/{version.version}")
    vae = load_vae(pipeline / "models/vae.keras")
    images = np.load(pipeline / "data/prepared/test.npz")["images"][:5].astype(np.float32) / 255
    out = served.predict(images)
    z_mean = np.asarray(vae.encoder(images)[0])
    np.testing.assert_allclose(out["z_mean"], z_mean, rtol=1e-5, atol=1e-6)
    expected = 1 / (1 + np.exp(-np.asarray(vae.decoder(z_mean), dtype=np.float64)))
    np.testing.assert_allclose(out["reconstruction"], expected, rtol=1e-4, atol=1e-6)
    decoded = served.predict(z_mean)["image"]
    np.testing.assert_allclose(decoded, expected, rtol=1e-4, atol=1e-6)
    # Nothing pickled: the model directory holds the code file and the .keras artifact only.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/vaepipe-vae/{version.version}"))
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pickle"))


def test_second_repro_reruns_nothing(pipeline):
    before = mlflow_runs(pipeline)
    result = dvc_repro(pipeline)
    assert result.returncode == 0
    assert "Running stage" not in result.stdout, result.stdout
    assert mlflow_runs(pipeline) == before


def test_changing_latent_dim_reruns_train_evaluate_plot_but_not_prepare(two_runs):
    # two_runs: a copy of the quick repo (latent_dim 2), then latent_dim 3 in params.yaml and `dvc repro`.
    assert yaml.safe_load((two_runs.repo / "params.yaml").read_text())["model"]["latent_dim"] == 3
    result = two_runs.repro
    assert result.returncode == 0, result.stderr[-3000:]
    ran = {stage for stage in ("prepare", "train", "evaluate", "plot") if f"Running stage '{stage}'" in result.stdout}
    assert ran == {"train", "evaluate", "plot"}, result.stdout
    runs = mlflow_runs(two_runs.repo)
    assert len(runs) == 2 and all(status == "FINISHED" for _, status in runs)
    # The 2-D manifold figure exists only for latent_dim == 2; the plot stage removed the old one.
    assert {p.name for p in (two_runs.repo / "plots").glob("*.png")} == FIGURES - {"manifold.png"}
