"""Prometheus metrics: the `cp_*` families, the scrape endpoint, and the hooks that feed them.

For other modules:
* `cp_events_ingested_total{result="inserted"|"deduped"}`: `install()` registers
  `record_ingest(inserted=N, deduped=M)` with `events.services.add_ingest_hook`; code without
  that hook can call `record_ingest` directly after each committed batch.
* `cp_http_requests_total` / `cp_http_request_duration_seconds` are fed by
  `observability.observe_request` through a request hook; nothing else to call.
* `cp_rollout_plans_total{phase}` is read at scrape time from
  `rollouts.selectors.rollout_phase_counts()` (plans now in each phase; TYPE counter, see
  docs/metrics.md).

`GET /metrics` is answered at the ASGI level (`with_metrics`, `metrics_only`), so it costs Django
nothing and never reaches the URLconf. Labels are bounded: `route` is the contract's route
template (or `unmatched`), `method` one of the HTTP methods (or `other`), `code` the status code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from core import observability

logger = logging.getLogger("orchestrator.metrics")

METRICS_PATH = "/metrics"
ROLLOUT_PHASES = (
    "published",
    "active",
    "paused",
    "halted",
    "completed",
    "cancelled",
    "rolled_back",
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

HTTP_REQUESTS = Counter(
    "cp_http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "code"],
)
HTTP_DURATION = Histogram(
    "cp_http_request_duration_seconds",
    "Time from the request reaching the application to the response, by method and route.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENTS_INGESTED = Counter(
    "cp_events_ingested_total",
    "Events received by POST /v1/events, by result.",
    ["result"],
)
for _result in ("inserted", "deduped"):
    EVENTS_INGESTED.labels(result=_result)


def record_ingest(*, inserted: int, deduped: int) -> None:
    """Count one ingested batch; call it after the batch is committed."""
    if inserted:
        EVENTS_INGESTED.labels(result="inserted").inc(inserted)
    if deduped:
        EVENTS_INGESTED.labels(result="deduped").inc(deduped)


def _on_ingest(inserted: int, deduped: int) -> None:
    record_ingest(inserted=inserted, deduped=deduped)


def _observe(method: str, route: str, status: int, duration: float) -> None:
    label = method if method in _METHODS else "other"
    HTTP_REQUESTS.labels(method=label, route=route, code=str(status)).inc()
    HTTP_DURATION.labels(method=label, route=route).observe(duration)


class RolloutPhaseCollector(Collector):
    """`cp_rollout_plans_total{phase}`: plans per phase, read from the store at scrape time."""

    def collect(self) -> Iterable[CounterMetricFamily]:
        # Exposed with TYPE counter because the contract's name ends in `_total` (promtool
        # rejects that suffix on a gauge); the value is the number of plans now in the phase.
        family = CounterMetricFamily(
            "cp_rollout_plans", "Rollout plans now in each phase.", labels=["phase"]
        )
        try:
            from rollouts.selectors import rollout_phase_counts

            counts = dict(rollout_phase_counts())
        except Exception:
            logger.exception("cannot read rollout phase counts for /metrics")
            return [family]
        for phase in (*ROLLOUT_PHASES, *sorted(set(counts) - set(ROLLOUT_PHASES))):
            family.add_metric([phase], float(counts.get(phase, 0)))
        return [family]

    def describe(self) -> Iterable[CounterMetricFamily]:
        return []  # collected lazily at scrape time, never at registration


_ROLLOUT_COLLECTOR = RolloutPhaseCollector()
_installed = False


def install() -> None:
    """Start counting requests and register the scrape-time collectors (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    observability.add_request_hook(_observe)
    REGISTRY.register(_ROLLOUT_COLLECTOR)
    try:
        from events.services import add_ingest_hook
    except ImportError:  # events ingestion calls record_ingest() itself then
        logger.debug("events.services.add_ingest_hook not available", exc_info=True)
    else:
        add_ingest_hook(_on_ingest)
    # django-prometheus's families (its middleware creates them on first use; make them exist
    # from the first scrape).
    try:
        from django_prometheus.middleware import Metrics

        Metrics.get_instance()
    except Exception:
        logger.debug("django-prometheus metrics unavailable", exc_info=True)


def render() -> bytes:
    """The exposition text. May read the store (rollout phases): call it off the event loop."""
    from django.db import connections

    try:
        return generate_latest(REGISTRY)
    finally:
        connections.close_all()


ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


async def _send(
    send: Any,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


async def _answer(scope: dict[str, Any], send: Any, *, route: str) -> None:
    started = time.perf_counter()
    method = scope.get("method", "GET")
    if route == observability.UNMATCHED_ROUTE:
        status = 404
        await _send(
            send,
            404,
            b'{"error": "not found: this listener serves only GET /metrics"}',
            b"application/json",
        )
    elif method not in ("GET", "HEAD"):
        status = 405
        await _send(
            send,
            405,
            b'{"error": "method not allowed: use GET /metrics"}',
            b"application/json",
            [(b"allow", b"GET, HEAD")],
        )
    else:
        body = await asyncio.get_running_loop().run_in_executor(None, render)
        status = 200
        await _send(send, 200, b"" if method == "HEAD" else body, CONTENT_TYPE_LATEST.encode())
    client = scope.get("client")
    observability.observe_request(
        method=method,
        route=route,
        path=scope.get("path", ""),
        status=status,
        duration=time.perf_counter() - started,
        client=client[0] if client else None,
        client_identity=observability.client_identity_from_scope(scope),
    )


async def _drain_body(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def with_metrics(app: ASGIApp) -> ASGIApp:
    """`app` plus `GET /metrics` (the main listener when --metrics-addr is set)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") == METRICS_PATH:
            await _drain_body(receive)
            await _answer(scope, send, route=METRICS_PATH)
            return
        await app(scope, receive, send)

    return wrapped


async def metrics_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The --metrics-addr listener: `GET /metrics`, 404 for everything else."""
    if scope["type"] != "http":
        return
    await _drain_body(receive)
    route = METRICS_PATH if scope.get("path") == METRICS_PATH else observability.UNMATCHED_ROUTE
    await _answer(scope, send, route=route)
