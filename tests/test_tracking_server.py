"""`make server`'s settings (tracking/server.py): the store, artifacts and auth it passes to `mlflow server`,
the one line it prints, the basic-auth config MLflow reads back, and passwords masked or kept off the
command line. The servers themselves run in tests/e2e/test_team.py."""

from __future__ import annotations

import pytest

from vaepipe.errors import ConfigError
from vaepipe.tracking import masked_url, server
from vaepipe.tracking.server import server_command, with_driver


@pytest.mark.parametrize("url, shown", [
    ("postgresql://mlflow:s3cr%2Ft@db.example:5432/mlflow", "postgresql://mlflow:***@db.example:5432/mlflow"),
    ("http://alice:pw@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
    ("postgresql://mlflow@db/mlflow", "postgresql://mlflow@db/mlflow"),  # no password: as it is
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://127.0.0.1:5000/a:b@c", "http://127.0.0.1:5000/a:b@c"),  # '@' in a path is no userinfo
])
def test_masked_url_hides_only_the_password(url, shown):
    assert masked_url(url) == shown


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root of its own (dvc.yaml) as the current directory, and no VAEPIPE_SERVER_*/MLflow auth env."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    for name in ("VAEPIPE_SERVER_STORE", "VAEPIPE_SERVER_ARTIFACTS", "VAEPIPE_SERVER_AUTH", "MLFLOW_AUTH_ADMIN_USERNAME",
                 "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_FLASK_SERVER_SECRET_KEY", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_the_default_server_is_sqlite_with_served_artifacts_and_no_logins(project):
    env: dict[str, str] = {}
    command, line = server_command("127.0.0.1", 5000, env)
    assert command == ["mlflow", "server", "--host", "127.0.0.1", "--port", "5000", "--workers", "1",
                       "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}",
                       "--artifacts-destination", str(project / "mlartifacts"), "--serve-artifacts"]
    assert line == (f">> mlflow server on http://127.0.0.1:5000: store sqlite:///{project / 'mlflow.db'}, artifacts "
                    f"{project / 'mlartifacts'} (served to clients), auth none (anyone who reaches the port can log "
                    "and register models)")
    assert env == {}


def test_basic_auth_gets_its_own_config_that_mlflow_reads_back(project, monkeypatch):
    monkeypatch.setenv("VAEPIPE_SERVER_AUTH", "basic")
    monkeypatch.setenv("VAEPIPE_SERVER_ARTIFACTS", "relative/artifacts")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-pw-1234")
    monkeypatch.setenv("VAEPIPE_SERVER_STORE", f"sqlite:///{project / 'team' / 'mlflow.db'}")
    env: dict[str, str] = {}
    command, line = server_command("127.0.0.1", 5001, env)
    assert command[-2:] == ["--app-name", "basic-auth"]
    assert command[command.index("--artifacts-destination") + 1] == str(project / "relative/artifacts")
    assert (project / "team").is_dir()  # SQLite creates the file, not its directory
    assert line.endswith(f"auth basic (admin 'admin', new users READ, users in sqlite:///{project / 'team' / 'basic_auth.db'})")
    assert env["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin" and len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64
    assert "admin-pw-1234" not in " ".join(command) + line + str(env)
    from mlflow.server.auth.config import read_auth_config  # what the server reads

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", env["MLFLOW_AUTH_CONFIG_PATH"])
    config = read_auth_config()
    assert config.database_uri == f"sqlite:///{project / 'team' / 'basic_auth.db'}"
    assert (config.default_permission, config.admin_username, config.admin_password) == ("READ", "admin", "admin-pw-1234")
    assert config.auth_cache_ttl_seconds == server.AUTH_CACHE_TTL_S > 0  # a login is checked once a minute, not per request


def test_a_postgresql_password_goes_to_pgpassword_not_the_command_line(project, monkeypatch):
    """The store's check needs a database that answers (the e2e test has one): here only what is passed on."""
    monkeypatch.setattr(server, "check_store", lambda url: None)
    monkeypatch.setenv("VAEPIPE_SERVER_STORE", "postgresql://mlflow:pa%25ss@db.example:5432/mlflow")
    monkeypatch.setenv("VAEPIPE_SERVER_AUTH", "basic")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "admin-pw-1234")
    env: dict[str, str] = {}
    command, line = server_command("127.0.0.1", 5000, env)
    assert command[command.index("--backend-store-uri") + 1] == "postgresql+psycopg2://mlflow@db.example:5432/mlflow"
    assert env["PGPASSWORD"] == "pa%ss"
    assert "store postgresql://mlflow:***@db.example:5432/mlflow," in line
    assert "users in postgresql://mlflow:***@db.example:5432/mlflow)" in line  # the store's own database
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", env["MLFLOW_AUTH_CONFIG_PATH"])
    assert read_auth_config().database_uri == "postgresql+psycopg2://mlflow@db.example:5432/mlflow"


def test_with_driver_names_the_pinned_postgresql_driver():
    assert with_driver("postgresql://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert with_driver("postgresql+psycopg2://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert with_driver("sqlite:////x/mlflow.db") == "sqlite:////x/mlflow.db"


def test_an_unknown_auth_mode_is_a_config_error(project, monkeypatch):
    monkeypatch.setenv("VAEPIPE_SERVER_AUTH", "ldap")
    with pytest.raises(ConfigError, match=r"^VAEPIPE_SERVER_AUTH='ldap' is not one of none, basic$"):
        server_command("127.0.0.1", 5000, {})
