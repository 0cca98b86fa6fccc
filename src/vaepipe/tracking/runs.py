"""The pipeline's MLflow run: started by train, continued after an interruption, reopened by evaluate
and plot (or linked to, in a store that lacks it), always closed with a status, and what is logged to it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunStatus, RunTag

from vaepipe.errors import TrackingError, deferred_signals, received_signal
from vaepipe.tracking.details import (
    EXPERIMENT_TAGS,
    SYSTEM_METRICS_INTERVAL_S,
    describe_experiment,
    log_prepared_inputs,
    run_description_tags,
)
from vaepipe.tracking.store import (
    EXPERIMENT_NAME,
    TrackingUnavailable,
    artifact_location,
    check_can_log,
    check_reachable,
    is_http,
    local_store_exists,
    retry_budget_s,
    retry_http_errors,
    server_unreachable,
    shown_uri,
    single_try,
    store_call,
    tracking_uri,
)

TRAIN_RUN_TAG = "vaepipe.train_run_id"  # on a run that evaluate/plot opened for a train run this store lacks


def connect(write: bool = True) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id. `write`: the
    user must be allowed to log runs there (a server with logins), checked before anything is written."""
    uri = tracking_uri()
    if write:
        check_can_log()
    else:
        check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    uri = shown_uri()
    try:
        experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is not None:
            describe_experiment(experiment)
            return experiment.experiment_id
        try:
            return mlflow.create_experiment(EXPERIMENT_NAME, artifact_location=artifact_location(),
                                            tags=EXPERIMENT_TAGS)
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


# What a run's numbers depend on, as git tracks it: `git.dirty` is true only when these differ from HEAD.
# Not the outputs a run writes (dvc.lock, metrics.json): a rerun of a clean commit is still clean.
CODE_AND_PARAMS = ("src", "stages", "dvc.yaml", "params.yaml")


def run_tags(dataset_sha256: str) -> dict[str, str]:
    """Tags that link an MLflow run to its DVC experiment, code and data."""
    # A DVC experiment's params differ from HEAD by design, and its commit records them: only code counts there.
    watched = [path for path in CODE_AND_PARAMS if not (path == "params.yaml" and os.environ.get("DVC_EXP_NAME"))]
    tags = {
        "mlflow.source.git.commit": _git("rev-parse", "HEAD"),
        "git.dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no", "--", *watched))).lower(),
        "data.sha256": dataset_sha256,
        "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
    }
    return {key: value for key, value in tags.items() if value}


def start_or_resume_run(run_id: str | None, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
    """Start a new run (or continue `run_id` after an interruption) and log params and tags."""
    experiment_id = connect()
    try:
        mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL_S)
        if run_id:
            run = _reopen_for_resume(run_id)
            if run is None:
                run_id = None  # the old run is not in this store (e.g. a fresh one): start anew
        if not run_id:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, log_system_metrics=True)
            mlflow.log_params({key: _param_value(value) for key, value in params.items()
                               if not key.startswith(("tracking.", "tune."))})  # bookkeeping, tags: not params
            log_prepared_inputs()
        mlflow.set_tags({**tags, **run_description_tags(params)})
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow store {shown_uri()}: {(str(error).splitlines() or [''])[0]}") from None
    return run.info.run_id


def _reopen_for_resume(run_id: str):
    """Reopen the run of the checkpoint train resumes; None only if the store says it does not exist.

    Any other error (a locked SQLite store, a server answering 5xx) is tried again within the retry
    budget (for a server, MLflow's own retries inside the call use it up) and then fails with one
    line: a second run for one checkpoint would split its epochs between two runs.
    """
    deadline = time.monotonic() + retry_budget_s()
    wait = 1.0
    while True:
        try:
            return mlflow.start_run(run_id=run_id, log_system_metrics=True)
        except mlflow.exceptions.MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            if time.monotonic() + wait > deadline:
                raise TrackingError(
                    f"cannot reopen MLflow run {run_id} in {shown_uri()} to resume its checkpoint: "
                    f"{(str(error).splitlines() or [''])[0]}; no new run opened (the next `dvc repro` tries again)"
                ) from None
        time.sleep(wait)
        wait = min(2 * wait, 30.0)


def _param_value(value: Any) -> str:
    return "null" if value is None else str(value)


