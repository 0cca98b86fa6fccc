"""Artifact uploads answered with an HTTP error are store errors: a status a retry may cure is retried
within the retry budget (MLflow's own retries for 503 and its kin, vaepipe's for other 5xx), then the
stage fails with one line naming the server, the status and the artifact; 413 fails at once. A real
SQLite store whose experiment keeps its artifacts on a real local HTTP server (MLflow's http artifact
repository, the same upload a `mlflow server` with proxied artifacts gets)."""

from __future__ import annotations

import local_http
import mlflow
import pytest

from vaepipe import tracking
from vaepipe.errors import TrackingError
from vaepipe.tracking import store


@pytest.fixture
def artifact_run(tmp_path, monkeypatch, new_mlflow_db):
    """Start a run whose artifacts go to `server`; a short budget: 2 retries, waits 0 and 2 s."""
    new_mlflow_db(tmp_path / "mlflow.db")  # the session's empty store, copied (MLflow's migrations take seconds)
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


# ---------------------------------------------------------------- the tracking server's outages and logins
# Classified by the type of the requests exception behind MLflow's error and by the HTTP status, against a
# real local HTTP server standing in for `mlflow server`; retries immediate (backoff factor 0).


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


def store_call_error(monkeypatch, url: str) -> TrackingError:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(TrackingError) as raised, store.store_call("reading experiment 1"):
        mlflow.MlflowClient(url).get_experiment("1")
    return raised.value


def test_a_tracking_server_answering_503_to_every_try_is_unavailable(quick_retries, monkeypatch):
    with local_http.serve(local_http.status(503, b"busy")) as server:
        error = store_call_error(monkeypatch, server.url)
    assert isinstance(error, tracking.TrackingUnavailable)
    assert str(error) == (f"MLflow tracking server {server.url} answered HTTP 503 to every try while reading "
                          "experiment 1 (0 s of retries)")
    assert len(server.requests) == 3


@pytest.mark.parametrize("answer", [local_http.cut_off, local_http.garbage_status, local_http.stall(5)])
def test_a_tracking_server_that_gives_no_answer_stopped_answering(quick_retries, monkeypatch, answer):
    with local_http.serve(answer) as server:
        error = store_call_error(monkeypatch, server.url)
    assert isinstance(error, tracking.TrackingUnavailable)
    assert str(error).startswith(f"MLflow tracking server {server.url} stopped answering while reading experiment 1")


def test_a_tracking_server_that_is_gone_stopped_answering(quick_retries, monkeypatch):
    with local_http.serve(local_http.status(200)) as server:
        url = server.url  # closed when the block ends: nothing listens there any more
    error = store_call_error(monkeypatch, url)
    assert isinstance(error, tracking.TrackingUnavailable) and "stopped answering" in str(error)


def test_a_tracking_servers_refusal_is_a_store_error_not_an_outage(quick_retries, monkeypatch):
    body = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "No Experiment with id=1 exists"}'
    with local_http.serve(lambda handler, _: local_http.respond(handler, 404, body, "application/json")) as server:
        error = store_call_error(monkeypatch, server.url)
    assert not isinstance(error, tracking.TrackingUnavailable)
    assert str(error) == (f"MLflow store {server.url}: reading experiment 1: RESOURCE_DOES_NOT_EXIST: "
                          "No Experiment with id=1 exists")


def login_server(seen: list[str | None], answer_get_by_name: int):
    def answer(handler, _body):
        seen.append(handler.headers.get("Authorization"))
        code = 200 if handler.path == "/health" else answer_get_by_name
        local_http.respond(handler, code, b"{}", "application/json")
    return local_http.serve(answer)


def test_the_login_goes_to_the_server_from_the_environment_and_never_into_the_message(quick_retries, monkeypatch):
    import base64

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-pw")
    seen: list[str | None] = []
    with login_server(seen, 401) as server, pytest.raises(TrackingError) as raised:
        tracking.check_reachable(server.url)
    assert str(raised.value) == (f"MLflow server {server.url} refused user 'alice': wrong password or no such user "
                                 "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
    assert seen == [None, "Basic " + base64.b64encode(b"alice:s3cret-pw").decode()]  # /health, then the API
    with login_server(seen, 403) as server, pytest.raises(TrackingError, match="needs READ permission"):
        tracking.check_reachable(server.url)
    with login_server(seen, 200) as server:
        tracking.check_reachable(server.url)


def test_a_login_check_answered_503_to_every_try_is_one_line(quick_retries, monkeypatch):
    with login_server([], 503) as server, pytest.raises(TrackingError) as raised:
        tracking.check_reachable(server.url)
    assert str(raised.value) == (f"MLflow tracking server {server.url} answered HTTP 503 to every try of "
                                 "/api/2.0/mlflow/experiments/get-by-name (0 s of retries)")
