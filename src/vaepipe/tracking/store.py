"""Where the MLflow store is and how a stage reaches it: the URI, the fail-fast check, the retries.

Store: `MLFLOW_TRACKING_URI` if set (e.g. a team's `mlflow server`), else `mlflow.db` (SQLite) with
artifacts in `mlartifacts/`, both at the *main* repository root, also when DVC runs a queued
experiment in a temporary copy (which is deleted afterwards, and would take relative paths with it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

# A server that is down at the start fails the stage at once: check_reachable probes /health once,
# without retries, before any work. Every later call rides out a blip with MLflow's own retries,
# which it reads from these documented variables on each request: 5 retries with urllib3's backoff
# of 0, 2f, 4f, 8f, 16f s, f = 4, about 2 minutes in all (see retry_budget_s).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "4")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

import mlflow  # noqa: E402
import requests  # noqa: E402  (what MLflow's artifact uploads raise for an HTTP error answer)

from vaepipe.errors import ConfigError, TrackingError, cause_of_type, deferred_signals  # noqa: E402
from vaepipe.paths import main_repo_root  # noqa: E402

EXPERIMENT_NAME = os.environ.get("VAEPIPE_EXPERIMENT", "vaepipe")
HEALTH_TIMEOUT_S = 5


class TrackingUnavailable(TrackingError):
    """The tracking server stopped answering mid-stage and did not come back within the retries."""


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def retry_budget_s() -> float:
    """Seconds MLflow waits in all between the tries of one HTTP call (request timeouts come on top)."""
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = float(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    # urllib3: no wait before the first retry, then factor * 2**(n-1), each wait capped at 120 s.
    return sum(min(120.0, factor * 2 ** (n - 1)) for n in range(2, retries + 1))


@contextmanager
def single_try() -> Iterator[None]:
    """MLflow calls in the block get no retries (MLflow reads the variable on each request)."""
    previous = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = previous


@contextmanager
def store_call(what: str) -> Iterator[None]:
    """One MLflow call of a running stage: its final error (after MLflow's retries) becomes one line
    naming the store, or for an artifact the server that answered and the status. SQLite writes hold
    Ctrl-C (an interrupted write leaves the database locked); HTTP calls do not, so Ctrl-C during a
    2-minute retry still stops the stage at once."""
    uri = shown_uri()
    try:
        with (nullcontext() if is_http(uri) else deferred_signals()):
            yield
    except requests.exceptions.HTTPError as error:  # an artifact upload's answer (413, 507, ...)
        raise TrackingError(http_error_line(error, what)) from None
    except requests.exceptions.RequestException as error:  # no answer from an artifact server
        raise TrackingError(f"MLflow artifact store {_server_of(getattr(error.request, 'url', None)) or uri} did not "
                            f"answer while {what}: {_first_line(error)}") from None
    except mlflow.exceptions.MlflowException as error:
        failure = request_failure(error)
        if isinstance(failure, requests.exceptions.RetryError):  # MLflow retried an HTTP error answer (503, ...)
            url = getattr(failure.request, "url", None)
            run = mlflow.active_run()
            resume = f"; once it answers, `dvc repro` continues run {run.info.run_id}" if run else ""
            raise TrackingUnavailable(  # like a server that stopped answering: the run stays open
                f"MLflow {'artifact store' if url and '/artifacts/' in url else 'tracking server'} "
                f"{_server_of(url) or uri} answered {_retried_status(failure)} to every try "
                f"while {what} ({retry_budget_s():.0f} s of retries){resume}"
            ) from None
        if server_unreachable(error):
            run = mlflow.active_run()
            resume = f"; once it is up, `dvc repro` continues run {run.info.run_id}" if run else ""
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} stopped answering while {what} and was not back after "
                f"{retry_budget_s():.0f} s of retries{resume}"
            ) from None
        raise TrackingError(f"MLflow store {uri}: {what}: {_first_line(error)}") from None


# Answers a retry may cure. MLflow retries its own list of them (408, 429, 500, 502, 503, 504) inside
# the call; vaepipe retries an artifact upload answered with another 5xx (507, ...) the same way.
_MLFLOW_RETRIED = (408, 429, 500, 502, 503, 504)
_TRANSIENT = frozenset({408, 429}) | frozenset(range(500, 600))
# What a call that got no answer ends with: refused or dropped connections, timeouts, a body cut off.
_NO_ANSWER = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
              requests.exceptions.ChunkedEncodingError)


def request_failure(error: BaseException) -> requests.exceptions.RequestException | None:
    """The requests exception an MLflow error came from: MLflow's HTTP client raises MlflowException
    while handling it, so it is the error's cause or context. None: the server answered (or no HTTP)."""
    return cause_of_type(error, requests.exceptions.RequestException)


def _retried_status(failure: requests.exceptions.RetryError) -> str:
    """"HTTP 503" for the line: urllib3 keeps the last status only in its ResponseError's text, so it is
    read from there for the message alone (the failure is classified by its type)."""
    reason = getattr(failure.args[0] if failure.args else None, "reason", None)
    status = re.search(r"\b([1-5]\d\d)\b", str(reason or ""))
    return f"HTTP {status.group(1)}" if status else "an HTTP error status"


def retry_http_errors(call: Callable[[], object]) -> None:
    """Run `call` (an artifact upload); if it is answered with a 5xx, 408 or 429, try again within the
    retry budget, as MLflow's own retries wait (0, 2f, 4f, ... s for MLFLOW_HTTP_REQUEST_MAX_RETRIES
    retries). Any other answer (413: too large) is final at once. The last error is raised."""
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = float(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    for attempt in range(retries + 1):
        try:
            call()
            return
        except requests.exceptions.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status not in _TRANSIENT or attempt == retries:
                raise
        time.sleep(0.0 if attempt == 0 else min(120.0, factor * 2 ** attempt))


def http_error_line(error: requests.exceptions.HTTPError, what: str) -> str:
    """One line naming the server that answered, its status and what was being logged; no credentials."""
    response = error.response
    url = getattr(response, "url", None) or getattr(error.request, "url", None)
    status = f"HTTP {response.status_code} {response.reason or ''}".strip() if response is not None else _first_line(error)
    retried = (response is not None and response.status_code in _TRANSIENT
               and int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) > 0)
    return (f"MLflow artifact store {_server_of(url) or shown_uri()} answered {status} while {what}"
            + (f" ({retry_budget_s():.0f} s of retries)" if retried else ""))


def _server_of(url: str | None) -> str | None:
    """scheme://host:port of a URL, without any user:password in it."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [""])[0]


def server_unreachable(error: Exception) -> bool:
    """An HTTP tracking server's call that got no answer once MLflow's retries ran out (or, with no
    retry, when an answer was cut off mid-body): by the type of the requests exception behind it."""
    return is_http(tracking_uri()) and isinstance(request_failure(error), _NO_ANSWER)


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{main_repo_root() / 'mlflow.db'}"


def artifact_location() -> str | None:
    """Local stores get an explicit artifact root at the main repo; a server decides its own."""
    if is_http(tracking_uri()):
        return None
    return (main_repo_root() / "mlartifacts").as_uri()


# ---- URLs as messages show them and as the drivers take them: one masking for every message (the stages,
# `make server`, `make tune`, `make tune-status`), parsed the way the code that connects parses them:
# SQLAlchemy's make_url for database URLs, urllib.parse for http(s) (what requests uses). A password may hold
# any character; written into a URL, '@', '/', ':' and '%' are %-encoded (p%40ss%2Fw%3Ard), which both parsers
# decode. A raw '@' in a password cannot be parsed by either (the driver takes what follows it for the host):
# the masking then hides everything up to the last '@', so no part of the password shows, and
# check_password_encoding refuses such a database URL in one line.

MASK = "***"
_HTTP = ("http", "https")


def _scheme(url: str) -> str | None:
    return url.split("://", 1)[0].lower() if "://" in url else None


def _passwords(url: str) -> list[str]:
    """Every form the URL's password may take in text: as written in the URL (up to the last `@`, see
    _userinfo) and decoded as the driver's parser decodes it (what it sends to the server)."""
    userinfo = _userinfo(url)
    if not userinfo or ":" not in userinfo:
        return []
    written = userinfo.split(":", 1)[1]
    found = [written, urllib.parse.unquote(written)]
    if _scheme(url) not in _HTTP:
        parsed = _database_url(url)
        if parsed is not None and parsed.password is not None:
            found.append(str(parsed.password))
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def _userinfo(url: str) -> str | None:
    """`user:password` of `scheme://user:password@host...` as written, found with the parser the driver
    uses, but ending at the *last* `@` before the query, so that a raw `@` in the password (which the
    parsers stop at) stays inside it. None: no userinfo."""
    scheme = _scheme(url)
    if scheme is None:
        return None
    rest = url.split("://", 1)[1]
    before = rest.split("?", 1)[0].split("#", 1)[0]
    if scheme in _HTTP:
        parts = urllib.parse.urlsplit(url)
        if "@" not in parts.netloc:
            try:
                _ = parts.port  # raises for a netloc that is no host:port
                return None  # a valid host:port: an '@' further on is in the path, not a password
            except ValueError:  # `alice:pa` is no host:port: a raw '/' in the password cut the netloc short
                pass
        # urllib ends the password at the netloc's last '@'; a raw '/' in it ends the netloc early, so
        # hide up to the last '@' of the whole URL (a path holding an '@' is hidden too: no harm).
        return before.rsplit("@", 1)[0] if "@" in before else None
    parsed = _database_url(url)
    if parsed is not None and parsed.password is None:
        return None
    # The parser refused the URL, or found a password (ending at the first '@'): hide up to the last one.
    return before.rsplit("@", 1)[0] if "@" in before else None


