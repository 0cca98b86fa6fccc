"""Two teammates (docs/team.md): two clones of one git repository (a bare repo stands for the team's git
remote), the team's MLflow server (`make server`'s module on a real PostgreSQL cluster, with logins:
tests/e2e/team_servers.py), and a DVC remote over SSH (a real OpenSSH sshd, tests/e2e/sshd.py).

Alice runs `dvc repro` and a queue of 2 experiments (`dvc queue start -j 2`), then `dvc push`es and
`dvc exp push`es them. Bob clones, `dvc pull`s and `dvc exp pull`s: his `dvc repro` retrains nothing,
`make compare` lists Alice's 3 runs with their metrics, and the server holds them (read through
MLflow's client). In Alice's workspace `make serve` answers with her models/vae.keras, not with a queued
run's (they registered later versions and moved no alias: `champion` stays where Alice put it); after
`make promote RUN=<experiment>`, `make serve MODEL=models:/vaepipe-vae@champion` answers with that
experiment's model.

The server itself (what was tests/e2e/test_team_server.py, sharing this module's servers and Alice's
run): her run is in PostgreSQL (and nowhere local) with its params, per-epoch history and test metrics,
and its artifacts (the plots among them) come back through the server (what test_tracking.py's
test_pipeline_logs_to_a_real_mlflow_server checked on a pipeline of its own); a wrong password and a
READ-only user fail before any work in one line; no credential shows up anywhere; the server refuses
basic auth without an admin password, and fails in seconds on a store that does not answer.

One set of servers and one run of Alice's work per module (the `team` fixture); the model is tiny."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import yaml
from pipeline_repo import (
    PROJECT,
    copy_repo,
    experiment_refs,
    free_port,
    make_repo,
    prepared_copy,
    run_stage,
    stage_env,
    stop_queue,
    wait_for,
    wait_for_queue,
)
from sshd import Sshd
from team_servers import PostgresCluster, TeamServer, server_command, server_env
from test_sweep_compare import experiment_metrics

from vaepipe.experiments import experiment_run_id
from vaepipe.tracking.server import with_driver

pytestmark = pytest.mark.e2e

# As cheap as a real pipeline gets: 256 images, 1 epoch, a few evaluation samples.
TEAM_PARAMS = {"data": {"limit": 256, "val_size": 64},
               "train": {"epochs": 1, "batch_size": 32, "steps_per_execution": 100},
               "evaluate": {"iw_samples": 2, "mc_samples": 1}}
EXPERIMENTS = {"alice-z3": 3, "alice-z4": 4}  # DVC experiment name -> model.latent_dim


@dataclass
class Teammate:
    name: str
    repo: Path
    env: dict[str, str] = field(repr=False)

    def run(self, *command: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(command, cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert result.returncode == 0, f"{self.name}: {' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def make(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        """`make TARGET VAR=...` with the Makefile's setup target taken as done (-o setup: the venv is the suite's)."""
        return self.run("make", "-s", "-o", "setup", *args, timeout=timeout, check=check)


@dataclass
class Team:
    alice: Teammate
    bob: Teammate
    pg: PostgresCluster
    server: TeamServer
    repro: subprocess.CompletedProcess  # Alice's first `dvc repro` against the server
    workspace_run: str
    experiment_runs: dict[str, str]  # DVC experiment name -> MLflow run id
    champion_before_queue: str

    @property
    def artifacts(self) -> Path:
        return self.server.artifacts

    def runs(self) -> list[tuple[str, str]]:
        """(run id, status) of every run in the experiment, through the server as its admin."""
        with self.server.as_admin():
            client = mlflow.MlflowClient(self.server.base)
            experiment = client.get_experiment_by_name("vaepipe")
            return sorted((run.info.run_id, run.info.status) for run in client.search_runs([experiment.experiment_id]))


ALICE, ALICE_PASSWORD = "alice", "alice-pw-" + "4c1e77d2"  # EDIT on the experiment (and owner of the model she registers)
BOB, BOB_PASSWORD = "bob", "bob-pw-" + "90b3a6f5"  # the server's default for new users: READ
FAST_S = 60  # a bound, even on a loaded machine; that TensorFlow never loaded shows in the one line (no TF logs)


def team_server(root: Path) -> tuple[PostgresCluster, TeamServer]:
    """`make server`'s module on a fresh PostgreSQL cluster with logins (tests/e2e/team_servers.py)."""
    pg = PostgresCluster.started()  # skips (fails under CI=true) without Debian's postgresql
    server = TeamServer(root, store=pg.url("mlflow"), artifacts=root / "server-artifacts")
    try:
        server.start()
        server.wait_healthy()
        server.create_user(ALICE, ALICE_PASSWORD, experiment_permission="EDIT")
        server.create_user(BOB, BOB_PASSWORD)
    except BaseException:
        server.stop()
        pg.stop()
        raise
    return pg, server


