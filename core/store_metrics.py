"""`cp_store_size_bytes`: how much disk the store takes.

SQLite: the database file plus its `-wal` and `-shm` files (three `stat` calls per scrape).
PostgreSQL: `pg_database_size(current_database())`, cached `PG_CACHE_SECONDS` (it walks the
database's files on the server). `install()` registers the collector; `serve` calls it when
metrics are enabled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("orchestrator.metrics")

PG_CACHE_SECONDS = 30.0

_lock = threading.Lock()
_pg_cached: tuple[float, float] | None = None  # (monotonic time, bytes)


def sqlite_size(path: str) -> int:
    """Bytes of the database file and its WAL and shared-memory files (missing ones count 0)."""
    total = 0
    for name in (path, path + "-wal", path + "-shm"):
        with contextlib.suppress(OSError):
            total += os.stat(name).st_size
    return total


def store_size() -> float | None:
    """The store's size in bytes; None when it cannot be told (an in-memory database)."""
    global _pg_cached
    from django.db import connections

    conn = connections["default"]
    if conn.vendor == "sqlite":
        name = str(conn.settings_dict.get("NAME") or "")
        if not name or name == ":memory:" or name.startswith("file:"):
            return None
        return float(sqlite_size(name))
    now = time.monotonic()
    with _lock:
        if _pg_cached is not None and now - _pg_cached[0] < PG_CACHE_SECONDS:
            return _pg_cached[1]
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_database_size(current_database())")
        size = float(cursor.fetchone()[0])
    with _lock:
        _pg_cached = (now, size)
    return size


class StoreSizeCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        try:
            size = store_size()
        except Exception:
            logger.exception("cannot read the store size for /metrics")
            return
        if size is not None:
            yield GaugeMetricFamily(
                "cp_store_size_bytes",
                "Disk taken by the store (SQLite: file + WAL + shm; PostgreSQL: the database).",
                value=size,
            )

    def describe(self) -> Iterable[Metric]:
        return []


_installed = False


def install() -> None:
    """Register the collector (idempotent)."""
    global _installed
    with _lock:
        if not _installed:
            _installed = True
            REGISTRY.register(StoreSizeCollector())
