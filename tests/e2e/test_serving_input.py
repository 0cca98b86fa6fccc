"""The served model refuses input it would answer with garbage: `make serve`'s server (tracking/serve.py:
MLflow's scoring server behind one-line errors), a real process on 127.0.0.1, given the model the baseline's
pipeline registered, answers NaN, infinities, pixel values outside [0, 1], rows of the wrong width and too
many rows with HTTP 400 and a message naming the problem (and nothing of the request), a request without a
Content-Type with 415, and good rows with 200."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest
from pipeline_repo import PROJECT, VENV_BIN, free_port, stage_env, wait_for

from vaepipe.serving import MAX_ROWS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(baseline):
    port = free_port()
    env = stage_env(MLFLOW_TRACKING_URI=f"sqlite:///{baseline.repo / 'mlflow.db'}", PYTHONPATH=str(PROJECT / "src"))
    process = subprocess.Popen([str(VENV_BIN / "python"), "-m", "vaepipe.tracking.serve", "--model=models:/vaepipe-vae/1",
                                "--host=127.0.0.1", f"--port={port}"],
                               cwd=baseline.repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        try:
            return urllib.request.urlopen(f"{url}/ping", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_for(up, timeout=180, what="mlflow models serve to answer /ping")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def post(url: str, rows) -> tuple[int, dict]:
    body = json.dumps({"inputs": rows}, allow_nan=True).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_good_rows_are_answered(server):
    status, answer = post(server, np.full((2, 784), 0.5).tolist())
    assert status == 200, answer
    assert np.asarray(answer["predictions"]["z_mean"]).shape == (2, 2)


@pytest.mark.parametrize("rows, words", [
    ([[float("nan")] + [0.5] * 783], "NaN or infinite values, in rows [0]"),
    ([[0.5] * 784, [float("inf")] * 2], None),  # ragged: not rows of one width
    ([[0.5] * 784, [0.5] * 783 + [1.5]], "must be in [0, 1]; rows [1]"),
    ([[0.5] * 784, [-0.1] * 784], "rows [1] hold values from -0.1"),
    ([[0.1] * 5], "expected rows of 784 pixels or 2 latent values, got shape (1, 5)"),
    ([[float("inf"), 0.0]], "1 NaN or infinite values, in rows [0]"),  # latent rows too
], ids=["nan", "ragged", "above-1", "below-0", "width", "latent-inf"])
def test_bad_rows_are_refused_with_400_naming_the_problem(server, rows, words):
    status, answer = post(server, rows)
    assert status == 400, answer
    assert "bad input" in answer["message"] or words is None
    if words:
        assert words in answer["message"], answer["message"][-500:]


def test_more_rows_than_the_limit_are_refused(server):
    status, answer = post(server, np.zeros((MAX_ROWS + 1, 2)).tolist())  # latent rows: a small request body
    assert status == 400, answer
    assert f"{MAX_ROWS + 1} rows in one request; at most {MAX_ROWS}" in answer["message"]


def test_a_request_without_a_content_type_is_a_415_not_a_500(server):
    import http.client

    port = int(server.rsplit(":", 1)[1])
    body = json.dumps({"inputs": np.full((1, 784), 0.5).tolist()}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("POST", "/invocations", skip_accept_encoding=True)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    answer = connection.getresponse()
    assert answer.status == 415, answer.read()[:3000]
    assert json.loads(answer.read())["message"] == "missing Content-Type header: send application/json (or text/csv)"


def test_a_large_bad_request_is_not_echoed(server):
    """MLflow's own answer began `Failed to predict data '<the request>'`, with the model's input schema in play."""
    rows = np.full((3000, 783), 0.4375).tolist()  # one pixel short: about 16 MB of JSON
    status, answer = post(server, rows)
    assert status == 400, answer
    assert answer == {"error_code": "INVALID_PARAMETER_VALUE", "message": answer["message"]}
    assert "0.4375" not in answer["message"] and len(answer["message"]) <= 303, answer["message"][:500]