def teammate_env(home: Path, mlflow_env: dict[str, str]) -> dict[str, str]:
    """A member's shell: their HOME (~/.ssh), the server and their login; `make` targets import the clone's src
    (as after `make setup` in it: the suite's venv has another checkout's editable install)."""
    return stage_env(HOME=str(home), PYTHONPATH="src", **mlflow_env)


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    sshd = Sshd(root / "sshd")  # skips (fails under CI=true) without openssh-server
    sshd.start()
    pg = server = None
    try:
        pg, server = team_server(root)
        origin = root / "origin.git"
        subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)

        alice = Teammate("alice", make_repo(root / "alice", TEAM_PARAMS),
                         teammate_env(sshd.home(root / "home-alice"), server.client_env(ALICE, ALICE_PASSWORD)))
        shutil.copy(PROJECT / "Makefile", alice.repo / "Makefile")
        alice.run("dvc", "remote", "add", "-d", "team", sshd.url(root / "dvc-remote"))
        alice.run("dvc", "remote", "modify", "--local", "team", "keyfile", str(sshd.client_key))
        alice.run("git", "remote", "add", "origin", str(origin))
        repro = alice.run("dvc", "repro", timeout=900)
        alice.run("git", "add", "-A")
        alice.run("git", "commit", "-qm", "baseline: dvc repro")
        alice.run("git", "push", "-q", "origin", "HEAD")
        workspace_run = (alice.repo / "models" / "mlflow_run_id").read_text().strip()
        # champion = Alice's workspace run before the queue: the queued runs must leave it there.
        promoted = alice.make("promote", f"RUN={workspace_run}").stdout
        assert "champion had no version before; now version 1" in promoted, promoted

        known = experiment_refs(alice.repo)
        for name, latent in EXPERIMENTS.items():
            alice.run("dvc", "exp", "run", "--queue", "-n", name, "-S", f"model.latent_dim={latent}")
        try:
            # The queue's workers inherit this environment (the server, the login), not the queuing shell's.
            # Not alice.run: the output is held by the detached workers (pipeline_repo.start_queue says why).
            subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=alice.repo, env=alice.env, check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            status = wait_for_queue(alice.repo, alice.env, len(EXPERIMENTS), known)
            assert status.count("Success") == len(EXPERIMENTS), status
        finally:
            stop_queue(alice.repo)
        alice.run("dvc", "push")
        alice.run("dvc", "exp", "push", "origin", *EXPERIMENTS)

        shown = experiment_metrics(alice.run("dvc", "exp", "show", "--json").stdout)
        experiment_runs = {name: experiment_run_id(name, alice.repo) for name in EXPERIMENTS}
        assert all(experiment_runs.values()) and set(shown) >= set(EXPERIMENTS)

        bob_repo = root / "bob"
        subprocess.run(["git", "clone", "-q", str(origin), str(bob_repo)], check=True, capture_output=True)
        bob = Teammate("bob", bob_repo, teammate_env(sshd.home(root / "home-bob"), server.client_env(BOB, BOB_PASSWORD)))
        bob.run("dvc", "remote", "modify", "--local", "team", "keyfile", str(sshd.client_key))
        yield Team(alice, bob, pg, server, repro, workspace_run, experiment_runs, promoted)
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.stop()
        sshd.stop()


