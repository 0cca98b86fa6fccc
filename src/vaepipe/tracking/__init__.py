"""Everything that talks to MLflow, one idea a module; import the public names from here.

- store: where the store is (MLFLOW_TRACKING_URI or the main repo's mlflow.db), the fail-fast
  check before any work, and MLflow's retries for every later call
- runs: the pipeline's one run: start, continue, reopen (or link), close with a status, log to it
- details: what the UI shows: the experiment's kind, the run's datasets, description and sweep tag
- model_logging: the pyfunc model (from code, no pickles), its requirements, signature and example
  (imported from there by stages/train.py only, which hands log_model to the loop as its after-outputs
  hook: serving.py is run by the train stage, not by evaluate, nor part of training's code)
- aliases: which registered version a model URI or the workspace's run means; `champion`, moved only
  by `make promote` (imported from there, by __main__)
- search: reading runs back for `make compare` (imported from there, so no stage depends on it)
- server: `make server`'s store, artifact destination and logins (VAEPIPE_SERVER_*)
- __main__: `python -m vaepipe.tracking ui|server|serve|promote|store` for the Makefile
"""

from vaepipe.tracking.details import (
    DVC_EXPERIMENT_TAG,
    FINAL_TAG,
    PRUNED_TAG,
    STUDY_TAG,
    SWEEP_TAG,
    SYSTEM_METRICS_INTERVAL_S,
    TRIAL_TAG,
    prepared_datasets,
    run_description_tags,
)
from vaepipe.tracking.runs import (
    KILLED_REASON_TAG,
    TRAIN_RUN_TAG,
    active_run,
    close_abandoned_run,
    connect,
    end_run,
    kill_run_if_running,
    log_artifact,
    log_metrics,
    log_text,
    print_run_link,
    read_run_id,
    run_name,
    run_tags,
    set_tags,
    start_or_resume_run,
)
from vaepipe.tracking.store import (
    EXPERIMENT_NAME,
    TrackingUnavailable,
    artifact_location,
    check_can_log,
    check_reachable,
    experiment_url,
    masked_url,
    retry_budget_s,
    run_url,
    shown_uri,
    tracking_uri,
    ui_base_url,
)

__all__ = [
    "DVC_EXPERIMENT_TAG", "EXPERIMENT_NAME", "FINAL_TAG", "KILLED_REASON_TAG", "PRUNED_TAG", "STUDY_TAG",
    "SWEEP_TAG", "SYSTEM_METRICS_INTERVAL_S", "TRIAL_TAG",
    "TRAIN_RUN_TAG", "TrackingUnavailable", "active_run", "artifact_location", "check_can_log", "check_reachable",
    "close_abandoned_run", "connect", "end_run", "experiment_url", "kill_run_if_running", "log_artifact", "log_metrics",
    "log_text", "masked_url", "prepared_datasets", "print_run_link", "read_run_id", "retry_budget_s",
    "run_description_tags", "run_name", "run_tags", "run_url", "set_tags", "shown_uri",
    "start_or_resume_run", "tracking_uri", "ui_base_url",
]
