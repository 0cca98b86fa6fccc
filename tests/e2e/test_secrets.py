"""Passwords stay secret (issue 29 item 3), against a real PostgreSQL (tests/e2e/team_servers.py) with a role
whose password holds '@', '/', ':' and a %-encoding:
- an Optuna storage given as documented, `postgresql://user:pass@127.0.0.1:port/db`, works (vaepipe adds the
  installed driver, as the tracking server does), and `make tune-status STORAGE=...` reads the study;
- while `make server` (store in PostgreSQL) and `make tune-status` run, `ps` (psutil's cmdline of every
  process, sampled) never shows the password, nor does anything they print; their lines show it masked."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import psutil
import pytest
from pipeline_repo import PROJECT, SERVER_ENV, free_port, stage_env, wait_until_healthy
from team_servers import PostgresCluster

pytestmark = pytest.mark.e2e

TOKEN = secrets.token_hex(6)  # unique: any piece of the password that leaks carries it
PASSWORD = f"p@ss/w:rd%40x-{TOKEN}"
# As a user writes it into a URL: '%' and '@' %-encoded (SQLAlchemy decodes them); '/' and ':' left raw,
# which SQLAlchemy takes inside a password and the old hand-made masking did not.
WRITTEN = PASSWORD.replace("%", "%25").replace("@", "%40")
FORMS = (PASSWORD, WRITTEN, urllib.parse.quote(PASSWORD, safe=""), TOKEN)


@pytest.fixture(scope="module")
def pg():
    cluster = PostgresCluster.started()  # skips (fails under CI=true) without Debian's postgresql
    try:
        cluster.create_role("tuner", PASSWORD, "studies", "tracking")
        yield cluster
    finally:
        cluster.stop()


def url(pg: PostgresCluster, db: str) -> str:
    return f"postgresql://tuner:{WRITTEN}@127.0.0.1:{pg.port}/{db}"


def leaks(text: str) -> list[str]:
    return [form for form in FORMS if form in text]


class CommandLines:
    """Every process's command line (what `ps` shows every local user), sampled in a thread until stopped."""

    def __init__(self, interval: float = 0.05):
        self.seen: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            for process in psutil.process_iter(["cmdline"]):
                cmdline = process.info.get("cmdline")
                if cmdline:
                    self.seen.add("\0".join(cmdline))
            self.samples += 1
            time.sleep(interval)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def leaked(self) -> list[str]:
        return [line.replace("\0", " ") for line in self.seen if leaks(line)]


def make_dir(tmp_path: Path) -> Path:
    """The Makefile with what its variables read, in a directory of the test's (the package from PROJECT/src)."""
    for name in ("Makefile", "requirements.txt", "requirements.lock", "pyproject.toml"):
        shutil.copy(PROJECT / name, tmp_path / name)
    return tmp_path


def make_env(**extra: str) -> dict[str, str]:
    env = stage_env(PYTHONPATH=str(PROJECT / "src"), **extra)
    for name in ("STORAGE", "VAEPIPE_TUNE_STORAGE", "VAEPIPE_SERVER_STORE", "PGPASSWORD"):
        env.pop(name, None)
    env.update(extra)
    return env


def a_study(storage_url: str, name: str) -> None:
    import optuna

    from vaepipe.tune.storage import open_storage

    study = optuna.create_study(study_name=name, storage=open_storage(storage_url), direction="minimize",
                                load_if_exists=True)
    study.optimize(lambda trial: (trial.suggest_float("x", 0.0, 1.0) - 0.5) ** 2, n_trials=2)


@pytest.mark.parametrize("who", ["tuner", "superuser"])
def test_an_optuna_storage_given_as_a_postgresql_url_works(pg, who):
    """`postgresql://user:pass@127.0.0.1:port/db` as docs/search.md prints it: no driver named. Before,
    Optuna's SQLAlchemy picked psycopg 3 (not installed): `ImportError: Failed to import DB access module`."""
    from vaepipe.tune.status import status
    from vaepipe.tune.storage import load_study

    storage_url = url(pg, "studies") if who == "tuner" else pg.url("postgres")
    a_study(storage_url, f"study-{who}")
    assert len(load_study(f"study-{who}", storage_url).trials) == 2
    report = status(f"study-{who}", storage_url)
    assert f"study study-{who}: 2 trials" in report
    assert f"storage postgresql://{'tuner' if who == 'tuner' else 'postgres'}:***@127.0.0.1:{pg.port}/" in report
    assert not leaks(report) and pg.password not in report


