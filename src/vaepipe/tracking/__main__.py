"""`python -m vaepipe.tracking ui|server|serve|promote|store`: MLflow on the store the stages use (the
Makefile's ui, server, serve and promote targets), so the two can never disagree."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from vaepipe import paths
from vaepipe.errors import ConfigError, TrackingError, VaepipeError
from vaepipe.experiments import experiment_run_id
from vaepipe.tracking import aliases
from vaepipe.tracking.model_logging import REGISTERED_MODEL
from vaepipe.tracking.runs import connect, read_run_id
from vaepipe.tracking.serve import port_is_free
from vaepipe.tracking.store import (
    EXPERIMENT_NAME,
    artifact_location,
    experiment_url,
    is_http,
    local_store,
    masked_url,
    shown_uri,
    tracking_uri,
    ui_base_url,
)


def command(argv: list[str] | None = None) -> list[str] | None:
    """`python -m vaepipe.tracking ui|server|serve|promote|store`: the mlflow command line to exec (None: done)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vaepipe.tracking",
                                     description="Start MLflow on the store the pipeline's stages use.")
    parser.add_argument("action", choices=["ui", "server", "serve", "promote", "store"])
    parser.add_argument("run", nargs="?", default="",
                        help="promote: the MLflow run id or DVC experiment name whose model becomes champion")
    parser.add_argument("--model", default="", help="serve: a models:/ or runs:/ URI, a run id or a DVC experiment "
                                                      "name (default: the workspace's model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    store, artifacts = local_store()
    if args.action == "store":
        print(f"tracking URI: {shown_uri()}\nartifact location: {artifact_location() or '(the server decides)'}")
        return None
    if args.action == "server":  # the stages then reach it by MLFLOW_TRACKING_URI (tracking/server.py)
        from vaepipe.tracking.server import server_command

        # A taken port is one line before MLflow starts (serve: tracking/serve.py binds its own; ui: below).
        port_is_free(args.host, args.port)
        argv, line = server_command(args.host, args.port)
        print(line, flush=True)
        return argv
    if args.action == "serve":
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()
        served = served_model(args.model)
        print(f">> serving {describe(served, args.model)} from {shown_uri()} on http://{args.host}:{args.port}",
              flush=True)
        # vaepipe's server (tracking/serve.py): MLflow's scoring server, its failures kept to one line.
        return [sys.executable, "-m", "vaepipe.tracking.serve", f"--model={served.uri}", f"--host={args.host}",
                f"--port={args.port}"]
    if args.action == "promote":
        run_id, experiment = run_of(args.run)
        before, after = aliases.promote(run_id)
        moved = (f"version {before} -> {after}" if before else
                 f"{aliases.CHAMPION} had no version before; now version {after}")
        print(f">> {REGISTERED_MODEL}@{aliases.CHAMPION}: {moved} "
              f"(run {run_id}{f', DVC experiment {experiment}' if experiment else ''})")
        return None
    if not is_http(tracking_uri()):  # a UI will start: a taken port is one line before the store is opened
        port_is_free(args.host, args.port)
    link = experiment_url(ui_base_url(args.host, args.port), connect(write=False))
    if is_http(tracking_uri()):
        print(f">> the store is the server {shown_uri()}; its runs: {link}")
        return None
    print(f">> mlflow ui on http://{args.host}:{args.port} ({store}); the runs of experiment "
          f"{EXPERIMENT_NAME} in the model-training view:\n{link}", flush=True)
    return ["mlflow", "ui", "--host", args.host, "--port", str(args.port), "--workers", "1",
            "--backend-store-uri", store, "--default-artifact-root", artifacts.as_uri()]


# What MODEL= may be besides a URI: a run id or a DVC experiment name (git ref characters, no '/').
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MODELS_URI = re.compile(r"models:/[^/@\s]+(/[^/@\s]+|@[^/@\s]+)?")  # name/version, name@alias, name/latest, model id
MODEL_KINDS = (f"a models:/ URI (models:/{REGISTERED_MODEL}@champion, models:/{REGISTERED_MODEL}/7), "
               "runs:/<run id>/model, a run id or a DVC experiment name")


def served_model(model: str) -> aliases.ServedModel:
    """MODEL= checked before anything is fetched: a models:/ or runs:/ URI, a run id or a DVC experiment
    name; empty: the workspace's run's registered version. Paths and other URIs (file:, s3:, http:) are
    refused: serving them would copy whatever they name. ConfigError/TrackingError, one line each."""
    if not model:
        return aliases.workspace_model(read_run_id(paths.RUN_ID_FILE))
    shown = repr(masked_url(model[:200]) + ("..." if len(model) > 200 else ""))
    if model.startswith("models:/"):
        if not MODELS_URI.fullmatch(model):
            raise ConfigError(f"MODEL={shown} is not a models:/ URI of the form models:/NAME/VERSION or "
                              f"models:/NAME@ALIAS (e.g. models:/{REGISTERED_MODEL}@champion)")
        return aliases.resolve_model(model)
    if model.startswith("runs:/"):
        run_id, _, path = model.removeprefix("runs:/").partition("/")
        if not RUN_ID.fullmatch(run_id):
            raise ConfigError(f"MODEL={shown}: {run_id!r} is not an MLflow run id (32 hex digits); "
                              "e.g. runs:/<run id>/model, or pass the run id alone")
        if not path or path.startswith("/") or ".." in path.split("/") or any(c.isspace() for c in path):
            raise ConfigError(f"MODEL={shown}: no artifact path after the run id; e.g. runs:/{run_id}/model")
        if not aliases.run_exists(run_id):
            raise ConfigError(f"MODEL={shown}: no run {run_id} in {shown_uri()}")
        return aliases.resolve_model(model)
    if NAME.fullmatch(model):
        run_id, _ = run_of(model, "MODEL")
        version = aliases.version_of_run(run_id)
        if version is None:
            raise TrackingError(f"MODEL={model}: run {run_id} has no registered version of {REGISTERED_MODEL} in "
                                f"{shown_uri()} (a train-only trial's run logs no model)")
        return aliases.ServedModel(f"models:/{REGISTERED_MODEL}/{version}", version, run_id)
    raise ConfigError(f"MODEL={shown} is not a model to serve: give {MODEL_KINDS}; paths and other URIs "
                      "(file:, s3:, http:) are not served")


def describe(served: aliases.ServedModel, model: str) -> str:
    """`models:/vaepipe-vae/3 (run ..., the workspace's model)`, or MODEL= and what it resolved to."""
    run = f"run {served.run_id}" if served.run_id else "no MLflow run"
    if not model:
        return f"{served.uri} ({run}, the workspace's model)"
    version = f"version {served.version} of {REGISTERED_MODEL}" if served.version else "not a registered version"
    return f"{model}" + (f" = {served.uri}" if served.uri != model else "") + f" ({version}, {run})"


RUN_ID = re.compile(r"[0-9a-f]{32}")


def run_of(value: str, name: str = "RUN") -> tuple[str, str | None]:
    """RUN= for promote, or MODEL= for serve: (the MLflow run id, the DVC experiment name if it was one)."""
    if not value:
        raise ConfigError("RUN= is empty: pass an MLflow run id or a DVC experiment name "
                          "(`dvc exp show` lists them), e.g. make promote RUN=<name>")
    if RUN_ID.fullmatch(value) and aliases.run_exists(value):
        return value, None
    run_id = experiment_run_id(value, paths.repo_root())
    if run_id is None:
        tagged = aliases.runs_tagged_with_experiment(value)
        if len(tagged) > 1:
            raise ConfigError(f"{name}={value}: {len(tagged)} MLflow runs carry dvc.exp_name={value} "
                              f"({', '.join(tagged)}); pass one run id")
        if not tagged:
            raise ConfigError(f"{name}={value}: no MLflow run has that id and no DVC experiment that name "
                              "(`dvc exp pull origin NAME` fetches a teammate's)")
        run_id = tagged[0]
    return run_id, value


if __name__ == "__main__":
    try:
        argv = command()
    except VaepipeError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    if argv:
        beside = Path(sys.executable).parent / argv[0]  # the venv's mlflow, also when PATH lacks the venv
        os.execvp(str(beside) if beside.exists() else argv[0], argv)