def end_run(error: BaseException | None) -> None:
    """Close the active run: FINISHED, or KILLED for Ctrl-C / SIGTERM, FAILED for anything else."""
    if mlflow.active_run() is None:
        return
    if error is None:
        status = RunStatus.FINISHED
    elif (isinstance(error, (KeyboardInterrupt, SystemExit)) and not _is_clean_exit(error)
          or received_signal() is not None):  # also a signal that library code turned into another error
        status = RunStatus.KILLED
    else:
        status = RunStatus.FAILED
    run_id = mlflow.active_run().info.run_id
    http = is_http(tracking_uri())
    # SQLite: up to 3 tries ("database is locked"), Ctrl-C held so a second one cannot leave the run
    # RUNNING. HTTP: MLflow retries inside the call for a clean finish; a failing stage makes one
    # quick try (the next `dvc repro` reopens a run left RUNNING anyway).
    attempts = 1 if http else 3
    guard = nullcontext() if http and error is None else deferred_signals()
    with guard, (single_try() if http and error is not None else nullcontext()):
        for attempt in range(attempts):
            try:
                if mlflow.active_run() is not None:
                    mlflow.end_run(RunStatus.to_string(status))  # pops the run, then writes the status
                else:  # a failed end_run already popped it: retry the write alone
                    mlflow.MlflowClient().set_terminated(run_id, RunStatus.to_string(status))
                return
            except mlflow.exceptions.MlflowException as store_error:
                if attempt < attempts - 1:
                    time.sleep(1.0)
                    continue
                if isinstance(error, TrackingUnavailable):
                    return  # the stage's one error line already says the server is gone and the run open
                reason = (str(store_error).splitlines() or [""])[0]
                message = (f"could not mark MLflow run {run_id} {RunStatus.to_string(status)} in "
                           f"{shown_uri()} (store gone or read-only?): {reason}")
                if error is not None:  # keep the stage's own error as the one reported
                    print(f"warning: {message}", file=sys.stderr, flush=True)
                    return
                raise TrackingError(message) from None


def _is_clean_exit(error: BaseException) -> bool:
    return isinstance(error, SystemExit) and error.code in (0, None)


@contextmanager
def active_run(run_id: str | None = None, start: dict[str, Any] | None = None) -> Iterator[str]:
    """Reopen run `run_id` (evaluate, plot) or start one (train, with `start` = kwargs of
    start_or_resume_run); yield the id of the run logged into. Whatever happens inside, the run does
    not stay RUNNING."""
    global _attached_run
    if start is not None:
        run_id = start_or_resume_run(run_id, **start)
    else:
        run_id = _reopen_or_link(run_id)
    if run_id == _attached_run:  # evaluate and plot add to the finished train run, never reopening it
        try:
            yield run_id
        finally:
            _attached_run = None
        return
    try:
        yield run_id
    except BaseException as error:
        end_run(error)
        raise
    end_run(None)


# The finished train run that evaluate or plot logs into, by id, through MlflowClient: its status is
# never touched, so a stage killed mid-way (even by SIGKILL) leaves it FINISHED, as train left it.
_attached_run: str | None = None


def _reopen_or_link(train_run_id: str) -> str:
    """Attach to the train run (logging into it by id, its status untouched). A store without it (a
    second clone, a new server) gets a run linked to it by the tag TRAIN_RUN_TAG instead, one per
    train run: plot continues the run evaluate opened."""
    global _attached_run
    experiment_id = connect()
    try:
        try:
            _attached_run = mlflow.MlflowClient().get_run(train_run_id).info.run_id
            return _attached_run
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        linked = mlflow.search_runs([experiment_id], filter_string=f"tags.`{TRAIN_RUN_TAG}` = '{train_run_id}'",
                                    order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        if linked:
            run = mlflow.start_run(run_id=linked[0].info.run_id)
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=f"linked to train run {train_run_id}",
                                   tags={TRAIN_RUN_TAG: train_run_id, **run_tags("")})
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"cannot reopen MLflow run {train_run_id} in {shown_uri()}: "
                            f"{(str(error).splitlines() or [''])[0]}") from None
    print(f"mlflow: train run {train_run_id} is not in {shown_uri()}; logging to run {run.info.run_id} "
          f"({'opened' if not linked else 'continued'}, tag {TRAIN_RUN_TAG}={train_run_id})",
          file=sys.stderr, flush=True)
    return run.info.run_id


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


