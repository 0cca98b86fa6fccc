"""Which registered version of vaepipe-vae a model URI means, and the `champion` alias.

Every pipeline run registers a new version (model_logging), queued, sweep and tuning runs included, so
`latest` is whichever run finished last. What `make serve` serves is chosen instead: the workspace's
run (models/mlflow_run_id), a model URI, or the alias that `make promote` alone moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow

from vaepipe.errors import TrackingError
from vaepipe.tracking.model_logging import REGISTERED_MODEL
from vaepipe.tracking.store import check_reachable, shown_uri, tracking_uri

CHAMPION = "champion"


@dataclass(frozen=True)
class ServedModel:
    """What `mlflow models serve` is given (`uri`), and what it is, for the line make serve prints."""

    uri: str
    version: str | None  # the registered version of vaepipe-vae it is, None: not a registered version
    run_id: str | None


def _client() -> mlflow.MlflowClient:
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient()


def _store_error(what: str, error: Exception) -> TrackingError:
    return TrackingError(f"MLflow store {shown_uri()}: {what}: {(str(error).splitlines() or [''])[0]}")


def version_of_run(run_id: str, client: mlflow.MlflowClient | None = None) -> str | None:
    """The newest registered version of vaepipe-vae logged by run `run_id` (None: the run has none)."""
    client = client or _client()
    try:
        versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException as error:
        raise _store_error(f"looking up the model version of run {run_id}", error) from None
    return str(max(int(v.version) for v in versions)) if versions else None


def workspace_model(run_id: str) -> ServedModel:
    """The registered version that the workspace's run (models/mlflow_run_id) logged."""
    version = version_of_run(run_id)
    if version is None:
        raise TrackingError(f"run {run_id} (models/mlflow_run_id) has no registered version of {REGISTERED_MODEL} "
                            f"in {shown_uri()}; run `dvc repro` here, or pass MODEL=models:/{REGISTERED_MODEL}/N")
    return ServedModel(f"models:/{REGISTERED_MODEL}/{version}", version, run_id)


def resolve_model(uri: str) -> ServedModel:
    """A model URI as MLflow takes it. A registered model's alias, `latest` or version is pinned to that
    version's number, so what is served is what was printed even if the alias moves meanwhile; any other
    URI (runs:/..., a path) is served as given, with the version its run registered, if any."""
    client = _client()
    if uri.startswith("models:/"):
        try:
            found = _model_version(client, uri)
            if found is None:  # models:/<logged model id>
                return ServedModel(uri, None, client.get_logged_model(uri.removeprefix("models:/")).source_run_id)
        except mlflow.exceptions.MlflowException as error:
            raise _store_error(f"MODEL={uri}", error) from None
        name = found.name
        if name != REGISTERED_MODEL:
            return ServedModel(f"models:/{name}/{found.version}", None, found.run_id)
        return ServedModel(f"models:/{name}/{found.version}", str(found.version), found.run_id)
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
        return ServedModel(uri, version_of_run(run_id, client), run_id)
    return ServedModel(uri, None, None)


def _model_version(client: mlflow.MlflowClient, uri: str):
    """The registered ModelVersion a models:/ URI names (MLflow's documented forms: models:/<name>/<version>,
    models:/<name>/latest, models:/<name>@<alias>), or None for models:/<logged model id>. Parsed here and
    looked up through MlflowClient: MLflow's own resolver is internal (mlflow.store)."""
    path = uri.removeprefix("models:/")
    if "@" in path:
        name, alias = path.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    if "/" not in path:
        return None
    name, reference = path.split("/", 1)
    if reference.isdigit():
        return client.get_model_version(name, reference)
    if reference.lower() == "latest":
        if "'" in name:
            raise TrackingError(f"MODEL={uri}: a model name with a quote cannot be searched; name its version")
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise TrackingError(f"MODEL={uri}: registered model {name} has no versions in {shown_uri()}")
        return max(versions, key=lambda version: int(version.version))
    raise TrackingError(f"MODEL={uri}: {reference!r} is not a version number, `latest` or @alias (model stages "
                        "are deprecated in MLflow: use an alias)")


def champion_version(client: mlflow.MlflowClient | None = None) -> str | None:
    """The version the `champion` alias points at (None: no such alias, or no registered model yet)."""
    client = client or _client()
    try:
        return str(client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise _store_error(f"reading the alias {CHAMPION}", error) from None


def promote(run_id: str) -> tuple[str | None, str]:
    """Point `champion` at the version that run `run_id` registered: (the version before, or None; the new)."""
    client = _client()
    version = version_of_run(run_id, client)
    if version is None:
        raise TrackingError(f"run {run_id} has no registered version of {REGISTERED_MODEL} in {shown_uri()} "
                            "(a train-only trial's run logs no model)")
    before = champion_version(client)
    try:
        client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, version)
    except mlflow.exceptions.MlflowException as error:
        raise _store_error(f"setting the alias {CHAMPION} to version {version}", error) from None
    return before, version


def runs_tagged_with_experiment(name: str) -> list[str]:
    """Ids of the runs whose DVC experiment (tag dvc.exp_name, set by queued and `dvc exp run` runs) is `name`."""
    client = _client()
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, f"tags.`dvc.exp_name` = '{name}'", max_results=100) if experiments else []
    except mlflow.exceptions.MlflowException as error:
        raise _store_error(f"searching the runs of DVC experiment {name}", error) from None
    return [run.info.run_id for run in runs]


def run_exists(run_id: str) -> bool:
    try:
        _client().get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise _store_error(f"reading run {run_id}", error) from None
    return True
