"""Many replicas on one database (API.md §7): `GET /v1/health/leader`, `GET /v1/ha/status`, the
`--require-sync-replicas` gate on operator writes, the shared-key check and the leader and
replication metrics. The election itself is `core.leader`.

- Replication (PostgreSQL): whether the database is a primary or a standby, and on a primary the
  standbys of `pg_stat_replication` with their lag, cached for CACHE_SECONDS.
- `SyncReplicaGate` (middleware): with `--require-sync-replicas N`, an operator write (a route of
  the policy table for a role, not a node's own ingest or ack) answers 503 + `Retry-After` while
  fewer than N synchronous standbys are streaming; the commit would otherwise be acknowledged by
  the primary alone and could be lost in a failover.
- `check_shared_keys()`: the first replica stores a fingerprint (SHA-256, never the key) of the
  rollout signing key and of the session secret; a replica with another key refuses to start.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connection, transaction
from django.http import HttpRequest, HttpResponse
from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core import dbpool_metrics, leader
from core.dberrors import RETRY_AFTER_SECONDS, UNAVAILABLE_MESSAGE
from core.errors import json_error

logger = logging.getLogger("orchestrator.ha")

CACHE_SECONDS = 1.0
SHARED_KEY_TABLE = "ha_shared_key"


# ---- replication ----


@dataclass(frozen=True)
class Replication:
    role: str  # "primary", "standby" or "sqlite"
    standbys: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sync_streaming(self) -> int:
        return sum(
            1
            for s in self.standbys
            if s["state"] == "streaming" and s["sync_state"] in ("sync", "quorum")
        )

    @property
    def max_replay_lag_seconds(self) -> float:
        lags = [s["replay_lag_ms"] or 0 for s in self.standbys]
        return max(lags, default=0) / 1000.0


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _query_replication() -> Replication:
    if connection.vendor != "postgresql":
        return Replication("sqlite")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        if cursor.fetchone()[0]:
            return Replication("standby")
        cursor.execute(
            "SELECT application_name, state, sync_state, "
            "EXTRACT(EPOCH FROM write_lag) * 1000, EXTRACT(EPOCH FROM flush_lag) * 1000, "
            "EXTRACT(EPOCH FROM replay_lag) * 1000, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) "
            "FROM pg_stat_replication ORDER BY application_name"
        )
        rows = cursor.fetchall()
    return Replication(
        "primary",
        [
            {
                "application_name": r[0],
                "state": r[1],
                "sync_state": r[2],
                "write_lag_ms": _ms(r[3]),
                "flush_lag_ms": _ms(r[4]),
                "replay_lag_ms": _ms(r[5]),
                "replay_lag_bytes": None if r[6] is None else int(r[6]),
            }
            for r in rows
        ],
    )


class _ReplicationCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[float, Replication] | None = None

    def get(self) -> Replication:
        """The replication state, at most CACHE_SECONDS old; DatabaseError when unreachable."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_SECONDS:
                return self._cached[1]
        value = _query_replication()
        with self._lock:
            self._cached = (time.monotonic(), value)
        return value

    def last(self) -> Replication | None:
        with self._lock:
            return None if self._cached is None else self._cached[1]

    def forget(self) -> None:
        with self._lock:
            self._cached = None


replication = _ReplicationCache()


# ---- --require-sync-replicas ----

_required_sync = 0
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")


def configure(*, require_sync_replicas: int) -> None:
    """`serve --require-sync-replicas N` (0 = no gate)."""
    global _required_sync
    _required_sync = require_sync_replicas


def required_sync_replicas() -> int:
    return _required_sync


def parse_sync_replicas(text: str) -> int:
    value = str(text).strip()
    if not value.isdigit() or int(value) > 64:
        raise ValueError(f"must be a whole number from 0 to 64, not {text!r}")
    return int(value)


def is_operator_write(method: str, route: str) -> bool:
    """A write of the policy table that needs a role (not a node's own ingest or ack)."""
    from core.policy import POLICY

    if method in _SAFE_METHODS:
        return False
    rule = POLICY.get((method, route))
    return rule is not None and rule.role is not None and rule.node is None


