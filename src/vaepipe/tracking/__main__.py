"""`python -m vaepipe.tracking ui|server|serve|store`: MLflow on the store the stages use (the Makefile's
ui, server and serve targets), so the two can never disagree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vaepipe.errors import VaepipeError
from vaepipe.tracking.model_logging import REGISTERED_MODEL
from vaepipe.tracking.runs import connect
from vaepipe.tracking.store import (
    EXPERIMENT_NAME,
    artifact_location,
    experiment_url,
    is_http,
    local_store,
    masked_url,
    tracking_uri,
    ui_base_url,
)


def command(argv: list[str] | None = None) -> list[str] | None:
    """`python -m vaepipe.tracking ui|server|serve|store`: the mlflow command line to exec (None: done)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vaepipe.tracking",
                                     description="Start MLflow on the store the pipeline's stages use.")
    parser.add_argument("action", choices=["ui", "server", "serve", "store"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    store, artifacts = local_store()
    if args.action == "store":
        print(f"tracking URI: {masked_url(tracking_uri())}\nartifact location: {artifact_location() or '(the server decides)'}")
        return None
    if args.action == "server":  # the stages then reach it by MLFLOW_TRACKING_URI (tracking/server.py)
        from vaepipe.tracking.server import server_command

        argv, line = server_command(args.host, args.port)
        print(line, flush=True)
        return argv
    if args.action == "serve":
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
        print(f">> serving models:/{REGISTERED_MODEL}/latest from {tracking_uri()} on http://{args.host}:{args.port}",
              flush=True)
        return ["mlflow", "models", "serve", "-m", f"models:/{REGISTERED_MODEL}/latest", "--host", args.host,
                "--port", str(args.port), "--env-manager", "local"]
    link = experiment_url(ui_base_url(args.host, args.port), connect(write=False))
    if is_http(tracking_uri()):
        print(f">> the store is the server {masked_url(tracking_uri())}; its runs: {link}")
        return None
    print(f">> mlflow ui on http://{args.host}:{args.port} ({store}); the runs of experiment "
          f"{EXPERIMENT_NAME} in the model-training view:\n{link}", flush=True)
    return ["mlflow", "ui", "--host", args.host, "--port", str(args.port), "--workers", "1",
            "--backend-store-uri", store, "--default-artifact-root", artifacts.as_uri()]


if __name__ == "__main__":
    try:
        argv = command()
    except VaepipeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    if argv:
        beside = Path(sys.executable).parent / argv[0]  # the venv's mlflow, also when PATH lacks the venv
        os.execvp(str(beside) if beside.exists() else argv[0], argv)
