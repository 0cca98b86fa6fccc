"""A real HTTP server on 127.0.0.1 in a thread, for tests of what the pipeline does when a server
answers badly: each request is recorded and answered by a function of it (a status, a body, a
response cut off mid-body, a garbage status line, no answer at all)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = Callable[[BaseHTTPRequestHandler, bytes], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append((self.command, self.path, body))
        self.server.answer(self, body)
        self.wfile.flush()

    do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _any

    def log_message(self, *_args) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[str, str, bytes]]
    answer: Answer
    url: str


@contextmanager
def serve(answer: Answer) -> Iterator[Server]:
    server = Server(("127.0.0.1", 0), _Handler)
    server.requests, server.answer = [], answer
    server.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def respond(handler: BaseHTTPRequestHandler, code: int, body: bytes = b"",
            content_type: str = "application/octet-stream") -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def content(data: bytes) -> Answer:
    return lambda handler, _body: respond(handler, 200, data)


def status(code: int, text: bytes = b"") -> Answer:
    return lambda handler, _body: respond(handler, code, text, "text/plain")


def cut_off(handler: BaseHTTPRequestHandler, _body: bytes) -> None:
    """Promise 1000 bytes, send 10, close: the client's read ends in http.client.IncompleteRead."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b"0123456789")
    handler.close_connection = True


def garbage_status(handler: BaseHTTPRequestHandler, _body: bytes) -> None:
    """Not HTTP: the client's parse ends in http.client.BadStatusLine."""
    handler.wfile.write(b"SPAM SPAM SPAM\r\n\r\n")
    handler.close_connection = True


def stall(seconds: float) -> Answer:
    """Answer nothing for `seconds`, then close: a client with a shorter timeout times out."""
    def answer(handler: BaseHTTPRequestHandler, _body: bytes) -> None:
        time.sleep(seconds)
        handler.close_connection = True
    return answer
