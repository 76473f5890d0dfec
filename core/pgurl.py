"""A `--postgres-url`: checked with libpq's own parser, and a first connection whose failure is one
readable line (which host/port refused, the role or password refused, the database missing).

Used by `serve`, `migrate` and `createsuperuser` before they touch the database, so a wrong URL is
reported at once instead of through the connection pool's retries.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import conninfo

SCHEMES = ("postgresql", "postgres")  # the two libpq accepts
DEFAULT_CONNECT_TIMEOUT = 5  # seconds, when the URL sets no connect_timeout of its own

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^@/?#]*)@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


class PostgresUrlError(ValueError):
    """The URL is unusable or the server refused it; the message is one readable line."""


def _password(url: str) -> str | None:
    match = _USERINFO.match(url)
    if match is None or ":" not in match.group(2):
        return None
    return match.group(2).split(":", 1)[1] or None


def redact(url: str) -> str:
    """The URL without its password (userinfo or `?password=`), for messages and logs.

    Works on URLs that do not parse, too (they are the ones that end up in error messages).
    """
    text = _QUERY_PASSWORD.sub(r"\1***", url)
    match = _USERINFO.match(text)
    if match is not None and ":" in match.group(2):
        user = match.group(2).split(":", 1)[0]
        text = f"{match.group(1)}{user}:***@{text[match.end() :]}"
    return text


def _scrub(message: str, url: str) -> str:
    """libpq's message on one line, without the URL's password (its parse errors quote the URL)."""
    password = _password(url)
    if password:
        message = message.replace(password, "***")
    message = message.replace(url, redact(url))
    lines = [line for line in message.splitlines() if line.strip()]
    # Lines libpq indents with a tab are hints ("Is the server running on that host…?").
    kept = [line for line in lines if not line.startswith(("\t", " "))] or lines
    text = "; ".join(line.strip() for line in kept)
    for prefix in ("connection failed: ", "connection is bad: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text.replace("FATAL:  ", "").rstrip(".")


def check(url: str, flag: str = "--postgres-url") -> dict[str, str]:
    """The URL's connection parameters as libpq reads them; PostgresUrlError when unusable.

    Refused: another scheme than postgresql:// or postgres:// (mysql://… is never tried as
    PostgreSQL), what libpq cannot parse (unknown query parameters included), and a port that is
    not a number from 1 to 65535. Every query parameter libpq knows is kept.
    """
    text = url.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in SCHEMES:
        raise PostgresUrlError(
            f"{flag} must be a postgresql:// (or postgres://) URL, not {redact(text)!r}"
        )
    try:
        params = conninfo.conninfo_to_dict(text)
    except psycopg.Error as exc:
        raise PostgresUrlError(
            f"{flag} {redact(text)!r} is not a valid PostgreSQL URL: {_scrub(str(exc), text)}"
        ) from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise PostgresUrlError(
                f"{flag} {redact(text)!r}: port {port!r} is not a number from 1 to 65535"
            )
    return {key: str(value) for key, value in params.items()}


def probe(url: str, flag: str = "--postgres-url") -> None:
    """Connect once (no pool, no retries) and disconnect; PostgresUrlError names the cause."""
    params = check(url, flag)
    extra: dict[str, Any] = (
        {} if "connect_timeout" in params else {"connect_timeout": DEFAULT_CONNECT_TIMEOUT}
    )
    try:
        psycopg.connect(url.strip(), **extra).close()
    except psycopg.Error as exc:
        raise PostgresUrlError(
            f"cannot connect to PostgreSQL at {redact(url.strip())}: {_scrub(str(exc), url)}"
        ) from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
