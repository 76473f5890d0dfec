"""PostgreSQL session advisory locks on a connection of their own (not the pool's).

`serve` migrates an empty database under MIGRATE_LOCK_KEY, so replicas started together migrate
it once: the first takes the lock and migrates, the others wait for the lock and then find every
migration applied. The lock is a session lock on a dedicated connection: it is released when the
block ends, and by the server if the process dies while holding it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import OperationalError

logger = logging.getLogger("orchestrator.db")

# Fixed keys (bigint) of this product's advisory locks: ASCII "orchmigr".
MIGRATE_LOCK_KEY = 0x6F7263686D696772

# Django-only keys of DATABASES[...]["OPTIONS"] that are not libpq parameters.
_DJANGO_OPTIONS = ("pool", "isolation_level", "server_side_binding", "assume_role")


def connect_kwargs(settings_dict: dict[str, Any]) -> dict[str, Any]:
    """psycopg.connect() keyword arguments for a Django PostgreSQL settings dict (all its libpq
    options, none of the pool's)."""
    kwargs = {k: v for k, v in settings_dict.get("OPTIONS", {}).items() if k not in _DJANGO_OPTIONS}
    for key, param in (
        ("NAME", "dbname"),
        ("USER", "user"),
        ("PASSWORD", "password"),
        ("HOST", "host"),
        ("PORT", "port"),
    ):
        if settings_dict.get(key):
            kwargs[param] = settings_dict[key]
    return kwargs


@contextmanager
def advisory_lock(key: int, settings_dict: dict[str, Any]) -> Iterator[None]:
    """Hold `pg_advisory_lock(key)` on a dedicated connection for the block (waits for it)."""
    import psycopg

    try:
        conn = psycopg.connect(**connect_kwargs(settings_dict), autocommit=True)
    except psycopg.Error as exc:
        raise OperationalError(str(exc).strip()) from exc
    try:
        with conn:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]:  # type: ignore[index]
                logger.info("another replica holds the migration lock; waiting for it")
                conn.execute("SELECT pg_advisory_lock(%s)", [key])
            try:
                yield
            finally:
                if not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(%s)", [key])
    except psycopg.Error as exc:
        raise OperationalError(str(exc).strip()) from exc
