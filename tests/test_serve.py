"""`make serve`'s server (tracking/serve.py) answers every bad request in one line, with a real uvicorn and MLflow's
scoring server on 127.0.0.1, serving a small pyfunc model that checks its rows with vaepipe.serving.check_rows
(the served VAE's own check; tests/e2e/test_serving_input.py serves the real model):
- no Content-Type, or one it does not read: 415 naming application/json, not a 500 with a traceback;
- a 400 names the problem and echoes nothing of the request, however large;
- a port in use: one line naming it (`python -m vaepipe.tracking.serve`, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.pyfunc import PythonModel

from vaepipe.errors import ConfigError
from vaepipe.serving import check_rows
from vaepipe.tracking.serve import app_for, bound_socket, content_type_problem, one_line

SRC = Path(__file__).resolve().parents[1] / "src"


class RowChecker(PythonModel):
    """The served model's input check on rows of 784 pixels or 2 latent values; answers the rows' means."""

    def predict(self, context, model_input, params=None):
        rows = np.asarray(model_input, dtype=np.float32)
        check_rows(rows, 2)
        return {"mean": rows.mean(axis=1)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import mlflow
    import uvicorn

    path = tmp_path_factory.mktemp("model") / "model"
    mlflow.pyfunc.save_model(str(path), python_model=RowChecker())
    sock = bound_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = app_for(mlflow.pyfunc.load_model(str(path)))
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", port
    uvicorn_server.should_exit = True
    thread.join(timeout=30)


def raw_post(port: int, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST with exactly these headers (urllib always adds a Content-Type to a POST)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("POST", "/invocations", skip_accept_encoding=True)
    for name, value in {**headers, "Content-Length": str(len(body))}.items():
        connection.putheader(name, value)
    connection.endheaders(body)
    answer = connection.getresponse()
    return answer.status, answer.read()


def rows_body(rows) -> bytes:
    return json.dumps({"inputs": rows}, allow_nan=True).encode()


def test_good_rows_are_answered(server):
    url, port = server
    status, body = raw_post(port, rows_body([[0.5, 0.25]]), {"Content-Type": "application/json"})
    assert status == 200, body
    assert json.loads(body)["predictions"]["mean"] == [0.375]


def test_a_request_without_a_content_type_is_a_415_naming_the_type(server):
    url, port = server
    status, body = raw_post(port, rows_body([[0.5, 0.25]]), {})
    assert status == 415, body[:3000]
    answer = json.loads(body)
    assert answer == {"error_code": "BAD_REQUEST",
                      "message": "missing Content-Type header: send application/json (or text/csv)"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "image/png"])
def test_a_wrong_content_type_is_a_415_naming_the_expected_type(server, content_type):
    url, port = server
    status, body = raw_post(port, rows_body([[0.5, 0.25]]), {"Content-Type": content_type})
    assert status == 415, body[:3000]
    message = json.loads(body)["message"]
    assert message == f"Content-Type {content_type!r} is not accepted: send application/json (or text/csv)"


MARKER = 0.4375  # printed as is by numpy and pandas: any echo of the request shows it


@pytest.mark.parametrize("payload, message", [
    ({"inputs": [[MARKER] * 5] * 20000}, "bad input: expected rows of 784 pixels or 2 latent values, got shape (20000, 5)"),
    ({"dataframe_split": {"columns": [f"c{i}" for i in range(5)], "data": [[MARKER] * 5] * 20000}},
     "bad input: expected rows of 784 pixels or 2 latent values, got shape (20000, 5)"),
    ({"inputs": [[MARKER] * 784] * 200 + [[MARKER]]}, None),  # ragged: not rows of one width
    ({"inputs": {"a": [MARKER] * 20000}}, None),  # an error of no known kind: MLflow answered its traceback
], ids=["width", "dataframe_split", "ragged", "dict"])
def test_a_400_names_the_problem_without_echoing_the_request(server, payload, message):
    """A large bad request: MLflow's own answer quoted the request back (`Failed to predict data '...'`)
    or carried the server's stack trace."""
    url, port = server
    body = json.dumps(payload).encode()
    assert len(body) > 100_000
    status, answer = raw_post(port, body, {"Content-Type": "application/json"})
    assert status == 400, answer[:3000]
    assert len(answer) < 600, answer[:3000]
    parsed = json.loads(answer)
    assert set(parsed) == {"error_code", "message"}, parsed  # no stack_trace
    assert "\n" not in parsed["message"] and str(MARKER) not in answer.decode() and "Traceback" not in answer.decode()
    if message:
        assert parsed == {"error_code": "INVALID_PARAMETER_VALUE", "message": message}


def test_a_request_that_is_not_json_is_one_line(server):
    url, port = server
    status, answer = raw_post(port, b"{not json " + b"x" * 100_000, {"Content-Type": "application/json"})
    assert status == 400, answer[:3000]
    message = json.loads(answer)["message"]
    assert "\n" not in message and len(message) <= 303 and "xxxxxxxxxx" not in message


def test_the_checks_as_functions():
    assert content_type_problem("application/json; charset=utf-8") is None
    assert content_type_problem("text/csv") is None
    assert content_type_problem(None) == content_type_problem("  ") == \
        "missing Content-Type header: send application/json (or text/csv)"
    code, message = one_line(json.dumps({"error_code": "INVALID_PARAMETER_VALUE",
                                         "message": "Failed to predict data '[[1, 2, 3]]'. \nError: bad input: no",
                                         "stack_trace": "Traceback ..."}).encode())
    assert (code, message) == ("INVALID_PARAMETER_VALUE", "bad input: no")
    assert one_line(b"x" * 5000)[1] == "x" * 300 + "..."


def test_a_port_in_use_is_one_line_naming_it(tmp_path):
    taken = bound_socket("127.0.0.1", 0)
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match=f"^port {port} on 127.0.0.1 is already in use"):
            bound_socket("127.0.0.1", port)
        env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'x.db'}"}
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "vaepipe.tracking.serve", "--model=models:/vaepipe-vae/1",
                                 f"--port={port}"], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.splitlines() == [
            f"error: port {port} on 127.0.0.1 is already in use (another `make serve`, `make ui` or server?); stop it "
            "or choose another port (SERVE_PORT=N for make serve, PORT=N for make server/ui)"], result.stderr[-3000:]
        assert time.monotonic() - started < 60
        assert not (tmp_path / "x.db").exists()  # it stopped before any store was touched
    finally:
        taken.close()


@pytest.mark.parametrize("action", ["server", "ui"])
def test_make_server_and_ui_on_a_port_in_use_stop_in_one_line_naming_it(tmp_path, action):
    taken = bound_socket("127.0.0.1", 0)
    taken.listen()
    port = taken.getsockname()[1]
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    try:
        env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        result = subprocess.run([sys.executable, "-m", "vaepipe.tracking", action, "--host=127.0.0.1", f"--port={port}"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.splitlines() == [f"error: port {port} on 127.0.0.1 is already in use (another `make serve`, "
                                              "`make ui` or server?); stop it or choose another port (SERVE_PORT=N for "
                                              "make serve, PORT=N for make server/ui)"], result.stderr[-3000:]
        assert not (tmp_path / "mlflow.db").exists()
    finally:
        taken.close()