def _database_url(url: str):
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None


def masked_url(url: str) -> str:
    """`url` with its password shown as *** (a URL without a password, or a path, as it is)."""
    userinfo = _userinfo(url)
    if not userinfo or ":" not in userinfo:
        return url
    scheme = _scheme(url)
    if scheme in _HTTP and userinfo == urllib.parse.urlsplit(url).netloc.rpartition("@")[0]:
        parts = urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:{MASK}@{parts.netloc.rsplit('@', 1)[1]}"))
    parsed = _database_url(url) if scheme not in _HTTP else None
    if parsed is not None and "@" not in userinfo:
        return parsed.render_as_string(hide_password=True)
    # A raw '@' in a database password, a raw '/' in an http one, or a URL the parser refused: the
    # parser's split would show part of the password, so everything up to the last '@' is hidden.
    written_scheme, rest = url.split("://", 1)
    return f"{written_scheme}://{userinfo.split(':', 1)[0]}:{MASK}@{rest[len(userinfo) + 1:]}"


def redact_password(text: str, url: str) -> str:
    """`text` (an error message, a banner) with `url` masked and every form of its password as ***."""
    text = text.replace(url, masked_url(url))
    for secret in _passwords(url):
        text = text.replace(secret, MASK)
    return text


def check_password_encoding(url: str, name: str) -> None:
    """ConfigError if the password of `url` holds a raw `@`: every parser would split it there."""
    userinfo = _userinfo(url) if _scheme(url) not in _HTTP else None
    if userinfo and "@" in userinfo:
        raise ConfigError(f"{name}={masked_url(url)}: the password holds a raw '@', which ends it for the "
                          "database driver; write it %-encoded ('@' as %40, '/' as %2F, ':' as %3A, '%' as %25)")