KILLED_REASON_TAG = "vaepipe.killed_reason"  # why vaepipe closed a run it did not finish itself


def kill_run_if_running(run_id: str, reason: str) -> str | None:
    """Close run `run_id` as KILLED with the tag KILLED_REASON_TAG = `reason`, if it is still RUNNING.

    For a checkpoint that is removed (vaepipe.train.retention): nothing will ever continue its run.
    Returns the run's status afterwards (KILLED, or the status it already had), None if the store
    does not hold it. A store that cannot be reached or written raises TrackingError with one line,
    after a single try: train calls it before it trains, so a server that is down costs a refused
    connection, not MLflow's retry budget of minutes.
    """
    uri = tracking_uri()
    if not local_store_exists():
        return None  # reading a local store that is not there would create it
    check_reachable(uri)
    try:
        with single_try():
            client = mlflow.MlflowClient(uri)
            try:
                status = client.get_run(run_id).info.status
            except mlflow.exceptions.MlflowException as error:
                if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise
            if status != RunStatus.to_string(RunStatus.RUNNING):
                return status
            client.set_tag(run_id, KILLED_REASON_TAG, reason[:4000])
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow store {shown_uri()}: {(str(error).splitlines() or [''])[0]}") from None
    return RunStatus.to_string(RunStatus.KILLED)


def read_run_id(path: Path) -> str:
    """The MLflow run id train wrote beside its model. Missing, empty or not a run id is an error, never a
    new run: train writes this file last of its outputs, so without it the model beside it has no run."""
    try:
        run_id = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        raise TrackingError(f"{path}: no MLflow run id (train has not finished writing its outputs); "
                            "run `dvc repro train` (or `dvc checkout train` for the previous ones)") from None
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise TrackingError(f"{path}: {run_id[:40]!r} is not an MLflow run id (32 hex digits); "
                            "run `dvc repro train` (or `dvc checkout train` for the previous outputs)")
    return run_id


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    values = {key: float(value) for key, value in metrics.items()}
    with store_call("logging metrics" + (f" of step {step}" if step is not None else "")):
        started = time.monotonic()
        try:
            _log_metrics(values, step)
        except mlflow.exceptions.MlflowException as error:
            # A server killed while answering (after it stored the batch) fails the call at once: a
            # response cut off mid-body is not retried. One more call, with MLflow's whole retry budget,
            # waits for a restarted server; at worst it stores the same values twice. A call that failed
            # only after the budget (the server stayed down) is not repeated.
            if not server_unreachable(error) or time.monotonic() - started > 5:
                raise
            _log_metrics(values, step)


def _log_metrics(values: dict[str, float], step: int | None) -> None:
    if _attached_run is None:
        mlflow.log_metrics(values, step=step)
        return
    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(_attached_run, metrics=[Metric(key, value, now, step or 0)
                                                            for key, value in values.items()])


def set_tags(tags: dict[str, str]) -> None:
    """Tag the active run (e.g. a pruned trial's vaepipe.pruned)."""
    with store_call("setting tags " + ", ".join(tags)):
        if _attached_run is None:
            mlflow.set_tags(tags)
        else:
            mlflow.MlflowClient().log_batch(_attached_run, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    with store_call(f"logging {path.name}"):
        if _attached_run is None:
            retry_http_errors(lambda: mlflow.log_artifact(str(path), artifact_path=artifact_path))
        else:
            retry_http_errors(lambda: mlflow.MlflowClient().log_artifact(_attached_run, str(path), artifact_path))


def log_text(text: str, artifact_file: str) -> None:
    with store_call(f"logging {artifact_file}"):
        if _attached_run is None:
            retry_http_errors(lambda: mlflow.log_text(text, artifact_file))
        else:
            retry_http_errors(lambda: mlflow.MlflowClient().log_text(_attached_run, text, artifact_file))


def print_run_link(run_id: str) -> None:
    print(f"mlflow: run {run_id} in {shown_uri()} (experiment {EXPERIMENT_NAME})", file=sys.stderr)


def run_name(params) -> str:
    """A readable run name: the DVC experiment's name when there is one, else the arch and latent size."""
    exp = os.environ.get("DVC_EXP_NAME")
    base = f"{params.model.arch}-z{params.model.latent_dim}"
    return f"{exp} ({base})" if exp else base
