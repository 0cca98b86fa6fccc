"""The team server: `make server`'s module on a real PostgreSQL cluster (initdb + pg_ctl, as an
unprivileged user) with MLflow's basic auth, all on 127.0.0.1, started and stopped here. A pipeline run
logs to it (the run is in PostgreSQL, its artifacts come back through the server); a wrong password and
a READ-only user fail before any training, in one line; no credential shows up anywhere; the server
refuses to start without an admin password, and fails in seconds on a store that does not answer."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import yaml
from pipeline_repo import copy_repo, free_port, prepared_copy, run_stage, stage_env
from team_servers import PostgresCluster, TeamServer, server_command, server_env

from vaepipe.tracking.server import with_driver

pytestmark = pytest.mark.e2e

ALICE, ALICE_PASSWORD = "alice", "alice-pw-" + "7f3a9c21"  # EDIT on the experiment
BOB, BOB_PASSWORD = "bob", "bob-pw-" + "5e8d0b44"  # the server's default for new users: READ
FAST_S = 30  # "fails before any training": no TensorFlow import (6-8 s alone), no epoch


class Team:
    def __init__(self, pg: PostgresCluster, server: TeamServer, artifacts: Path):
        self.pg, self.server, self.artifacts = pg, server, artifacts

    def admin_client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.server.base)

    def runs(self) -> list[tuple[str, str]]:
        """(run id, status) of every run in the experiment, through the server as its admin."""
        with self.server.as_admin():
            client = self.admin_client()
            experiment = client.get_experiment_by_name("vaepipe")
            return sorted((run.info.run_id, run.info.status) for run in client.search_runs([experiment.experiment_id]))


@pytest.fixture(scope="module")
def team(tmp_path_factory) -> Team:
    """PostgreSQL + the server with logins, once for the module (~30 s); alice has EDIT, bob READ."""
    pg = PostgresCluster.started()
    root = tmp_path_factory.mktemp("team-server")
    artifacts = root / "server-artifacts"
    server = TeamServer(root, store=pg.url("mlflow"), artifacts=artifacts)
    try:
        server.start()
        server.wait_healthy()
        server.create_user(ALICE, ALICE_PASSWORD, experiment_permission="EDIT")
        server.create_user(BOB, BOB_PASSWORD)
        yield Team(pg, server, artifacts)
    finally:
        server.stop()
        pg.stop()


@pytest.fixture(scope="module")
def trained(team, quick, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One `dvc repro` from train on (the quick params) as alice, against the team server."""
    repo = prepared_copy(quick, tmp_path_factory.mktemp("trained") / "repo", {})
    result = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=600,
                            env=stage_env(**team.server.client_env(ALICE, ALICE_PASSWORD)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return repo, result


def written(repo: Path) -> dict[str, str]:
    """What a stage writes that a credential could leak into."""
    return {name: (repo / name).read_text() for name in ("train_log.csv", "params.yaml", "dvc.lock", "metrics.json")
            if (repo / name).exists()}


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_a_pipeline_run_lands_in_postgresql_and_its_artifacts_come_back_through_the_server(team, trained):
    repo, result = trained
    run_id = (repo / "models/mlflow_run_id").read_text().strip()
    # In PostgreSQL: MLflow's own client on the database itself, not the server, not files.
    stored = mlflow.MlflowClient(with_driver(team.pg.url("mlflow"))).get_run(run_id)
    assert stored.info.status == "FINISHED"
    params, metrics = (yaml.safe_load((repo / name).read_text()) for name in ("params.yaml", "metrics.json"))
    assert stored.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"])
    assert stored.data.params["model.latent_dim"] == str(params["model"]["latent_dim"])
    # The client never knew where the server keeps artifacts: the run's artifact URI is the server's proxy.
    assert stored.info.artifact_uri.startswith("mlflow-artifacts:/"), stored.info.artifact_uri
    assert str(team.artifacts) not in result.stdout + result.stderr
    # Artifacts come back through the server (--serve-artifacts), as alice, into a directory of the test's.
    with team.server.as_user(ALICE, ALICE_PASSWORD):
        summary = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model_summary.txt",
                                                      tracking_uri=team.server.base, dst_path=str(repo.parent / "dl"))
        metrics_file = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="metrics.json",
                                                      tracking_uri=team.server.base, dst_path=str(repo.parent / "dl"))
    with team.server.as_admin():
        versions = team.admin_client().search_model_versions(f"run_id = '{run_id}'")
    assert Path(metrics_file).read_text() == (repo / "metrics.json").read_text()
    [on_server] = team.artifacts.rglob(f"{run_id}/artifacts/model_summary.txt")  # where the server put it
    assert Path(summary).read_bytes() == on_server.read_bytes() and Path(summary).stat().st_size > 0
    assert [v.name for v in versions] == ["vaepipe-vae"]  # registered too (alice created the model)
    # The start line names the store (password masked), the artifacts destination and the auth.
    [start] = [line for line in team.server.output().splitlines() if line.startswith(">> mlflow server on")]
    assert f"store postgresql://postgres:***@127.0.0.1:{team.pg.port}/mlflow" in start, start
    assert f"artifacts {team.artifacts}" in start and "auth basic (admin 'admin'" in start, start


