"""Everything that talks to MLflow: where the store is, one run per pipeline run, reopening it by id.

Store: `MLFLOW_TRACKING_URI` if set (e.g. a team's `mlflow server`), else `mlflow.db` (SQLite) with
artifacts in `mlartifacts/`, both at the *main* repository root, also when DVC runs a queued
experiment in a temporary copy (which is deleted afterwards, and would take relative paths with it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Fail fast against an unreachable server instead of MLflow's default ~4 minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

import mlflow  # noqa: E402
from mlflow.entities import RunStatus  # noqa: E402

from vaepipe.errors import TrackingError, deferred_signals  # noqa: E402
from vaepipe.paths import main_repo_root  # noqa: E402

EXPERIMENT_NAME = os.environ.get("VAEPIPE_EXPERIMENT", "vaepipe")
REGISTERED_MODEL = "vaepipe-vae"
HEALTH_TIMEOUT_S = 5


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{main_repo_root() / 'mlflow.db'}"


def artifact_location() -> str | None:
    """Local stores get an explicit artifact root at the main repo; a server decides its own."""
    if tracking_uri().startswith(("http://", "https://")):
        return None
    return (main_repo_root() / "mlartifacts").as_uri()


def check_reachable(uri: str) -> None:
    """Raise TrackingError at once if an HTTP tracking server does not answer /health."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise TrackingError(
        f"MLflow tracking server {uri} is unreachable ({problem}); start it (`make server`) "
        "or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
    )


def connect() -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id."""
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_location())
        except mlflow.exceptions.MlflowException:
            # Another pipeline (a parallel queued experiment) created it first.
            return mlflow.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow store {uri}: {error}") from None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_tags(dataset_sha256: str) -> dict[str, str]:
    """Tags that link an MLflow run to its DVC experiment, code and data."""
    tags = {
        "mlflow.source.git.commit": _git("rev-parse", "HEAD"),
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "data.sha256": dataset_sha256,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
    }
    return {key: value for key, value in tags.items() if value}


def start_or_resume_run(run_id: str | None, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
    """Start a new run (or continue `run_id` after an interruption) and log params and tags."""
    experiment_id = connect()
    try:
        if run_id:
            try:
                run = mlflow.start_run(run_id=run_id)
            except mlflow.exceptions.MlflowException:
                run_id = None  # the old run is gone (e.g. a fresh store): start anew
        if not run_id:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
            mlflow.log_params({key: _param_value(value) for key, value in params.items()})
        mlflow.set_tags(tags)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow store {tracking_uri()}: {error}") from None
    return run.info.run_id


def _param_value(value: Any) -> str:
    return "null" if value is None else str(value)


def end_run(error: BaseException | None) -> None:
    """Close the active run: FINISHED, or KILLED for Ctrl-C / SIGTERM, FAILED for anything else."""
    if mlflow.active_run() is None:
        return
    if error is None:
        status = RunStatus.FINISHED
    elif isinstance(error, (KeyboardInterrupt, SystemExit)) and not _is_clean_exit(error):
        status = RunStatus.KILLED
    else:
        status = RunStatus.FAILED
    run_id = mlflow.active_run().info.run_id
    with deferred_signals():  # a second Ctrl-C must not leave the run RUNNING
        for attempt in range(3):
            try:
                if mlflow.active_run() is not None:
                    mlflow.end_run(RunStatus.to_string(status))  # pops the run, then writes the status
                else:  # a failed end_run already popped it: retry the write alone
                    mlflow.MlflowClient().set_terminated(run_id, RunStatus.to_string(status))
                return
            except mlflow.exceptions.MlflowException as store_error:  # e.g. SQLite "database is locked"
                if attempt < 2:
                    time.sleep(1.0)
                    continue
                message = (f"could not mark MLflow run {run_id} {RunStatus.to_string(status)} in "
                           f"{tracking_uri()} (store gone or read-only?): {store_error}")
                if error is not None:  # keep the stage's own error as the one reported
                    print(f"warning: {message}", file=sys.stderr, flush=True)
                    return
                raise TrackingError(message) from None


def _is_clean_exit(error: BaseException) -> bool:
    return isinstance(error, SystemExit) and error.code in (0, None)


@contextmanager
def active_run(run_id: str | None = None, start: dict[str, Any] | None = None) -> Iterator[str]:
    """Reopen run `run_id` (evaluate, plot) or start one (train, with `start` = kwargs of
    start_or_resume_run); whatever happens inside, the run does not stay RUNNING."""
    if start is not None:
        run_id = start_or_resume_run(run_id, **start)
    else:
        connect()
        try:
            mlflow.start_run(run_id=run_id)
        except mlflow.exceptions.MlflowException as error:
            raise TrackingError(f"cannot reopen MLflow run {run_id} in {tracking_uri()}: {error}") from None
    try:
        yield run_id
    except BaseException as error:
        end_run(error)
        raise
    end_run(None)


def close_abandoned_run(run_id_file: Path, status: str, reason: str) -> None:
    """Mark the run in `run_id_file` as `status` if it is still RUNNING.

    For the multi-worker launcher: a chief blocked in a collective with a dead worker cannot close
    its own run before it is killed, so its parent does it. The next `dvc repro` resumes that run.
    """
    if not run_id_file.exists():
        return  # the chief died before it started a run
    run_id = run_id_file.read_text().strip()
    try:
        client = mlflow.MlflowClient(tracking_uri())
        if client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            client.set_tag(run_id, "vaepipe.stopped_because", reason[:4000])
            client.set_terminated(run_id, status)
    except mlflow.exceptions.MlflowException as error:
        print(f"warning: could not mark MLflow run {run_id} {status}: {error}", file=sys.stderr, flush=True)


def read_run_id(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise TrackingError(f"{path}: no MLflow run id; run `dvc repro train` first") from None


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    # A Ctrl-C inside an SQLite write would leave the store locked for the KILLED status update.
    with deferred_signals():
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    with deferred_signals():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_model(model_file: Path, register: bool = True) -> None:
    """Log the saved .keras file as an MLflow pyfunc model ("models from code": nothing pickled).

    `vaepipe/serving.py` is the model's code; the .keras file is its artifact; the vaepipe package
    travels with it so `mlflow models serve` can load the registered custom layers.
    """
    package_dir = Path(__file__).resolve().parent
    try:
        mlflow.pyfunc.log_model(
            name="model",
            python_model=str(package_dir / "serving.py"),
            artifacts={"keras_model": str(model_file)},
            code_paths=[str(package_dir)],
            pip_requirements=_serving_requirements(),
            registered_model_name=REGISTERED_MODEL if register else None,
        )
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"cannot log the model to {tracking_uri()}: {error}") from None


def _serving_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("tensorflow-cpu", "keras", "numpy", "pandas")]


def print_run_link(run_id: str) -> None:
    print(f"mlflow: run {run_id} in {tracking_uri()} (experiment {EXPERIMENT_NAME})", file=sys.stderr)


def run_name(params) -> str:
    """A readable run name: the DVC experiment's name when there is one, else the arch and latent size."""
    exp = os.environ.get("DVC_EXP_NAME")
    base = f"{params.model.arch}-z{params.model.latent_dim}"
    return f"{exp} ({base})" if exp else base