class SyncReplicaGate:
    """Django middleware: operator writes wait for `--require-sync-replicas` streaming standbys."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        if _required_sync <= 0 or request.method in _SAFE_METHODS:
            return None
        match = request.resolver_match
        if match is None or not is_operator_write(
            str(request.method), "/" + _CONVERTER.sub(r"{\1}", match.route)
        ):
            return None
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        try:
            streaming = replication.get().sync_streaming
        except DatabaseError:
            return json_error(503, UNAVAILABLE_MESSAGE, headers)
        if streaming >= _required_sync:
            return None
        return json_error(
            503,
            f"{streaming} of the {_required_sync} required synchronous standbys are streaming: "
            "operator changes are refused until they are (--require-sync-replicas)",
            headers,
            sync_replicas_streaming=streaming,
            sync_replicas_required=_required_sync,
        )


# ---- shared keys ----


class SharedKeyMismatch(Exception):
    """One line: which key differs from the other replicas'."""


def fingerprint(material: bytes) -> str:
    return hashlib.sha256(b"autonomy-orchestrator shared key\0" + material).hexdigest()[:32]


def check_shared_keys(node_id: str, keys: dict[str, bytes], how_to_fix: dict[str, str]) -> None:
    """Store each key's fingerprint on the first start; refuse one that differs afterwards."""
    with transaction.atomic(), connection.cursor() as cursor:
        for name, material in keys.items():
            mine = fingerprint(material)
            cursor.execute(
                f"INSERT INTO {SHARED_KEY_TABLE} (name, fingerprint, node_id, created_at) "
                "VALUES (%s, %s, %s, CURRENT_TIMESTAMP) ON CONFLICT (name) DO NOTHING",
                [name, mine, node_id],
            )
            cursor.execute(
                f"SELECT fingerprint, node_id FROM {SHARED_KEY_TABLE} WHERE name = %s", [name]
            )
            stored, first = cursor.fetchone()
            if stored != mine:
                raise SharedKeyMismatch(
                    f"this replica's {name} differs from the one the other replicas use "
                    f"(first stored by {first}); {how_to_fix.get(name, '')}".rstrip("; ")
                )


# ---- routes ----


def _iso(value: Any) -> str | None:
    value = leader.as_datetime(value)
    if value is None:
        return None
    return value.isoformat().replace("+00:00", "Z")


_LEADER = inline_serializer(
    "Leader",
    fields={
        "current_epoch": serializers.IntegerField(),
        "holder_id": serializers.CharField(),
        "acquired_at": serializers.DateTimeField(allow_null=True),
        "session_lock_held": serializers.BooleanField(),
    },
)


class LeaderView(APIView):
    """`GET /v1/health/leader`: the durable leader row and whether this replica holds the lock."""

    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    @extend_schema(
        summary="Leader of background work",
        description="The current epoch and holder of the leader lease (epoch 0 and an empty "
        "holder before anyone led), and whether this replica holds the leader's session lock. "
        "No credential; also HEAD.",
        tags=["health"],
        request=None,
        responses={200: OpenApiResponse(_LEADER)},  # 503 + Retry-After: added for all
    )
    def get(self, request: Request) -> Response:
        row = leader.leader_row()
        return Response(
            {
                "current_epoch": row["epoch"],
                "holder_id": row["holder_id"],
                "acquired_at": _iso(row["acquired_at"]),
                "session_lock_held": leader.elector.serve_leads(),
            }
        )


_STATUS = inline_serializer(
    "HaStatus",
    fields={
        "node_id": serializers.CharField(),
        "role": serializers.ChoiceField(choices=["leader", "follower"]),
        "leader": serializers.DictField(),
        "replicas": serializers.ListField(child=serializers.DictField()),
        "database": serializers.DictField(),
        "pool": serializers.DictField(),
    },
)