def test_no_credential_appears_in_outputs_logs_or_mlflow_records(team, trained):
    repo, result = trained
    run_id = (repo / "models/mlflow_run_id").read_text().strip()
    with team.server.as_admin():
        run = team.admin_client().get_run(run_id)
    secrets = (ALICE_PASSWORD, team.pg.password, team.server.admin_password)
    command_line = " ".join(psutil.Process(team.server.process.pid).cmdline())  # what `ps` shows every local user
    assert "mlflow server" in command_line and f"postgres@127.0.0.1:{team.pg.port}/mlflow" in command_line
    places = {"stdout": result.stdout, "stderr": result.stderr, "server log": team.server.output(), **written(repo),
              "server command line": command_line,
              "run params": repr(run.data.params), "run tags": repr(run.data.tags)}
    assert len(places["dvc.lock"]) > 0 and len(run.data.params) > 10
    leaks = [(place, secret) for place, text in places.items() for secret in secrets if secret in text]
    assert not leaks, leaks


@pytest.mark.parametrize("who, password, says", [
    (ALICE, "not-" + ALICE_PASSWORD, f"refused user '{ALICE}': wrong password or no such user "
                                     "(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"),
    (BOB, BOB_PASSWORD, f"refused user '{BOB}': needs EDIT permission on experiment vaepipe (has READ); "
                        "an admin grants it"),
])
@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_wrong_password_or_a_read_only_user_fails_before_any_work_in_one_line(team, quick, tmp_path, who, password,
                                                                                   says, stage):
    # train: from prepared data; evaluate: a trained copy, its run id one the server does not hold.
    repo = prepared_copy(quick, tmp_path / "repo", {}) if stage == "train" else copy_repo(quick, tmp_path / "repo")
    before_files, before_runs = written(repo), team.runs()
    started = time.monotonic()
    result = run_stage(repo, stage, **team.server.client_env(who, password))
    took = time.monotonic() - started
    lines = error_lines(result)
    assert result.returncode == 4, lines  # as for an unreachable server (errors.TrackingError)
    assert lines == [f"error: MLflow server {team.server.base} {says}"], lines
    assert took < FAST_S, took
    assert team.runs() == before_runs  # nothing written: no new run, none left RUNNING
    assert written(repo) == before_files
    assert stage != "train" or not (repo / "models/vae.keras").exists() and not (repo / "checkpoints").exists()
    assert password not in result.stdout + result.stderr


def test_the_server_refuses_basic_auth_without_an_admin_password(tmp_path):
    port = free_port()
    for password in (None, ""):  # unset, or set but empty
        extra = {} if password is None else {"MLFLOW_AUTH_ADMIN_PASSWORD": password}
        env = server_env(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", "basic", **extra)
        result = subprocess.run(server_command(port), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr[-2000:]
        assert error_lines(result) == ["error: VAEPIPE_SERVER_AUTH=basic needs the admin's password in "
                                       "MLFLOW_AUTH_ADMIN_PASSWORD (admin user 'admin', MLFLOW_AUTH_ADMIN_USERNAME); "
                                       "not starting the server"], result.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()  # it stopped before MLflow touched anything


def test_an_unreachable_store_fails_in_seconds_naming_it_with_the_password_masked(tmp_path):
    closed = free_port()
    store = f"postgresql://user:s3cret-{closed}@127.0.0.1:{closed}/db"
    env = server_env(store, tmp_path / "artifacts", "basic", admin_password="admin-pw-0042")
    started = time.monotonic()
    result = subprocess.run(server_command(free_port()), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    lines = error_lines(result)
    assert result.returncode == 4, lines
    assert len(lines) == 1 and lines[0].startswith(
        f"error: MLflow server store postgresql://user:***@127.0.0.1:{closed}/db is unreachable: "), lines
    assert f"s3cret-{closed}" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert took < 20, took


def test_a_user_who_may_not_add_model_versions_fails_before_training(team, trained, quick, tmp_path):
    """EDIT on the experiment, READ on vaepipe-vae (alice registered it, so it is hers): train would log
    the whole run and fail at the very end; it fails before it starts instead."""
    team.server.create_user("carol", "carol-pw-" + "91c0d2e6", experiment_permission="EDIT")
    repo = prepared_copy(quick, tmp_path / "repo", {})
    before = team.runs()
    result = run_stage(repo, "train", **team.server.client_env("carol", "carol-pw-" + "91c0d2e6"))
    assert result.returncode == 4 and error_lines(result) == [
        f"error: MLflow server {team.server.base} refused user 'carol': needs EDIT permission on registered model "
        "vaepipe-vae (has READ); an admin grants it"], error_lines(result)
    assert team.runs() == before
