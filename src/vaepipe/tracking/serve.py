"""`make serve`'s HTTP server: MLflow's scoring server (`mlflow.pyfunc.scoring_server.init`, what `mlflow
models serve` runs) for the pyfunc model, behind a thin ASGI layer that keeps every failure to one line:

- POST /invocations without a Content-Type, or with one the scoring server does not read, is answered
  415 naming the types it takes (MLflow's own server answered a missing header with a 500 and its traceback);
- any error answer (4xx, 5xx) is `{"error_code": ..., "message": <one line>}`: no stack trace, and no echo of
  the request (MLflow prefixes a model's error with `Failed to predict data '<the whole request>'`);
- a port in use is one line naming it, before the model is loaded; a model that cannot be loaded is one line.

`python -m vaepipe.tracking.serve --model URI --host H --port P`; tracking/__main__.py checks MODEL= first.
"""

from __future__ import annotations

import argparse
import errno
import json
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from vaepipe.errors import ConfigError, TrackingError, VaepipeError

MAX_MESSAGE = 300  # characters of an error message: a problem, never a request
ACCEPTED = ("application/json", "text/csv", "application/vnd.apache.parquet")  # MLflow's CONTENT_TYPES

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def content_type_problem(value: str | None) -> str | None:
    """Why a request with this Content-Type header cannot be read (None: it can)."""
    expected = "send application/json (or text/csv)"
    if not value or not value.strip():
        return f"missing Content-Type header: {expected}"
    mime = value.split(";", 1)[0].strip().lower()
    if mime not in ACCEPTED:
        shown = value if len(value) <= 80 else value[:80] + "..."
        return f"Content-Type {shown!r} is not accepted: {expected}"
    return None


def one_line(body: bytes) -> tuple[str, str]:
    """(error code, message) of an error answer's body, the message one line without the request in it."""
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if isinstance(answer, dict):
        code, message = str(answer.get("error_code") or "BAD_REQUEST"), str(answer.get("message") or "")
    else:
        code, message = "BAD_REQUEST", body.decode("utf-8", errors="replace")
    if message.startswith("Failed to predict data"):  # MLflow's prefix quotes the whole request: drop it
        message = message.rsplit("\nError: ", 1)[-1] if "\nError: " in message else "the model refused the input"
    message = (message.strip().splitlines() or ["error"])[0]
    return code, message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "..."


async def respond(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error_code": code, "message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class OneLineErrors:
    """ASGI middleware: the content type checked first, every error answer made one line (see the module doc)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"].rstrip("/") == "/invocations":
            headers = dict(scope.get("headers") or [])
            value = headers.get(b"content-type")
            problem = content_type_problem(value.decode("latin-1") if value is not None else None)
            if problem:
                await respond(send, 415, "BAD_REQUEST", problem)
                return
        held: Message = {}  # an error answer's start, held until its body is complete
        chunks: list[bytes] = []
        sent = False

        async def guarded(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held.update(message)
                return
            if message["type"] == "http.response.body" and held:
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    sent = True
                    await respond(send, held["status"], *one_line(b"".join(chunks)))
                return
            sent = sent or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, guarded)
        except Exception as error:  # a bug below: one line in the log, one line to the client
            print(f"serve: {scope['method']} {scope['path']}: {type(error).__name__}: "
                  f"{(str(error).splitlines() or [''])[0][:MAX_MESSAGE]}", file=sys.stderr, flush=True)
            if not sent:
                await respond(send, 500, "INTERNAL_ERROR", f"internal error ({type(error).__name__}); see the server's log")


def bound_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), as uvicorn binds it; ConfigError naming the port if it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is already in use (another `make serve`, `make ui` or server?); "
                              "stop it or choose another port (SERVE_PORT=N for make serve, PORT=N for make server/ui)") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return sock


def port_is_free(host: str, port: int) -> None:
    """ConfigError naming the port if something listens on it (checked before a server is started)."""
    bound_socket(host, port).close()


def load(uri: str):
    """The pyfunc model at `uri` (checked by tracking/__main__.py); TrackingError in one line if it cannot be loaded."""
    import mlflow

    from vaepipe.tracking.store import shown_uri

    try:
        return mlflow.pyfunc.load_model(uri)
    except Exception as error:  # MLflow's errors (no such artifact, store refused) and the loader's own
        raise TrackingError(f"MODEL {uri}: cannot load the model from {shown_uri()}: {type(error).__name__}: "
                            f"{(str(error).strip().splitlines() or [''])[0][:MAX_MESSAGE]}") from None


def app_for(model) -> OneLineErrors:
    """The ASGI app serving a loaded pyfunc model: MLflow's scoring server behind OneLineErrors."""
    from mlflow.pyfunc import scoring_server

    return OneLineErrors(scoring_server.init(model))


def serve(uri: str, host: str, port: int) -> None:
    import uvicorn

    sock = bound_socket(host, port)  # first: a taken port is one line before seconds of loading
    app = app_for(load(uri))
    uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5)).run(sockets=[sock])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vaepipe.tracking.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a model URI (tracking/__main__.py resolves MODEL= to one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    try:
        serve(args.model, args.host, args.port)
    except VaepipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
