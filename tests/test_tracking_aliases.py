"""Which model `make serve` serves and what `make promote` moves, on a real SQLite store with registered
versions of vaepipe-vae (made with MLflow's client; the e2e tests serve real trained models): the
workspace's run's version by default, a MODEL= URI pinned to the version it names, `champion` moved
only by promote (which names the version before and after), and a DVC experiment name found through
its git ref (refs/exps/..., as DVC stores it) or its runs' dvc.exp_name tag. Bad names: one line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from vaepipe import paths
from vaepipe.errors import ConfigError, TrackingError
from vaepipe.tracking import aliases
from vaepipe.tracking.__main__ import command

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, mlflow_template):
    """A store with 3 runs (the 2nd tagged as DVC experiment tagged-exp), each with its registered version
    1..3, and a 4th run without a model; made once (from the session's empty store: MLflow's migrations
    take seconds), copied per test."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    shutil.copy(mlflow_template, path)
    client = mlflow.MlflowClient(f"sqlite:///{path}")
    experiment = client.create_experiment("vaepipe", artifact_location=(path.parent / "artifacts").as_uri())
    client.create_registered_model("vaepipe-vae")
    runs = []
    for index in range(4):
        run = client.create_run(experiment, tags={"dvc.exp_name": "tagged-exp"} if index == 1 else {})
        client.set_terminated(run.info.run_id)
        runs.append(run.info.run_id)
        if index < 3:
            client.create_model_version("vaepipe-vae", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return path, runs


@pytest.fixture
def store(tmp_path, monkeypatch, registered):
    path, runs = registered
    shutil.copy(path, tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return runs


def test_promote_moves_champion_and_names_the_version_before(store):
    assert aliases.champion_version() is None  # registering versions set no alias
    assert aliases.promote(store[1]) == (None, "2")
    assert aliases.promote(store[2]) == ("2", "3")
    assert aliases.champion_version() == "3"
    with pytest.raises(TrackingError, match=f"run {store[3]} has no registered version of vaepipe-vae"):
        aliases.promote(store[3])
    assert aliases.champion_version() == "3"


def test_a_model_uri_is_pinned_to_the_version_it_names(store):
    aliases.promote(store[0])
    assert aliases.resolve_model("models:/vaepipe-vae@champion") == aliases.ServedModel("models:/vaepipe-vae/1", "1", store[0])
    assert aliases.resolve_model("models:/vaepipe-vae/2") == aliases.ServedModel("models:/vaepipe-vae/2", "2", store[1])
    assert aliases.resolve_model("models:/vaepipe-vae/latest").version == "3"
    assert aliases.resolve_model("models:/vaepipe-vae/Latest").version == "3"
    runs_uri = f"runs:/{store[2]}/model"
    assert aliases.resolve_model(runs_uri) == aliases.ServedModel(runs_uri, "3", store[2])
    for bad, says in [("models:/vaepipe-vae@nosuch", "MODEL=models:/vaepipe-vae@nosuch"),
                      ("models:/vaepipe-vae/9", "MODEL=models:/vaepipe-vae/9"),
                      ("models:/nosuch/latest", "MODEL=models:/nosuch/latest: registered model nosuch has no versions"),
                      ("models:/vaepipe-vae/Production", "'Production' is not a version number, `latest` or @alias"),
                      ("models:/m-nosuch", "MODEL=models:/m-nosuch")]:
        with pytest.raises(TrackingError, match=says) as raised:
            aliases.resolve_model(bad)
        assert "\n" not in str(raised.value)


def test_serve_defaults_to_the_workspace_run_and_prints_what_it_serves(store, tmp_path, monkeypatch, capsys):
    run_id_file = tmp_path / "mlflow_run_id"
    monkeypatch.setattr(paths, "RUN_ID_FILE", run_id_file)
    with pytest.raises(TrackingError, match=r"no MLflow run id \(train has not finished writing its outputs\)"):
        command(["serve"])
    run_id_file.write_text(store[1] + "\n")
    argv = command(["serve", "--port", "5099"])
    assert argv[1:4] == ["-m", "vaepipe.tracking.serve", "--model=models:/vaepipe-vae/2"]  # tracking/serve.py
    assert f"serving models:/vaepipe-vae/2 (run {store[1]}, the workspace's model)" in capsys.readouterr().out
    aliases.promote(store[2])
    argv = command(["serve", "--model", "models:/vaepipe-vae@champion"])
    assert argv[3] == "--model=models:/vaepipe-vae/3"
    assert (f"serving models:/vaepipe-vae@champion = models:/vaepipe-vae/3 (version 3 of vaepipe-vae, run {store[2]})"
            in capsys.readouterr().out)
    run_id_file.write_text(store[3])
    with pytest.raises(TrackingError, match=f"run {store[3]} .* has no registered version"):
        command(["serve"])


def promote_cli(repo: Path, run: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "vaepipe.tracking", "promote", run], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=120)


def test_promote_takes_a_dvc_experiment_name_or_a_run_id(store, tmp_path, monkeypatch, capsys):
    """An experiment's commit under refs/exps/<baseline[:2]>/<baseline[2:]>/<name> holds models/mlflow_run_id."""
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    (repo / "dvc.yaml").write_text("stages: {}\n")
    git = {"cwd": repo, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **git)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e.invalid", "commit", "-q", "--allow-empty",
                    "-m", "baseline"], **git)
    baseline = subprocess.run(["git", "rev-parse", "HEAD"], text=True, **git).stdout.strip()
    (repo / "models" / "mlflow_run_id").write_text(store[0] + "\n")
    subprocess.run(["git", "add", "-A"], **git)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e.invalid", "commit", "-qm", "exp"], **git)
    exp = subprocess.run(["git", "rev-parse", "HEAD"], text=True, **git).stdout.strip()
    subprocess.run(["git", "update-ref", f"refs/exps/{baseline[:2]}/{baseline[2:]}/lucky-fern", exp], **git)

    result = promote_cli(repo, "lucky-fern")  # what `make promote RUN=lucky-fern` runs
    assert result.returncode == 0, result.stderr
    assert (f"vaepipe-vae@champion: champion had no version before; now version 1 (run {store[0]}, DVC experiment "
            "lucky-fern)") in result.stdout
    result = promote_cli(repo, "no-such-exp")
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("error: RUN=no-such-exp: no MLflow run has that id and no DVC experiment that name "
                             "(`dvc exp pull origin NAME` fetches a teammate's)\n")

    monkeypatch.chdir(repo)  # the rest in this process (each CLI start costs seconds of imports)
    assert command(["promote", "tagged-exp"]) is None  # no git ref here: the runs' dvc.exp_name tag
    assert f"version 1 -> 2 (run {store[1]}, DVC experiment tagged-exp)" in capsys.readouterr().out
    command(["promote", store[2]])
    assert f"version 2 -> 3 (run {store[2]})\n" in capsys.readouterr().out
    for bad, error, says in [("", ConfigError, "RUN= is empty"),
                             (store[3], TrackingError, f"run {store[3]} has no registered version of vaepipe-vae")]:
        with pytest.raises(error, match=re.escape(says)):
            command(["promote", bad])
    assert aliases.champion_version() == "3"  # the failures moved nothing


