"""Artifact uploads answered with an HTTP error are store errors: a status a retry may cure is retried
within the retry budget (MLflow's own retries for 503 and its kin, vaepipe's for other 5xx), then the
stage fails with one line naming the server, the status and the artifact; 413 fails at once. A real
SQLite store whose experiment keeps its artifacts on a real local HTTP server (MLflow's http artifact
repository, the same upload a `mlflow server` with proxied artifacts gets)."""

from __future__ import annotations

import shutil

import local_http
import mlflow
import pytest

from vaepipe import tracking
from vaepipe.errors import TrackingError


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory):
    """An empty SQLite store, made once (MLflow's migrations take seconds) and copied per test."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def artifact_run(tmp_path, monkeypatch, empty_store):
    """Start a run whose artifacts go to `server`; a short budget: 2 retries, waits 0 and 2 s."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    summary = tmp_path / "model_summary.txt"
    summary.write_text("Model: vae\n")

    def start(server):
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
        experiment = mlflow.create_experiment("artifacts", artifact_location=f"{server.url}/api/2.0/mlflow-artifacts/artifacts/1")
        mlflow.start_run(experiment_id=experiment)
        return summary

    yield start
    if mlflow.active_run():
        mlflow.end_run()


def puts(server) -> list[str]:
    return [path for method, path, _ in server.requests if method == "PUT"]


@pytest.mark.parametrize("code, tries, says", [
    (413, 1, "answered HTTP 413 Request Entity Too Large while logging model_summary.txt"),
    (503, 3, "answered HTTP 503 to every try while logging model_summary.txt (2 s of retries)"),
    (507, 3, "answered HTTP 507 Insufficient Storage while logging model_summary.txt (2 s of retries)"),
])
def test_an_artifact_upload_answered_with_an_http_error_fails_with_one_line(artifact_run, code, tries, says):
    with local_http.serve(local_http.status(code, b"<html>\nno\n</html>")) as server:
        summary = artifact_run(server)
        with pytest.raises(TrackingError) as raised:
            tracking.log_artifact(summary)
    resume = f"; once it answers, `dvc repro` continues run {mlflow.active_run().info.run_id}" if code == 503 else ""
    assert str(raised.value) == f"MLflow artifact store {server.url} {says}{resume}"
    assert raised.value.exit_code == 4
    assert len(puts(server)) == tries and puts(server)[0].endswith("/artifacts/model_summary.txt")


@pytest.mark.parametrize("code", [503, 507])
def test_an_artifact_upload_that_fails_twice_then_succeeds_is_stored(artifact_run, code):
    def flaky(handler, body):
        local_http.respond(handler, code if len(server.requests) <= 2 else 200)

    with local_http.serve(flaky) as server:
        tracking.log_artifact(artifact_run(server))
        tracking.log_text("{}", "metrics.json")
    assert [body for _, _, body in server.requests] == [b"Model: vae\n"] * 3 + [b"{}"]
    assert puts(server)[-1].endswith("/artifacts/metrics.json")
