"""Resume reopens the checkpoint's run or fails: only "the run does not exist" opens a new run. A real
SQLite store whose run is missing, and a real local HTTP server standing in for a tracking server
that answers 5xx to reading the run (every other call it answers as MLflow does)."""

from __future__ import annotations

import json

import local_http
import mlflow
import pytest

from vaepipe import tracking
from vaepipe.config import flat_params, parse_params
from vaepipe.errors import TrackingError

PARAMS = flat_params(parse_params({}))


@pytest.fixture(autouse=True)
def no_active_run():
    yield
    if mlflow.active_run():
        mlflow.end_run()


def test_a_run_missing_from_the_store_gets_a_new_run(tmp_path, monkeypatch, capsys, new_mlflow_db):
    new_mlflow_db(tmp_path / "mlflow.db")  # an empty store, as MLflow creates one
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    missing = "0123456789abcdef0123456789abcdef"
    run_id = tracking.start_or_resume_run(missing, "r", PARAMS, {})
    tracking.end_run(None)
    assert run_id != missing
    assert mlflow.MlflowClient().get_run(run_id).info.status == "FINISHED"


def fake_tracking_server(code: int):
    """/health, the experiment and its tags as MLflow answers them (no basic auth: users/current is 404);
    runs/get answered `code`."""
    def answer(handler, _body):
        path = handler.path.split("?")[0]
        if path == "/health":
            local_http.respond(handler, 200, b"OK", "text/plain")
        elif path.endswith("/experiments/get-by-name"):
            experiment = {"experiment_id": "1", "name": tracking.EXPERIMENT_NAME, "lifecycle_stage": "active",
                          "tags": [{"key": key, "value": value} for key, value in tracking.details.EXPERIMENT_TAGS.items()]}
            local_http.respond(handler, 200, json.dumps({"experiment": experiment}).encode(), "application/json")
        elif path.endswith("/users/current"):  # MLflow without basic auth has no such endpoint
            local_http.respond(handler, 404, b"<!doctype html><title>404 Not Found</title>", "text/html")
        elif path.endswith("/runs/get"):
            local_http.respond(handler, code, json.dumps({"error_code": "INTERNAL_ERROR", "message": "boom"}).encode(),
                               "application/json")
        else:  # runs/create and the rest: what the old code went on to call
            local_http.respond(handler, 500, b"{}", "application/json")
    return answer


@pytest.mark.parametrize("code", [503, 500])
def test_a_store_error_while_reopening_fails_with_one_line_and_opens_no_second_run(monkeypatch, code):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    run_id = "fedcba9876543210fedcba9876543210"
    with local_http.serve(fake_tracking_server(code)) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        with pytest.raises(TrackingError) as raised:
            tracking.start_or_resume_run(run_id, "r", PARAMS, {})
    message = str(raised.value)
    assert "\n" not in message and raised.value.exit_code == 4
    assert message.startswith(f"cannot reopen MLflow run {run_id} in {server.url} to resume its checkpoint: ")
    assert message.endswith("no new run opened (the next `dvc repro` tries again)")
    paths = [path.split("?")[0] for _, path, _ in server.requests]
    assert paths.count("/api/2.0/mlflow/runs/get") == 2  # MLflow's one retry within the budget
    assert not any(path.endswith("/runs/create") for path in paths)
    assert mlflow.active_run() is None


