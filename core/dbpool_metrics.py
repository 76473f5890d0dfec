"""Prometheus families of the PostgreSQL connection pool, read at scrape time from psycopg_pool's
own statistics (`ConnectionPool.get_stats()`):

* `cp_db_pool_connections_in_use`: connections lent out to requests and worker threads now;
* `cp_db_pool_connections_idle`: connections open in the pool, ready to be lent;
* `cp_db_pool_requests_waiting`: requests waiting for a connection now;
* `cp_db_pool_timeouts_total`: requests that got no connection within the pool timeout
  (answered 503 + Retry-After).

On SQLite (no pool) every family reads 0. `install()` registers the collector with
prometheus_client's default REGISTRY (idempotent); `serve` calls it when metrics are enabled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("orchestrator.metrics")

_lock = threading.Lock()
_installed = False


def pool_stats() -> dict[str, int]:
    """The default database's pool statistics; {} when there is no pool (SQLite, not yet open).
    Never opens a pool itself."""
    from django.db import connections

    conn = connections["default"]
    pool: Any = getattr(conn, "_connection_pools", {}).get(conn.alias)
    if pool is None:
        return {}
    try:
        return dict(pool.get_stats())
    except Exception:
        logger.debug("could not read the pool statistics", exc_info=True)
        return {}


class PoolCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        stats = pool_stats()
        size = stats.get("pool_size", 0)
        idle = stats.get("pool_available", 0)
        yield GaugeMetricFamily(
            "cp_db_pool_connections_in_use",
            "PostgreSQL pool: connections lent out now.",
            value=max(size - idle, 0),
        )
        yield GaugeMetricFamily(
            "cp_db_pool_connections_idle",
            "PostgreSQL pool: open connections ready to be lent.",
            value=idle,
        )
        yield GaugeMetricFamily(
            "cp_db_pool_requests_waiting",
            "PostgreSQL pool: requests waiting for a connection now.",
            value=stats.get("requests_waiting", 0),
        )
        yield CounterMetricFamily(
            "cp_db_pool_timeouts",
            "PostgreSQL pool: requests that got no connection within the pool timeout.",
            value=stats.get("requests_errors", 0),
        )


_COLLECTOR = PoolCollector()


def install() -> None:
    """Register the pool families with the default registry (once)."""
    global _installed
    with _lock:
        if _installed:
            return
        REGISTRY.register(_COLLECTOR)
        _installed = True
