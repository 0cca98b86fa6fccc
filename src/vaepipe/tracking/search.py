"""Reading runs back for `make compare`: every page of a search, as plain Python records."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow

from vaepipe.errors import TrackingError
from vaepipe.tracking.details import SWEEP_TAG
from vaepipe.tracking.store import EXPERIMENT_NAME, check_reachable, local_store_exists, shown_uri, tracking_uri


@dataclass(frozen=True)
class RunRecord:
    """One run as `make compare` needs it, in plain Python types (no MLflow objects leave this module)."""

    run_id: str
    name: str
    status: str
    start_time: int
    experiment_id: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]


SEARCH_PAGE_SIZE = 100  # MLflow pages search results; every page is read
# The search contract's tags (`make tune`): a trial's run, and the full runs of chosen trials (final).
STUDY_TAG = "vaepipe.study"
TRIAL_TAG = "vaepipe.trial"
DVC_EXPERIMENT_TAG = "vaepipe.dvc_experiment"
PRUNED_TAG = "vaepipe.pruned"
FINAL_TAG = "vaepipe.final"


def search_runs(filter_string: str = "", sweep: str | None = None, study: str | None = None) -> list[RunRecord]:
    """Every active run of the experiment matching `filter_string` (MLflow's search syntax), the sweep
    and the study (its trials' runs and its final runs), newest first, whatever its status; all pages
    of the search are read."""
    if not local_store_exists():
        return []
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    clauses = [clause for clause in (filter_string.strip(), sweep and f"tags.`{SWEEP_TAG}` = '{sweep}'",
                                     study and f"tags.`{STUDY_TAG}` = '{study}'") if clause]
    try:
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            return []
        records, token = [], None
        while True:
            page = client.search_runs([experiment.experiment_id], " and ".join(clauses),
                                      max_results=SEARCH_PAGE_SIZE, order_by=["attributes.start_time DESC"],
                                      page_token=token)
            records += [RunRecord(run.info.run_id, run.info.run_name or run.info.run_id, run.info.status,
                                  run.info.start_time or 0, run.info.experiment_id, dict(run.data.params),
                                  dict(run.data.metrics), dict(run.data.tags)) for run in page]
            token = page.token
            if not token:
                return records
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow store {shown_uri()}: cannot search runs ({filter_string=}): {error}") from None


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, by step; a step logged twice (a resumed run) keeps its last value."""
    try:
        history = mlflow.MlflowClient().get_metric_history(run_id, key)
    except mlflow.exceptions.MlflowException as error:
        raise TrackingError(f"MLflow store {shown_uri()}: metric {key} of run {run_id}: {error}") from None
    by_step = {m.step: m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))}
    return sorted(by_step.items())
