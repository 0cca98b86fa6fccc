"""`make tune-dashboard`: Optuna's own dashboard (optuna-dashboard: live optimisation history, parameter
importances, parallel coordinates, trial notes) on the studies `make tune` writes, as `make ui` is MLflow's.

    python -m vaepipe.tune.dashboard [--host 127.0.0.1] [--port 8080]

The storage is the one `make tune` uses (vaepipe.tune.storage.resolve_storage): $VAEPIPE_TUNE_STORAGE, else
the journal file .optuna/journal.log. It comes from the environment only, never from the command line,
where a URL's password would show in `ps` (the Makefile's STORAGE= sets the variable). The server binds
to --host (127.0.0.1 by default: the dashboard has no logins and can edit trial notes) and prints the URL
it answers on, with the port it got (--port 0: any free port).

optuna-dashboard is reached through its public API only: `optuna_dashboard.wsgi(storage)`, served here by
the standard library's WSGI server with a thread per request (a slow page does not hold the others).
"""

from __future__ import annotations

import argparse
import socketserver
import sys
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from vaepipe.errors import ConfigError
from vaepipe.tune.storage import STORAGE_ENV, open_storage, resolve_storage, storage_label, study_names

DEFAULT_PORT = 8080  # optuna-dashboard's own default; `make ui` holds 5000 and `make serve` 5001


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # Ctrl-C stops the server without waiting for open connections


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the standard library's name)
        """No line per request (the page polls the storage every few seconds); errors still go to stderr."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vaepipe.tune.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1: this machine "
                                                            "only; the dashboard has no logins)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 = any free port")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: a port is 0 to 65535")
    return args


def open_dashboard(host: str, port: int) -> tuple[ThreadingServer, str, list[str]]:
    """The dashboard's server bound to host:port (not serving yet), the storage as it may be printed, and
    the studies in it. ConfigError in one line when the storage cannot be opened or, for the default journal
    file, does not exist yet (no file is created: `make tune` makes it)."""
    storage = resolve_storage()
    label = storage_label(storage)
    if "://" not in storage and not Path(storage).is_file():
        raise ConfigError(f"no Optuna journal at {label}: run `make tune` first, or set STORAGE= "
                          f"(${STORAGE_ENV}) to where the studies are")
    names = study_names(storage)  # opens the storage once: a wrong URL fails here, in one line
    import optuna_dashboard

    app = optuna_dashboard.wsgi(open_storage(storage))
    try:
        server = make_server(host, port, app, server_class=ThreadingServer, handler_class=QuietHandler)
    except OSError as error:
        raise ConfigError(f"optuna-dashboard cannot listen on {host}:{port}: {error.strerror or error}; "
                          "choose another port (DASHBOARD_PORT=)") from None
    return server, label, names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        server, label, names = open_dashboard(args.host, args.port)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:  # a storage URL that does not answer: one line, without its password
        from vaepipe.tune.storage import redact

        print(f"error: cannot open the Optuna storage {storage_label(resolve_storage())}: {type(error).__name__}: "
              f"{redact((str(error).splitlines() or [''])[0], resolve_storage())}", file=sys.stderr)
        return ConfigError.exit_code
    print(f">> optuna-dashboard on http://{args.host}:{server.server_port}/ (studies in {label}: "
          f"{', '.join(names) or 'none yet'}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
