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

One set of servers and one run of Alice's work per module (the `team` fixture); the model is tiny."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from pipeline_repo import PROJECT, free_port, make_repo, stage_env, stop_queue, wait_for
from sshd import Sshd
from team_servers import PostgresCluster, TeamServer
from test_sweep_compare import experiment_metrics

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
    server: TeamServer
    workspace_run: str
    experiment_runs: dict[str, str]  # DVC experiment name -> MLflow run id
    champion_before_queue: str


ALICE, ALICE_PASSWORD = "alice", "alice-pw-" + "4c1e77d2"  # EDIT on the experiment (and owner of the model she registers)
BOB, BOB_PASSWORD = "bob", "bob-pw-" + "90b3a6f5"  # the server's default for new users: READ


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


def wait_for_queue(teammate: Teammate, count: int) -> str:
    def all_done() -> str | None:
        status = teammate.run("dvc", "queue", "status").stdout
        finished = "Queued" not in status and "Running" not in status
        return status if finished and status.count("Success") + status.count("Failed") >= count else None

    return wait_for(all_done, timeout=1200, interval=3, what="the queued experiments")


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
        alice.run("dvc", "repro", timeout=900)
        alice.run("git", "add", "-A")
        alice.run("git", "commit", "-qm", "baseline: dvc repro")
        alice.run("git", "push", "-q", "origin", "HEAD")
        workspace_run = (alice.repo / "models" / "mlflow_run_id").read_text().strip()
        # champion = Alice's workspace run before the queue: the queued runs must leave it there.
        promoted = alice.make("promote", f"RUN={workspace_run}").stdout
        assert "version none -> 1" in promoted, promoted

        for name, latent in EXPERIMENTS.items():
            alice.run("dvc", "exp", "run", "--queue", "-n", name, "-S", f"model.latent_dim={latent}")
        try:
            # The queue's workers inherit this environment (the server, the login), not the queuing shell's.
            # Not alice.run: the output is held by the detached workers (pipeline_repo.start_queue says why).
            subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=alice.repo, env=alice.env, check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            status = wait_for_queue(alice, len(EXPERIMENTS))
            assert status.count("Success") == len(EXPERIMENTS), status
        finally:
            stop_queue(alice.repo)
        alice.run("dvc", "push")
        alice.run("dvc", "exp", "push", "origin", *EXPERIMENTS)

        shown = experiment_metrics(alice.run("dvc", "exp", "show", "--json").stdout)
        experiment_runs = {name: shown[name]["mlflow_run_id"] for name in EXPERIMENTS}

        bob_repo = root / "bob"
        subprocess.run(["git", "clone", "-q", str(origin), str(bob_repo)], check=True, capture_output=True)
        bob = Teammate("bob", bob_repo, teammate_env(sshd.home(root / "home-bob"), server.client_env(BOB, BOB_PASSWORD)))
        bob.run("dvc", "remote", "modify", "--local", "team", "keyfile", str(sshd.client_key))
        yield Team(alice, bob, server, workspace_run, experiment_runs, promoted)
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
    shown = experiment_metrics(bob.run("dvc", "exp", "show", "--json").stdout)
    assert {name: shown[name]["mlflow_run_id"] for name in EXPERIMENTS} == team.experiment_runs, pulled.stdout
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

    import mlflow

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
    assert "version none -> 1" in team.champion_before_queue

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
