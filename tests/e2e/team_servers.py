"""Real team-server parts for end-to-end tests: a throw-away PostgreSQL cluster and `make server`'s module
(`python -m vaepipe.tracking server`) on it with MLflow's basic auth, both on 127.0.0.1.

    pg = PostgresCluster.started()               # skips (fails under CI=true) without Debian's postgresql
    server = TeamServer(tmp, store=pg.url("mlflow"), artifacts=tmp / "artifacts")
    server.start(); server.wait_healthy()        # ~25-40 s
    server.create_user("alice", "alice-pw-123", experiment_permission="EDIT", model_permission="EDIT")
    run_stage(repo, "train", **server.client_env("alice", "alice-pw-123"))
    ...
    server.stop(); pg.stop()

`PostgresCluster`: `initdb` + `pg_ctl` from /usr/lib/postgresql/<version>/bin in a fresh directory under
/tmp owned by an unprivileged user (`postgres` when the tests run as root, as CI does: PostgreSQL refuses
to run as root), on a free port, password logins over TCP (`url()` carries the password), `stop()`
removes it. `TeamServer`: the server module with VAEPIPE_SERVER_STORE / _ARTIFACTS / _AUTH and the admin
from MLFLOW_AUTH_ADMIN_USERNAME / _PASSWORD; its stdout+stderr go to `log` (`output()` reads it).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pipeline_repo import PROJECT, SERVER_ENV, VENV_BIN, free_port, stage_env, wait_until_healthy

ADMIN = "admin"
INSTALL_HINT = "install Debian's postgresql (`apt-get install -y -qq postgresql`, as .ci/run does)"


def missing(reason: str) -> None:
    """Skip naming what is missing; under CI=true fail instead (as tests/conftest.py's missing_prerequisite)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"missing prerequisite (CI=true, so this fails rather than skips): {reason}", pytrace=False)
    pytest.skip(reason)


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl (Debian keeps them off PATH)."""
    found = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb") if (path.parent / "pg_ctl").exists()]
    return max(found, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0, default=None)


class PostgresCluster:
    """A PostgreSQL cluster of its own: `PostgresCluster.started()` (or `start()`), `url(db)`, `stop()`."""

    def __init__(self, bin_dir: Path, user: str | None = None):
        self.bin = bin_dir
        # PostgreSQL refuses to run as root: as root, run it as Debian's `postgres` user.
        self.user = user or ("postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.superuser = "postgres"
        self.password = "pg-" + secrets.token_hex(8)
        self.root: Path | None = None

    @classmethod
    def started(cls) -> PostgresCluster:
        """A running cluster, or a skip (a failure under CI=true) saying what to install."""
        bin_dir = postgres_bin()
        if bin_dir is None:
            missing(f"PostgreSQL's initdb/pg_ctl not found under /usr/lib/postgresql/*/bin: {INSTALL_HINT}")
        cluster = cls(bin_dir)
        try:
            pwd.getpwnam(cluster.user)
        except KeyError:
            missing(f"no user {cluster.user!r} to run PostgreSQL as (it refuses root): {INSTALL_HINT}")
        cluster.start()
        return cluster

    def _as_user(self, *command: str | Path, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(part) for part in command]
        if os.geteuid() == 0 and self.user != "root":
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check, cwd="/")

    def start(self) -> None:
        """initdb (scram passwords over TCP, trust on its own socket) and `pg_ctl start -w`, then `createdb mlflow`."""
        # Not under pytest's tmp dirs: those are root's, mode 0700, and the server runs as another user.
        self.root = Path(tempfile.mkdtemp(prefix="vaepipe-pg-"))
        owner = pwd.getpwnam(self.user)
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        (self.root / "pwfile").write_text(self.password + "\n")
        os.chown(self.root / "pwfile", owner.pw_uid, owner.pw_gid)
        self._as_user(self.bin / "initdb", "-D", self.root / "data", "-U", self.superuser, "--pwfile", self.root / "pwfile",
                      "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "-E", "UTF8", "--locale=C")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses={self.host} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        started = self._as_user(self.bin / "pg_ctl", "-D", self.root / "data", "-o", options, "-l", self.root / "server.log",
                                "start", "-w", "-t", "60", check=False)
        assert started.returncode == 0, started.stdout + started.stderr + self.log()
        self.createdb("mlflow")

    def createdb(self, name: str) -> None:
        self._as_user(self.bin / "createdb", "-h", self.root, "-p", str(self.port), "-U", self.superuser, name)

    def create_role(self, name: str, password: str, *databases: str) -> None:
        """A login role with `password` (any characters but a quote) owning new databases `databases`. The SQL
        goes to psql on stdin, over the trusted socket: the password is on no command line."""
        argv = [str(self.bin / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", self.superuser, "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-q"]
        if os.geteuid() == 0 and self.user != "root":
            argv = ["runuser", "-u", self.user, "--", *argv]
        for statement in [f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
                          *(f"CREATE DATABASE {db} OWNER {name}" for db in databases)]:  # one per call: no transaction
            subprocess.run(argv, input=statement + ";\n", capture_output=True, text=True, timeout=60, check=True, cwd="/")

    def url(self, db: str = "mlflow", password: str | None = None) -> str:
        """A SQLAlchemy URL of database `db` over TCP, with the superuser's password (or `password`)."""
        return f"postgresql://{self.superuser}:{password or self.password}@{self.host}:{self.port}/{db}"

    def log(self) -> str:
        try:
            return (self.root / "server.log").read_text()
        except (OSError, TypeError):
            return ""

    def stop(self) -> None:
        """`pg_ctl stop -m immediate` (a test cluster needs no checkpoint) and remove its directory."""
        if self.root is None:
            return
        self._as_user(self.bin / "pg_ctl", "-D", self.root / "data", "stop", "-m", "immediate", "-w", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


def server_command(port: int) -> list[str]:
    """What `make server HOST=127.0.0.1 PORT=port` runs (the Makefile's server target)."""
    return [str(VENV_BIN / "python"), "-m", "vaepipe.tracking", "server", "--host", "127.0.0.1", "--port", str(port)]


def server_env(store: str | None = None, artifacts: Path | str | None = None, auth: str | None = "basic",
               admin_password: str | None = None, **extra: str) -> dict[str, str]:
    """The environment `make server` gets: the project's src first, the VAEPIPE_SERVER_* settings given,
    the admin (MLFLOW_AUTH_ADMIN_USERNAME=admin, _PASSWORD if given), no MLflow job runner."""
    settings = {"VAEPIPE_SERVER_STORE": store, "VAEPIPE_SERVER_ARTIFACTS": str(artifacts) if artifacts else None,
                "VAEPIPE_SERVER_AUTH": auth, "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN if auth else None,
                "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password}
    return stage_env(PYTHONPATH=str(PROJECT / "src"), **SERVER_ENV,
                     **{key: value for key, value in settings.items() if value is not None}, **extra)


class TeamServer:
    """`make server`'s module on 127.0.0.1 with a store, an artifacts destination and basic auth."""

    def __init__(self, root: Path, store: str, artifacts: Path | str, auth: str | None = "basic", **extra_env: str):
        self.root = root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.admin_password = "admin-" + secrets.token_hex(8)
        self.artifacts = Path(artifacts)
        self.env = server_env(store, artifacts, auth, self.admin_password if auth else None, **extra_env)
        self.log = root / f"team-server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("w") as out:
            self.process = subprocess.Popen(server_command(self.port), cwd=self.root, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 180) -> None:
        try:
            wait_until_healthy(self.base, self.process, timeout=timeout)
        except (AssertionError, TimeoutError) as error:
            raise AssertionError(f"{error}\n{self.output()[-3000:]}") from None

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        """SIGKILL to the whole group: mlflow's graceful shutdown takes up to a minute."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def client_env(self, username: str | None = None, password: str | None = None) -> dict[str, str]:
        """What a stage or `make compare` needs to log as `username`: MLflow's own variables only."""
        env = {"MLFLOW_TRACKING_URI": self.base}
        if username is not None:
            env["MLFLOW_TRACKING_USERNAME"] = username
        if password is not None:
            env["MLFLOW_TRACKING_PASSWORD"] = password
        return env

    @contextmanager
    def as_user(self, username: str, password: str) -> Iterator[None]:
        """In-process MLflow calls in the block go to this server as `username` (MLflow reads the env per call)."""
        saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def as_admin(self):
        """as_user with the admin's credentials (MLFLOW_AUTH_ADMIN_USERNAME=admin, a random password)."""
        return self.as_user(ADMIN, self.admin_password)

    def create_user(self, username: str, password: str, experiment_permission: str | None = None,
                    model_permission: str | None = None, experiment: str = "vaepipe") -> None:
        """A user (the server gives new users READ). `experiment_permission` (READ, EDIT, MANAGE) is granted on
        `experiment`, which the admin creates first if it does not exist; `model_permission` on every registered
        model (a wildcard grant: vaepipe-vae may not exist yet). Train needs EDIT on both once vaepipe-vae exists
        (its creator gets MANAGE on it)."""
        import mlflow
        from mlflow.server import get_app_client

        with self.as_admin():
            auth = get_app_client("basic-auth", tracking_uri=self.base)
            auth.create_user(username, password)
            if experiment_permission:
                client = mlflow.MlflowClient(self.base)
                found = client.get_experiment_by_name(experiment)
                experiment_id = found.experiment_id if found else client.create_experiment(experiment)
                auth.grant_user_permission(username, "experiment", experiment_id, experiment_permission)
            if model_permission:
                auth.grant_user_permission(username, "registered_model", "*", model_permission)