@pytest.mark.parametrize("model", ["/etc", "file:///etc/passwd", "./models", "models", "s3://bucket/model",
                                   "http://127.0.0.1:5000/model", "models:/", "models:/vaepipe-vae/1/extra",
                                   "models:/../../etc", "runs:/bad/model", f"runs:/{'a' * 32}", "runs:/", "x' ; id ; '",
                                   "-rf", "models:/vaepipe vae/1"])
def test_serve_refuses_a_model_that_is_not_a_uri_run_or_experiment_in_one_line_before_fetching(model, store, tmp_path,
                                                                                                 monkeypatch):
    """Paths and other URIs are refused before anything is copied: the store is never asked (the client
    fails the test if it is made), except to check that runs:/<well-formed id> names a run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    if not model.startswith(("runs:/", "models")) or model in ("models:/", "runs:/bad/model", "runs:/"):
        monkeypatch.setattr(aliases, "_client", lambda: pytest.fail(f"MODEL={model} reached the store"))
    with pytest.raises((ConfigError, TrackingError)) as raised:
        command(["serve", f"--model={model}"])
    message = str(raised.value)
    assert "\n" not in message and message.startswith("MODEL="), message
    assert raised.value.exit_code in (2, 4)


def test_serve_says_in_one_line_that_a_well_formed_run_does_not_exist(store):
    with pytest.raises(ConfigError, match=f"^MODEL='runs:/{'0' * 32}/model': no run {'0' * 32} in sqlite:///"):
        command(["serve", f"--model=runs:/{'0' * 32}/model"])


def test_serve_takes_a_run_id_or_a_dvc_experiment_name(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    assert command(["serve", f"--model={store[1]}"])[3] == "--model=models:/vaepipe-vae/2"
    assert command(["serve", "--model=tagged-exp"])[3] == "--model=models:/vaepipe-vae/2"  # the runs' dvc.exp_name tag
    with pytest.raises(TrackingError, match=f"^MODEL={store[3]}: run {store[3]} has no registered version"):
        command(["serve", f"--model={store[3]}"])
    with pytest.raises(ConfigError, match="^MODEL=no-such-exp: no MLflow run has that id and no DVC experiment"):
        command(["serve", "--model=no-such-exp"])
