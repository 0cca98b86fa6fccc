"""tracking/store.py's URL helpers: one masking of URL passwords for every message (the tracking store, `make server`, `make
tune`, `make tune-status`), with passwords that hold the characters hand-made masking gets wrong, and the
one driver normalisation that the server's store and Optuna's storage share."""

from __future__ import annotations

import urllib.parse

import pytest

from vaepipe.errors import ConfigError
from vaepipe.tracking import masked_url as tracking_masked_url
from vaepipe.tracking.store import check_password_encoding, masked_url, with_driver
from vaepipe.tracking.store import redact_password as redact

HOSTILE = "p@ss/w:rd%40x"  # '@', '/', ':' and a %-encoding, as a password
ENCODED = urllib.parse.quote(HOSTILE, safe="")  # p%40ss%2Fw%3Ard%2540x: how it is written into a URL
FORMS = (HOSTILE, ENCODED, "p@ss", "ss/w", "w:rd", "rd%40x", "rd@x")  # no part of it may show


@pytest.mark.parametrize("url, shown", [
    (f"postgresql://user:{ENCODED}@127.0.0.1:5432/db", "postgresql://user:***@127.0.0.1:5432/db"),
    (f"postgresql+psycopg2://user:{ENCODED}@db.example/mlflow?sslmode=require",
     "postgresql+psycopg2://user:***@db.example/mlflow?sslmode=require"),
    (f"mysql://user:{ENCODED}@db/studies", "mysql://user:***@db/studies"),
    (f"http://alice:{ENCODED}@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
    (f"https://alice:{ENCODED}@mlflow.example/path", "https://alice:***@mlflow.example/path"),
    # Written raw: the parsers stop at the first '@' (database) or '/' (http); nothing of it may show.
    (f"postgresql://user:{HOSTILE}@127.0.0.1:5432/db", "postgresql://user:***@127.0.0.1:5432/db"),
    (f"http://alice:{HOSTILE}@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
    ("postgresql://user:pa/ss@h/db", "postgresql://user:***@h/db"),  # the old masking printed this one
    ("postgresql://user:pa:ss@h/db", "postgresql://user:***@h/db"),
    # No password: as it is.
    ("postgresql://mlflow@db/mlflow", "postgresql://mlflow@db/mlflow"),
    ("postgresql://db/mlflow", "postgresql://db/mlflow"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("http://127.0.0.1:5000/a:b@c", "http://127.0.0.1:5000/a:b@c"),  # '@' in a path is no userinfo
    ("http://alice@127.0.0.1:5000", "http://alice@127.0.0.1:5000"),
    ("/work/.optuna/journal.log", "/work/.optuna/journal.log"),
])
def test_masked_url_hides_the_whole_password_whatever_it_holds(url, shown):
    assert masked_url(url) == shown
    assert tracking_masked_url(url) == shown  # the tracking store's name for the same function
    assert not any(form in masked_url(url) for form in FORMS)


def test_the_masked_url_names_what_the_driver_connects_to():
    """The shown URL, password aside, is the one the driver's parser reads: same user, host, port, database."""
    import sqlalchemy

    url = f"postgresql://user:{ENCODED}@127.0.0.1:5432/db"
    given, shown = sqlalchemy.engine.make_url(url), sqlalchemy.engine.make_url(masked_url(url))
    assert given.password == HOSTILE  # the driver decodes it
    assert (shown.username, shown.host, shown.port, shown.database) == (given.username, given.host, given.port, given.database)


@pytest.mark.parametrize("url", [f"postgresql://user:{ENCODED}@127.0.0.1:5432/db",
                                 f"postgresql://user:{HOSTILE}@127.0.0.1:5432/db",
                                 f"http://alice:{ENCODED}@127.0.0.1:5000"])
def test_redact_removes_every_form_of_the_password_from_a_message(url):
    message = (f'connection to {url} failed: FATAL: password "{HOSTILE}" rejected; '
               f"the URL held {ENCODED}")
    cleaned = redact(message, url)
    assert not any(form in cleaned for form in (HOSTILE, ENCODED)), cleaned
    assert "connection to " in cleaned and "***" in cleaned


def test_a_raw_at_sign_in_a_database_password_is_refused_in_one_line():
    with pytest.raises(ConfigError) as raised:
        check_password_encoding(f"postgresql://user:{HOSTILE}@127.0.0.1:5432/db", "STORAGE")
    message = str(raised.value)
    assert "\n" not in message and "%40" in message and not any(form in message for form in FORMS)
    check_password_encoding(f"postgresql://user:{ENCODED}@127.0.0.1:5432/db", "STORAGE")  # encoded: fine
    check_password_encoding("/a/journal.log", "STORAGE")


def test_with_driver_names_psycopg2_and_keeps_the_password():
    import sqlalchemy

    url = with_driver(f"postgresql://user:{ENCODED}@127.0.0.1:5432/db")
    assert url.startswith("postgresql+psycopg2://")
    assert sqlalchemy.engine.make_url(url).password == HOSTILE
    assert with_driver("postgresql+psycopg2://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert with_driver("sqlite:////x/studies.db") == "sqlite:////x/studies.db"
    assert with_driver("/x/journal.log") == "/x/journal.log"


def test_the_optuna_storage_gets_the_same_driver_and_masking(monkeypatch):
    """make tune's storage: `postgresql://` as documented goes to Optuna with the driver the server uses."""
    from vaepipe.tune import storage

    monkeypatch.setenv(storage.STORAGE_ENV, f"postgresql://tuner:{ENCODED}@db.example:5432/studies")
    assert storage.open_storage() == f"postgresql+psycopg2://tuner:{ENCODED}@db.example:5432/studies"
    assert storage.storage_label(storage.resolve_storage()) == "postgresql://tuner:***@db.example:5432/studies"
    monkeypatch.setenv(storage.STORAGE_ENV, f"postgresql://tuner:{HOSTILE}@db.example:5432/studies")
    with pytest.raises(ConfigError, match="password holds a raw '@'"):
        storage.open_storage()


def test_the_server_banner_and_errors_mask_a_hostile_store_password(tmp_path, monkeypatch):
    from vaepipe.tracking import server

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    for name in ("VAEPIPE_SERVER_ARTIFACTS", "VAEPIPE_SERVER_AUTH", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(server, "check_store", lambda url: None)
    monkeypatch.setenv("VAEPIPE_SERVER_STORE", f"postgresql://mlflow:{ENCODED}@db.example:5432/mlflow")
    env: dict[str, str] = {}
    command, line = server.server_command("127.0.0.1", 5000, env)
    assert env["PGPASSWORD"] == HOSTILE
    assert "store postgresql://mlflow:***@db.example:5432/mlflow," in line
    assert not any(form in " ".join(command) + line for form in FORMS)
    monkeypatch.setenv("VAEPIPE_SERVER_ARTIFACTS", f"http://alice:{ENCODED}@files.example/artifacts")
    with pytest.raises(ConfigError) as raised:
        server.server_command("127.0.0.1", 5000, {})
    assert "holds a password" in str(raised.value) and not any(form in str(raised.value) for form in FORMS)


def test_a_store_password_the_environment_cannot_carry_apart_goes_in_mlflow_s_own_variable(tmp_path, monkeypatch):
    """MySQL has no PGPASSWORD: the whole URL goes to `mlflow server` in MLFLOW_BACKEND_STORE_URI, not argv."""
    from vaepipe.tracking import server

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    for name in ("VAEPIPE_SERVER_ARTIFACTS", "VAEPIPE_SERVER_AUTH", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(server, "check_store", lambda url: None)
    store = f"mysql+pymysql://mlflow:{ENCODED}@db.example:3306/mlflow"
    monkeypatch.setenv("VAEPIPE_SERVER_STORE", store)
    env: dict[str, str] = {}
    command, line = server.server_command("127.0.0.1", 5000, env)
    assert "--backend-store-uri" not in command and env["MLFLOW_BACKEND_STORE_URI"] == store
    assert not any(form in " ".join(command) + line for form in FORMS)
    assert "store mysql+pymysql://mlflow:***@db.example:3306/mlflow," in line
