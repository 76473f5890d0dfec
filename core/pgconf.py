"""The PostgreSQL store's Django settings from `--postgres-url`, and its connection pool knobs.

The URL is parsed by libpq itself (`psycopg.conninfo.conninfo_to_dict`), so every libpq option it
carries reaches psycopg unchanged: `sslmode`, `sslrootcert`, `target_session_attrs`,
`connect_timeout`, `keepalives*`, `application_name`, `options=-c …`, and multi-host lists
(`postgresql://h1:5432,h2:5433/db?target_session_attrs=read-write`), which libpq tries in order.
The pool's own options are merged in next to them, never instead of them.
"""

from __future__ import annotations

import math
import re
from typing import Any

DEFAULT_POOL_SIZE = 20
DEFAULT_POOL_TIMEOUT_SECONDS = 3.0
# Without a connect_timeout libpq waits for the OS (minutes) on a host that drops packets; a
# multi-host list would never get to its second host.
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5


def parse_pool_timeout(text: str) -> float:
    """Seconds, a positive number; ValueError with the reason otherwise."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"must be a positive number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, not {text!r}")
    return value


def parse_pool_size(text: str) -> int:
    """A whole number of at least 1; ValueError with the reason otherwise."""
    raw = str(text).strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"must be a whole number of at least 1, not {text!r}")
    return int(raw)


class UrlError(ValueError):
    """--postgres-url is not a PostgreSQL connection URL (the message never repeats the URL,
    which may hold a password)."""


def parse_url(url: str) -> dict[str, Any]:
    """libpq's reading of the URL: {parameter: value}; UrlError when libpq refuses it."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    if not url.startswith(("postgresql://", "postgres://")):
        raise UrlError("it must start with postgresql:// (or postgres://)")
    try:
        return {k: v for k, v in conninfo_to_dict(url).items() if v is not None}
    except psycopg.Error as exc:
        reason = re.split(r"\s+(?:in URI|in connection info string|after)\b", str(exc))[0]
        raise UrlError(reason.strip() or "libpq cannot read it") from None


def database_settings(
    url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Django's DATABASES["default"] for a postgresql:// URL; UrlError when it is not one."""
    params = parse_url(url)
    name = params.pop("dbname", None) or params.get("user") or "postgres"
    user = params.pop("user", "")
    password = params.pop("password", "")
    host = params.pop("host", "")
    port = params.pop("port", "")
    params.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT_SECONDS)
    params["pool"] = pool_options(pool_size, pool_timeout)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": user,
        "PASSWORD": password,
        "HOST": host,
        "PORT": port,
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": params,
    }


def pool_options(size: int, timeout: float) -> dict[str, Any]:
    return {"min_size": 1, "max_size": size, "timeout": timeout}


def configure_pool(*, size: int, timeout: float) -> None:
    """Apply serve's --db-pool-size/--db-pool-timeout before the pool is (re)opened.

    Django builds the pool from the connection's settings on first use; a pool already made
    (by an earlier command in this process) is closed so the next use builds it anew.
    """
    from django.db import connections

    conn = connections["default"]
    if conn.vendor != "postgresql":
        return
    options = conn.settings_dict.setdefault("OPTIONS", {})
    options["pool"] = pool_options(size, timeout)
    conn.close()
    close_pool = getattr(conn, "close_pool", None)
    if close_pool is not None and "default" in getattr(conn, "_connection_pools", {}):
        close_pool()
