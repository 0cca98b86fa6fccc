"""Store and storage URLs: as messages show them (the password masked) and as the drivers take them.

One place for both, used by the tracking server (`make server`), the tracking store's messages and the
Optuna storage (`make tune`, `make tune-status`), so a URL is parsed the way the code that connects
parses it: SQLAlchemy's `make_url` for database URLs, `urllib.parse` for http(s) (what requests uses).
A password may hold any character; written into a URL, `@`, `/`, `:` and `%` must be %-encoded
(`p%40ss%2Fw%3Ard`), which both parsers decode. A raw `@` in a password cannot be parsed by either
(the driver would take what follows it for the host): the masking then hides everything up to the
last `@`, so no part of the password shows, and `check_password_encoding` refuses such a URL in one line.
"""

from __future__ import annotations

import importlib.util
import urllib.parse

from vaepipe.errors import ConfigError

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


def redact(text: str, url: str) -> str:
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