def with_driver(url: str) -> str:
    """`postgresql://...` with the pinned driver (psycopg2-binary): SQLAlchemy 2.1's default for a URL
    without one is psycopg 3, which is not installed. A URL naming its driver, or not a database URL
    (a journal file's path), stays as it is. The server's store and Optuna's storage both go through here."""
    parsed = _database_url(url) if _scheme(url) not in (None, *_HTTP) else None
    if parsed is None or parsed.drivername != "postgresql" or importlib.util.find_spec("psycopg") is not None:
        return url
    return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def shown_uri() -> str:
    """The tracking URI as messages show it (a password in it masked)."""
    return masked_url(tracking_uri())


def check_reachable(uri: str) -> None:
    """Raise TrackingError at once if an HTTP tracking server does not answer /health, or does not take
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (a server with logins); one try, no retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S) as response:
            if response.status == 200:
                _check_login(uri)
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        problem = str(getattr(error, "reason", error))
    raise TrackingError(
        f"MLflow tracking server {masked_url(uri)} is unreachable ({problem}); start it (`make server`) "
        "or unset MLFLOW_TRACKING_URI to use the local mlflow.db"
    )


def _user() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or None


def _session() -> requests.Session:
    """A session that calls the server as MLflow's client does, from MLflow's documented variables: the
    login (MLFLOW_TRACKING_USERNAME / _PASSWORD, else MLFLOW_TRACKING_TOKEN), TLS (MLFLOW_TRACKING_INSECURE_TLS,
    MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_CLIENT_CERT_PATH) and its retries of the statuses it
    retries, with its backoff. Credentials go into the request only, never into a message."""
    from urllib3.util.retry import Retry

    session = requests.Session()
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, status_forcelist=_MLFLOW_RETRIED,
                  backoff_factor=float(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]), raise_on_status=False)
    for scheme in ("http://", "https://"):
        session.mount(scheme, requests.adapters.HTTPAdapter(max_retries=retry))
    user, password = _user(), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        session.auth = (user, password)
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        session.headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        session.verify = False
    elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
        session.verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
    if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
        session.cert = os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
    return session


def _get(uri: str, endpoint: str, **query: str) -> requests.Response:
    """One GET to the server's documented REST endpoint, with MLflow's credentials, retries and request
    timeout from the environment: check_reachable already failed fast on a server that is down, a
    refusal (401, 403) is not retried, and a busy server (two queued experiments starting at once on a
    loaded machine timed out a 5 s, no-retry check) is waited for. No answer, or a status MLflow
    retries answered to every try: one line."""
    try:
        with _session() as session:
            response = session.get(uri.rstrip("/") + endpoint, params=query or None,
                                   timeout=float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]))
    except requests.exceptions.RequestException as error:
        raise TrackingError(f"MLflow tracking server {masked_url(uri)} did not answer {endpoint} "
                            f"({retry_budget_s():.0f} s of retries): {type(error).__name__}") from None
    if response.status_code in _MLFLOW_RETRIED:
        raise TrackingError(f"MLflow tracking server {masked_url(uri)} answered HTTP {response.status_code} to "
                            f"every try of {endpoint} ({retry_budget_s():.0f} s of retries)")
    return response


def _refused(uri: str, what: str) -> TrackingError:
    user = _user()
    who = f"refused user {user!r}" if user else "needs a login (it has MLflow's basic auth)"
    return TrackingError(f"MLflow server {masked_url(uri)} {who}: {what}")


def _check_login(uri: str) -> None:
    """A server with MLflow's basic auth answers 401 without a login or to a wrong password."""
    response = _get(uri, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT_NAME)
    if response.status_code == 401:
        raise _refused(uri, ("wrong password or no such user (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
                             if _user() else "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"))
    if response.status_code == 403:
        raise _refused(uri, f"needs READ permission on experiment {EXPERIMENT_NAME}")