class HaStatusView(APIView):
    """`GET /v1/ha/status`: this replica, the leader, the replicas, the database's replication."""

    @extend_schema(
        summary="HA status",
        description="This replica's id and role (leader or follower), the leader (epoch, "
        "holder, acquired and renewed), the replicas seen within the last 15 s, the database's "
        "role (primary or standby; `sqlite` for the single-process store), its standbys "
        "streaming with their lag (pg_stat_replication), the synchronous standbys required by "
        "`--require-sync-replicas`, and this replica's pool use.",
        tags=["health"],
        request=None,
        responses={200: OpenApiResponse(_STATUS)},  # 503 + Retry-After: added for all
    )
    def get(self, request: Request) -> Response:
        me = leader.elector.snapshot()
        row = leader.leader_row()
        repl = replication.get()
        pool = dbpool_metrics.pool_stats()
        return Response(
            {
                "node_id": me["node_id"],
                "role": me["role"],
                "leader": {
                    "holder_id": row["holder_id"],
                    "epoch": row["epoch"],
                    "acquired_at": _iso(row["acquired_at"]),
                    "renewed_at": _iso(row["renewed_at"]),
                },
                "replicas": [
                    {
                        "node_id": r["node_id"],
                        "role": r["role"],
                        "started_at": _iso(r["started_at"]),
                        "seen_at": _iso(r["seen_at"]),
                    }
                    for r in leader.recent_replicas()
                ],
                "database": {
                    "role": repl.role,
                    "sync_standbys_streaming": repl.sync_streaming,
                    "sync_standbys_required": _required_sync,
                    "standbys": repl.standbys,
                },
                "pool": {
                    "size": pool.get("pool_size", 0),
                    "in_use": max(pool.get("pool_size", 0) - pool.get("pool_available", 0), 0),
                    "idle": pool.get("pool_available", 0),
                    "waiting": pool.get("requests_waiting", 0),
                    "timeouts": pool.get("requests_errors", 0),
                },
            }
        )


# ---- metrics ----


class HaCollector(Collector):
    def collect(self) -> Iterable[Metric]:
        me = leader.elector.snapshot()
        yield GaugeMetricFamily(
            "cp_leader_is_leader",
            "1 while this replica leads background work.",
            value=1 if me["role"] == "leader" else 0,
        )
        yield GaugeMetricFamily(
            "cp_leader_epoch",
            "Epoch of this replica's leadership (0 when it does not lead).",
            value=me["epoch"] or 0,
        )
        yield CounterMetricFamily(
            "cp_leader_campaigns", "Leader campaigns this replica ran.", value=me["campaigns"]
        )
        yield CounterMetricFamily(
            "cp_leader_acquisitions",
            "Times this replica became the leader.",
            value=me["acquisitions"],
        )
        yield CounterMetricFamily(
            "cp_leader_fenced_writes",
            "Leader-only writes of this replica refused because another replica leads.",
            value=me["fenced_writes"],
        )
        repl = replication.last()  # never queries the database at scrape time
        yield GaugeMetricFamily(
            "cp_db_sync_standbys_streaming",
            "Synchronous standbys streaming from the primary (last seen).",
            value=repl.sync_streaming if repl else 0,
        )
        yield GaugeMetricFamily(
            "cp_db_replication_replay_lag_seconds",
            "Largest replay lag of the primary's standbys (last seen).",
            value=repl.max_replay_lag_seconds if repl else 0,
        )


def refresh_replication() -> None:
    """Keep the replication gauges fresh (run on the elector thread every round)."""
    from django.db import close_old_connections

    try:
        replication.get()
    except DatabaseError:
        pass
    finally:
        close_old_connections()


_installed = False
_install_lock = threading.Lock()


def install_metrics() -> None:
    global _installed
    with _install_lock:
        if not _installed:
            REGISTRY.register(HaCollector())
            _installed = True


# Included by the root URLconf: `path("", include("core.ha"))`.
urlpatterns = [
    path("v1/health/leader", LeaderView.as_view(), name="health-leader"),
    path("v1/ha/status", HaStatusView.as_view(), name="ha-status"),
]