def test_bob_pulls_alice_s_work_and_retrains_nothing(team):
    bob, alice = team.bob, team.alice
    assert not (bob.repo / "models" / "vae.keras").exists()
    bob.run("dvc", "pull")
    assert (bob.repo / "models" / "vae.keras").read_bytes() == (alice.repo / "models" / "vae.keras").read_bytes()
    pulled = bob.run("dvc", "exp", "pull", "origin", *EXPERIMENTS)
    # The run ids travel with the experiments' cached outputs (dvc exp pull fetches them from the remote).
    assert {name: experiment_run_id(name, bob.repo) for name in EXPERIMENTS} == team.experiment_runs, pulled.stdout
    shown = experiment_metrics(bob.run("dvc", "exp", "show", "--json").stdout)
    status = bob.run("dvc", "status").stdout
    assert "up to date" in status, status
    repro = bob.run("dvc", "repro")
    assert "Running stage" not in repro.stdout, repro.stdout[-3000:]
    assert "up to date" in repro.stdout, repro.stdout[-3000:]

    bob.make("compare")
    with (bob.repo / "reports" / "compare.csv").open() as handle:
        rows = {row["run_id"]: row for row in csv.DictReader(handle)}
    expected = {team.workspace_run: json.loads((alice.repo / "metrics.json").read_text()),
                **{run: shown[name] for name, run in team.experiment_runs.items()}}
    assert set(rows) == set(expected)
    for run_id, metrics in expected.items():
        for name in ("test_loss", "test_recon", "test_kl", "test_nll_iw"):
            assert float(rows[run_id][name]) == pytest.approx(metrics[name], abs=6e-5), (run_id, name)

    with team.server.as_user(BOB, BOB_PASSWORD):  # Bob's view of the PostgreSQL-backed store, through the server
        client = mlflow.MlflowClient(team.server.base)
        experiment = client.get_experiment_by_name("vaepipe")
        runs = {run.info.run_id: run for run in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(expected)
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    assert {runs[run].data.tags.get("dvc.exp_name") for run in team.experiment_runs.values()} == set(EXPERIMENTS)


def serve(teammate: Teammate, *args: str) -> tuple[subprocess.Popen, str, str]:
    """`make serve SERVE_PORT=<free> ...` in the background: (process, base URL, the line it printed)."""
    port = free_port()
    log = teammate.repo / f"serve-{port}.log"
    process = subprocess.Popen(["make", "-s", "-o", "setup", "serve", f"SERVE_PORT={port}", *args], cwd=teammate.repo,
                               env=teammate.env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            return urllib.request.urlopen(f"{base}/ping", timeout=2).status == 200
        except OSError:
            return False

    wait_for(up, timeout=240, what="make serve to answer /ping")
    return process, base, next(line for line in log.read_text().splitlines() if line.startswith(">> serving"))


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def z_mean(base: str, images: np.ndarray) -> np.ndarray:
    request = urllib.request.Request(f"{base}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return np.asarray(json.loads(answer.read())["predictions"]["z_mean"])


def keras_z_mean(model_file: Path, images: np.ndarray) -> np.ndarray:
    import keras

    import vaepipe.model  # noqa: F401  registers the custom layers

    vae = keras.saving.load_model(model_file, safe_mode=True, compile=False)
    return np.asarray(vae.encoder(images)[0])


def experiment_model_file(teammate: Teammate, name: str) -> Path:
    """The experiment's models/vae.keras in the DVC cache, by the md5 its commit's dvc.lock records."""
    ref = teammate.run("git", "for-each-ref", "--format=%(refname)", f"refs/exps/*/*/{name}").stdout.split()
    assert len(ref) == 1, ref
    lock = yaml.safe_load(teammate.run("git", "show", f"{ref[0]}:dvc.lock").stdout)
    md5 = next(out["md5"] for out in lock["stages"]["train"]["outs"] if out["path"] == "models/vae.keras")
    cached = teammate.repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    named = teammate.repo / f"{name}.keras"  # Keras loads a .keras file by its extension
    shutil.copy(cached, named)
    return named


def test_serve_answers_with_the_workspace_model_then_the_promoted_experiment(team):
    alice = team.alice
    images = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    # The queued runs registered versions 2 and 3 after the workspace's 1, and left champion on 1.
    assert "champion had no version before; now version 1" in team.champion_before_queue

    process, base, line = serve(alice)
    try:
        assert line.startswith(f">> serving models:/vaepipe-vae/1 (run {team.workspace_run}, the workspace's model)"), line
        np.testing.assert_allclose(z_mean(base, images), keras_z_mean(alice.repo / "models" / "vae.keras", images),
                                   rtol=1e-5, atol=1e-6)
    finally:
        stop(process)

    chosen = "alice-z3"
    promoted = alice.make("promote", f"RUN={chosen}").stdout
    version = promoted.split("version 1 -> ", 1)[-1].split()[0]
    assert promoted.startswith(f">> vaepipe-vae@champion: version 1 -> {version} (run {team.experiment_runs[chosen]}, "
                               f"DVC experiment {chosen})"), promoted
    process, base, line = serve(alice, "MODEL=models:/vaepipe-vae@champion")
    try:
        assert line.startswith(f">> serving models:/vaepipe-vae@champion = models:/vaepipe-vae/{version} "
                               f"(version {version} of vaepipe-vae, run {team.experiment_runs[chosen]})"), line
        served = z_mean(base, images)
        assert served.shape == (3, EXPERIMENTS[chosen])
        np.testing.assert_allclose(served, keras_z_mean(experiment_model_file(alice, chosen), images), rtol=1e-5, atol=1e-6)
    finally:
        stop(process)


# ---------------------------------------------------------------- the server itself


def written(repo: Path) -> dict[str, str]:
    """What a stage writes that a credential could leak into."""
    return {name: (repo / name).read_text() for name in ("train_log.csv", "params.yaml", "dvc.lock", "metrics.json")
            if (repo / name).exists()}


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_alice_s_run_is_in_postgresql_and_its_artifacts_come_back_through_the_server(team):
    repo, result = team.alice.repo, team.repro
    run_id = team.workspace_run
    # In PostgreSQL: MLflow's own client on the database itself, not the server, not files.
    stored = mlflow.MlflowClient(with_driver(team.pg.url("mlflow"))).get_run(run_id)
    assert stored.info.status == "FINISHED"
    params, metrics = (yaml.safe_load((repo / name).read_text()) for name in ("params.yaml", "metrics.json"))
    assert stored.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"])
    assert stored.data.params["model.latent_dim"] == str(params["model"]["latent_dim"])
    assert stored.data.params["data.limit"] == str(TEAM_PARAMS["data"]["limit"])
    assert not (repo / "mlflow.db").exists()  # nothing went to a local store
    # The client never knew where the server keeps artifacts: the run's artifact URI is the server's proxy.
    assert stored.info.artifact_uri.startswith("mlflow-artifacts:/"), stored.info.artifact_uri
    assert str(team.artifacts) not in result.stdout + result.stderr
    # Artifacts come back through the server (--serve-artifacts), as alice, into a directory of the test's.
    with team.server.as_user(ALICE, ALICE_PASSWORD):
        summary = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model_summary.txt",
                                                      tracking_uri=team.server.base, dst_path=str(repo.parent / "dl"))
        metrics_file = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="metrics.json",
                                                      tracking_uri=team.server.base, dst_path=str(repo.parent / "dl"))
        # Through the server (its REST API): the per-epoch history and the plot stage's figures.
        client = mlflow.MlflowClient(team.server.base)
        history = client.get_metric_history(run_id, "val_loss")
        plots = {Path(item.path).name for item in client.list_artifacts(run_id, "plots")}
    assert sorted(m.step for m in history) == list(range(1, TEAM_PARAMS["train"]["epochs"] + 1))
    assert plots >= {"reconstructions.png", "loss_curves.png"}, plots
    with team.server.as_admin():
        versions = mlflow.MlflowClient(team.server.base).search_model_versions(f"run_id = '{run_id}'")
    assert Path(metrics_file).read_text() == (repo / "metrics.json").read_text()
    [on_server] = team.artifacts.rglob(f"{run_id}/artifacts/model_summary.txt")  # where the server put it
    assert Path(summary).read_bytes() == on_server.read_bytes() and Path(summary).stat().st_size > 0
    assert [v.name for v in versions] == ["vaepipe-vae"]  # registered too (alice created the model)
    # The start line names the store (password masked), the artifacts destination and the auth.
    [start] = [line for line in team.server.output().splitlines() if line.startswith(">> mlflow server on")]
    assert f"store postgresql://postgres:***@127.0.0.1:{team.pg.port}/mlflow" in start, start
    assert f"artifacts {team.artifacts}" in start and "auth basic (admin 'admin'" in start, start


def test_no_credential_appears_in_outputs_logs_or_mlflow_records(team):
    repo, result, run_id = team.alice.repo, team.repro, team.workspace_run
    with team.server.as_admin():
        run = mlflow.MlflowClient(team.server.base).get_run(run_id)
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


def test_a_user_who_may_not_add_model_versions_fails_before_training(team, quick, tmp_path):
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


def test_a_changed_password_takes_effect_at_once_though_logins_are_cached(team):
    """The server keeps a successful login for a minute (tracking/server.py: MLflow's auth cache), so a
    request costs no password hashing; a password the admin changes through the API still counts at once."""
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    old, new = "dave-pw-" + "5b0e7c31", "dave-pw-" + "e2a94f08"
    team.server.create_user("dave", old)

    def can_read(password: str) -> bool:
        with team.server.as_user("dave", password):
            try:
                return mlflow.MlflowClient(team.server.base).get_experiment_by_name("vaepipe") is not None
            except MlflowException as error:
                assert "401" in str(error) or "Unauthorized" in str(error) or "credentials" in str(error), error
                return False

    assert can_read(old) and can_read(old)  # the second one from the cache
    with team.server.as_admin():
        get_app_client("basic-auth", tracking_uri=team.server.base).update_user_password("dave", new)
    assert not can_read(old)
    assert can_read(new)