def check_can_log(registered_model: str | None = None) -> None:
    """check_reachable, then on a server with MLflow's basic auth: the user may write runs to the
    experiment (EDIT on it) and, for train, new versions of `registered_model`. An experiment or model
    that does not exist yet is the user's to create. One try each, before the stage does any work."""
    uri = tracking_uri()
    if not is_http(uri):
        return
    check_reachable(uri)
    user = _get(uri, "/api/2.0/mlflow/users/current")
    if user.status_code == 404 or not user.headers.get("Content-Type", "").startswith("application/json"):
        return  # no basic auth here: anyone who reaches the server may write
    if user.status_code != 200 or user.json().get("user", {}).get("is_admin"):
        return
    name = user.json()["user"]["username"]
    experiment = _get(uri, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=EXPERIMENT_NAME)
    checks = []
    if experiment.status_code == 200:
        checks.append(("experiment", experiment.json()["experiment"]["experiment_id"], f"experiment {EXPERIMENT_NAME}"))
    if registered_model and _get(uri, "/api/2.0/mlflow/registered-models/get", name=registered_model).status_code == 200:
        checks.append(("registered_model", registered_model, f"registered model {registered_model}"))
    for resource_type, resource_id, what in checks:
        answer = _get(uri, "/api/3.0/mlflow/users/permissions/get", username=name, resource_type=resource_type,
                      resource_id=resource_id)
        permission = answer.json().get("permission", "?") if answer.status_code == 200 else f"HTTP {answer.status_code}"
        if permission not in ("EDIT", "MANAGE"):
            raise _refused(uri, f"needs EDIT permission on {what} (has {permission}); an admin grants it")


def local_store() -> tuple[str, Path]:
    """The project's own store: SQLite at the main repository root, artifacts beside it."""
    root = main_repo_root()
    return f"sqlite:///{root / 'mlflow.db'}", root / "mlartifacts"


def local_store_exists() -> bool:
    """False for a local SQLite store whose file is not there yet (reading must not create it)."""
    uri = tracking_uri()
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def ui_base_url(host: str = "127.0.0.1", port: int = 5000) -> str:
    """Where the MLflow UI of this store answers: the server itself, or `make ui` on host:port."""
    uri = tracking_uri()
    return uri.rstrip("/") if is_http(uri) else f"http://{host}:{port}"


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow 3's model-training view (its default view is the GenAI one)."""
    return f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    return f"{base_url}/#/experiments/{experiment_id}/runs/{run_id}"
