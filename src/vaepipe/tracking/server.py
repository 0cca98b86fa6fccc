"""`make server`: the MLflow server's store, artifact destination and logins, from the environment.

- VAEPIPE_SERVER_STORE: any SQLAlchemy URL MLflow accepts (`postgresql://user:pw@host/db`); default
  the project's own SQLite `mlflow.db`. Checked before MLflow starts: a store that does not answer
  fails in seconds with one line naming it, its password masked.
- VAEPIPE_SERVER_ARTIFACTS: where the server keeps artifacts (a directory or a URI such as s3://...);
  default `mlartifacts/`. The server proxies them (`--serve-artifacts`): clients never see that path.
- VAEPIPE_SERVER_AUTH=basic: MLflow's basic-auth app (`mlflow[auth]`), admin MLFLOW_AUTH_ADMIN_USERNAME
  (default admin) / MLFLOW_AUTH_ADMIN_PASSWORD, required. New users get READ. Its user database is
  `basic_auth.db` beside a SQLite store, or the store's own database otherwise (its tables and its
  migration history, `alembic_version_auth`, are apart from the tracking store's).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from vaepipe.errors import ConfigError, TrackingError
from vaepipe.tracking.store import check_password_encoding, local_store, masked_url, with_driver
from vaepipe.tracking.store import redact_password as redact

STORE_ENV = "VAEPIPE_SERVER_STORE"
ARTIFACTS_ENV = "VAEPIPE_SERVER_ARTIFACTS"
AUTH_ENV = "VAEPIPE_SERVER_AUTH"
AUTH_MODES = ("none", "basic")
STORE_TIMEOUT_S = 5
AUTH_CACHE_TTL_S = 60


def server_store() -> str:
    return os.environ.get(STORE_ENV) or local_store()[0]


def server_artifacts() -> str:
    """An absolute directory (relative ones are from the current directory) or a URI, as given."""
    given = os.environ.get(ARTIFACTS_ENV)
    if not given:
        return str(local_store()[1])
    if masked_url(given) != given:  # it would be on mlflow server's command line, which `ps` shows to all
        raise ConfigError(f"{ARTIFACTS_ENV}={masked_url(given)} holds a password: it would be on the server's command "
                          "line; give the artifact store's credentials in its own environment variables "
                          "(e.g. AWS_SECRET_ACCESS_KEY for s3://)")
    return given if "://" in given else str(Path(given).expanduser().resolve())


def auth_mode() -> str:
    mode = os.environ.get(AUTH_ENV, "").strip().lower() or "none"
    if mode not in AUTH_MODES:
        raise ConfigError(f"{AUTH_ENV}={os.environ[AUTH_ENV]!r} is not one of {', '.join(AUTH_MODES)}")
    return mode


def check_store(url: str) -> None:
    """Connect to the store once (a 5 s connect timeout), so a wrong URL fails in seconds, not after
    MLflow's own retries; ConfigError for a URL that is not one, TrackingError for one that does not answer."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"{STORE_ENV}={masked_url(url)} is not a SQLAlchemy database URL "
                          "(e.g. postgresql://user@host:5432/mlflow or sqlite:////path/mlflow.db)") from None
    check_password_encoding(url, STORE_ENV)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return
    connect_args = {"connect_timeout": STORE_TIMEOUT_S} if parsed.get_backend_name() in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(with_driver(url), connect_args=connect_args, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except Exception as error:  # the driver's own errors (psycopg2.OperationalError, ...) or a missing driver
        reason = redact(str(getattr(error, "orig", None) or error), url).strip().splitlines() or [type(error).__name__]
        raise TrackingError(f"MLflow server store {masked_url(url)} is unreachable: {reason[0].strip()} "
                            f"(set {STORE_ENV} to a database that answers)") from None


def _password_to_env(url: str, env: dict[str, str]) -> str:
    """A PostgreSQL URL's password goes to PGPASSWORD (libpq reads it), so it is not on the server's
    command line, which every local user can read (ps)."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "postgresql" or parsed.password is None:
        return url
    env["PGPASSWORD"] = str(parsed.password)
    return parsed._replace(password=None).render_as_string(hide_password=False)


def auth_database(store: str) -> str:
    """Where the basic-auth app keeps its users: beside a SQLite store, else in the store's database."""
    if store.startswith("sqlite:///"):
        return f"sqlite:///{Path(store.removeprefix('sqlite:///')).parent / 'basic_auth.db'}"
    return store


def _auth_config(database_uri: str, admin: str) -> Path:
    """MLflow's basic_auth.ini with vaepipe's user database (MLFLOW_AUTH_CONFIG_PATH points to it), in
    the user's cache: one file per content, written atomically, so servers on different stores coexist."""
    from vaepipe.paths import cache_dir

    text = ("[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {database_uri.replace('%', '%%')}\n"  # configparser's interpolation
            f"admin_username = {admin}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            # MLflow checks the password hash (PBKDF2) on every request: 0.3-0.4 s of server CPU here,
            # most of a stage's logging time. Its own cache keeps a successful check for a minute; a
            # password changed through the API takes effect at once (one server worker).
            f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n")
    directory = cache_dir() / "mlflow-auth"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"basic_auth-{hashlib.sha256(text.encode()).hexdigest()[:12]}.ini"
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return path


def server_command(host: str, port: int, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """The `mlflow server` command line and the one line that says what it runs with. Settings for the
    server's environment (PGPASSWORD, the auth config, the admin, a CSRF key) go into `env`."""
    env = os.environ if env is None else env
    store, artifacts, mode = server_store(), server_artifacts(), auth_mode()
    if mode == "basic":
        admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin"
        if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
            raise ConfigError(f"{AUTH_ENV}=basic needs the admin's password in MLFLOW_AUTH_ADMIN_PASSWORD "
                              f"(admin user {admin!r}, MLFLOW_AUTH_ADMIN_USERNAME); not starting the server")
    check_store(store)
    backend = _password_to_env(with_driver(store), env)
    if masked_url(backend) != backend:  # a password libpq cannot take apart (MySQL, ...): the environment, not ps
        env["MLFLOW_BACKEND_STORE_URI"] = backend  # mlflow server's own variable for --backend-store-uri
        store_option = []
    else:
        store_option = ["--backend-store-uri", backend]
    command = ["mlflow", "server", "--host", host, "--port", str(port), "--workers", "1", *store_option,
               "--artifacts-destination", artifacts, "--serve-artifacts"]
    auth = "none (anyone who reaches the port can log and register models)"
    if mode == "basic":
        users = auth_database(store)
        if os.environ.get("MLFLOW_AUTH_CONFIG_PATH"):
            config, where = os.environ["MLFLOW_AUTH_CONFIG_PATH"], "as MLFLOW_AUTH_CONFIG_PATH says"
        else:
            config = str(_auth_config(_password_to_env(with_driver(users), {}), admin))
            where = f"in {masked_url(users)}"
        env["MLFLOW_AUTH_CONFIG_PATH"] = config
        env["MLFLOW_AUTH_ADMIN_USERNAME"] = admin
        # The auth app's CSRF key: MLflow refuses to start without one; one per start unless given.
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
        command += ["--app-name", "basic-auth"]
        auth = f"basic (admin {admin!r}, new users READ, users {where})"
    line = (f">> mlflow server on http://{host}:{port}: store {masked_url(store)}, artifacts {artifacts} "
            f"(served to clients), auth {auth}")
    return command, line
