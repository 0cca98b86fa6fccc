"""What the MLflow UI shows of the experiment and of a run: the experiment's kind and description, the
prepared datasets as run inputs (the Dataset column), a one-line description, the sweep and study tags.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow

EXPERIMENT_TAGS = {
    # MLflow 3's UI shows an experiment of this kind in its model-training view, not the GenAI one.
    "mlflow.experimentKind": "custom_model_development",
    "mlflow.note.content": "Variational autoencoders on MNIST-style images: one run per vaepipe pipeline run "
                           "(DVC: prepare -> train -> evaluate -> plot). `make compare` tabulates the finished runs.",
}
SYSTEM_METRICS_INTERVAL_S = 2.0  # CPU and memory every 2 s: a run of under a minute still gets a curve
SWEEP_TAG = "vaepipe.sweep"
# A search's runs (docs/search.md): the study, the trial number, the trial's DVC experiment; a pruned trial's
# run gets PRUNED_TAG = "true" (and ends FINISHED), a chosen trial's full run FINAL_TAG = "true".
STUDY_TAG, TRIAL_TAG, DVC_EXPERIMENT_TAG = "vaepipe.study", "vaepipe.trial", "vaepipe.dvc_experiment"
PRUNED_TAG, FINAL_TAG = "vaepipe.pruned", "vaepipe.final"
DESCRIPTION_TAG = "mlflow.note.content"
SPLIT_CONTEXTS = {"train": "training", "validation": "validation", "test": "test"}  # meta.json key -> context
# The input tag that names a dataset's context: documented as the key `mlflow.log_input(context=...)` sets
# (tests/test_tracking_ui.py checks it against that public call); MLflow's own constant is internal.
DATASET_CONTEXT_TAG = "mlflow.data.context"
DIGEST_CHARS = 16  # MLflow caps a dataset digest at 36 characters: the sha256's first 16 hex digits


def describe_experiment(experiment) -> None:
    """Give an experiment created before these tags existed the ones it lacks (a user's own stay)."""
    client = mlflow.MlflowClient()
    for key, value in EXPERIMENT_TAGS.items():
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)


def read_prepared_meta(meta_file: Path | None = None) -> dict[str, Any]:
    """prepared.read_meta(), or {} when absent or unreadable: the run goes on without its inputs."""
    from vaepipe.errors import DataError
    from vaepipe.prepared import read_meta

    try:
        return read_meta(meta_file)
    except DataError:
        return {}


def prepared_datasets(meta: dict[str, Any]) -> list[tuple[Any, str]]:
    """(MLflow dataset entity, context) for each prepared split in meta.json: train, validation (when
    there is one) and test, named after the dataset, with the arrays' sha256 as digest."""
    import json

    from mlflow.entities import Dataset

    datasets = []
    for split, context in SPLIT_CONTEXTS.items():
        sha256 = meta.get("sha256", {}).get(split)
        if not sha256:
            continue
        profile = {"num_rows": meta.get(f"n_{split}"), "sha256": sha256, "file": f"data/prepared/{split}.npz"}
        datasets.append((Dataset(
            name=str(meta.get("dataset", "dataset")), digest=sha256[:DIGEST_CHARS],
            # "external" with a url: the UI shows it as the source; here it is what prepare recorded.
            source_type="external", source=json.dumps({"url": str(meta.get("source", "unknown"))}),
            profile=json.dumps(profile)), context))
    return datasets


def log_prepared_inputs(meta_file: Path | None = None) -> None:
    """Log the prepared splits as the active run's inputs (the UI's Dataset column and filter)."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = [DatasetInput(dataset, tags=[InputTag(DATASET_CONTEXT_TAG, context)])
              for dataset, context in prepared_datasets(read_prepared_meta(meta_file))]
    if inputs:
        mlflow.MlflowClient().log_inputs(mlflow.active_run().info.run_id, datasets=inputs)


def run_description_tags(params: dict[str, Any], meta_file: Path | None = None) -> dict[str, str]:
    """The run's one-line description (dataset, arch, latent size, DVC experiment) and its sweep tag."""
    dataset = read_prepared_meta(meta_file).get("dataset") or params.get("data.dataset", "?")
    experiment = os.environ.get("DVC_EXP_NAME") or "none (dvc repro in the workspace)"
    sweep = str(params.get("tracking.sweep") or "")
    description = (f"{dataset} VAE, arch {params.get('model.arch', '?')}, latent_dim {params.get('model.latent_dim', '?')}, "
                   f"beta {params.get('train.beta', '?')}, DVC experiment {experiment}"
                   + (f", sweep {sweep}" if sweep else ""))
    return {DESCRIPTION_TAG: description, **({SWEEP_TAG: sweep} if sweep else {}), **study_tags(params)}


def study_tags(params: dict[str, Any]) -> dict[str, str]:
    """The tags of a search's trial (or of a chosen trial's final run); none for any other run."""
    study, trial = str(params.get("tune.study") or ""), params.get("tune.trial", -1)
    if not study or trial is None or int(trial) < 0:
        return {}
    tags = {STUDY_TAG: study, TRIAL_TAG: str(int(trial))}
    if os.environ.get("DVC_EXP_NAME"):
        tags[DVC_EXPERIMENT_TAG] = os.environ["DVC_EXP_NAME"]
    if params.get("tune.final"):
        tags[FINAL_TAG] = "true"
    return tags