@pytest.mark.parametrize("given", ["environment", "argument"])
def test_make_tune_status_reads_a_postgresql_study_without_showing_the_password(pg, tmp_path, given):
    """STORAGE= in the environment (`STORAGE=... make tune-status`): in no process's command line while it
    runs; as a make argument (make's own argv then holds it, as docs/search.md warns): it still works."""
    a_study(url(pg, "studies"), f"make-{given}")
    directory = make_dir(tmp_path)
    argv = ["make", "-s", "-o", "setup", "tune-status", f"STUDY=make-{given}"]
    env = make_env(STORAGE=url(pg, "studies")) if given == "environment" else make_env()
    if given == "argument":
        argv.append(f"STORAGE={url(pg, 'studies')}")
    with CommandLines() as ps:
        result = subprocess.run(argv, cwd=directory, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"storage postgresql://tuner:***@127.0.0.1:{pg.port}/studies" in result.stdout, result.stdout
    assert f"study make-{given}: 2 trials" in result.stdout
    assert not leaks(result.stdout + result.stderr)
    assert ps.samples >= 5, ps.samples
    if given == "environment":
        assert not ps.leaked(), ps.leaked()
    else:  # only make itself, whose arguments the user typed
        assert all(line.startswith("make ") for line in ps.leaked()), ps.leaked()


def test_make_server_on_postgresql_shows_the_password_in_no_command_line_and_no_output(pg, tmp_path):
    directory = make_dir(tmp_path)
    port = free_port()
    env = make_env(VAEPIPE_SERVER_STORE=url(pg, "tracking"), VAEPIPE_SERVER_ARTIFACTS=str(tmp_path / "artifacts"),
                   VAEPIPE_SERVER_AUTH="none", **SERVER_ENV)
    log = tmp_path / "server.log"
    with CommandLines() as ps, log.open("w") as out:
        process = subprocess.Popen(["make", "-s", "-o", "setup", "server", "HOST=127.0.0.1", f"PORT={port}"],
                                   cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_healthy(f"http://127.0.0.1:{port}", process, timeout=240)
            import mlflow

            client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
            experiment = client.create_experiment(f"secrets-{TOKEN[:4]}")  # the store in PostgreSQL works
            assert client.get_experiment(experiment).name == f"secrets-{TOKEN[:4]}"
            time.sleep(2)  # the server's worker processes, sampled a while longer
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    output = log.read_text()
    assert f"store postgresql://tuner:***@127.0.0.1:{pg.port}/tracking," in output, output[-3000:]
    assert not leaks(output), output[-3000:]
    assert any("mlflow" in line and "server" in line for line in ps.seen), "the sampler never saw the server"
    assert not ps.leaked(), ps.leaked()


def test_make_tune_on_postgresql_shows_the_password_in_no_command_line_and_no_output(pg, quick, tmp_path_factory):
    """A real study: one trial as a DVC experiment up to train, its storage the PostgreSQL role's, given in the
    environment (`STORAGE=postgresql://... make tune`). Every process (make, the driver, dvc, the train stage)
    sampled while it runs: the password is in none of their command lines, nor in anything printed. The
    repository: a copy of the session's reproduced `quick` one."""
    import optuna
    from pipeline_repo import copy_repo
    from test_tune import write_search

    repo = copy_repo(quick, tmp_path_factory.mktemp("tune-pg") / "repo")
    for name in ("Makefile", "requirements.txt", "requirements.lock"):
        shutil.copy(PROJECT / name, repo / name)
    env = make_env(STORAGE=url(pg, "studies"))
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=repo, env=env, check=True, capture_output=True)
    write_search(repo, study="pg-study", trials=1)
    env["PYTHONPATH"] = "src"
    with CommandLines() as ps:
        tune = subprocess.run(["make", "-s", "-o", "setup", "tune"], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=1500)
    output = tune.stdout + tune.stderr
    assert tune.returncode == 0, output[-3000:]
    assert f"storage postgresql://tuner:***@127.0.0.1:{pg.port}/studies" in output, output[-3000:]
    assert not leaks(output), output[-3000:]
    assert any("stages/train.py" in line for line in ps.seen), "the sampler never saw the trial's train stage"
    assert not ps.leaked(), ps.leaked()
    study = optuna.load_study(study_name="pg-study", storage=f"postgresql+psycopg2://tuner:{WRITTEN}@127.0.0.1:{pg.port}/studies")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"]
