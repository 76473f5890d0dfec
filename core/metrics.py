"""Prometheus metrics: the HTTP families, the scrape endpoint, and the exposition.

* `cp_http_requests_total` / `cp_http_request_duration_seconds` are fed by
  `observability.observe_request` through a request hook (`install()`); nothing else to call.
* The apps own their families and hooks: `events/metrics.py` (ingest, writer queue),
  `rollouts/metrics.py` (plans, transitions, approvals, evaluator), `releases/metrics.py` (fleet,
  adoption), `crl/metrics.py` (CRL times); `core/store_metrics.py` (store size). The composition
  root (`serve`) installs them when `--metrics-addr` is set (docs/metrics.md lists every family).
* django-prometheus's families (API.md §5) are served too, except its request-latency
  histograms: `install()` unregisters them (`drop_django_latency_histograms`), so each route has
  one latency histogram, `cp_http_request_duration_seconds` (theirs duplicated it with hundreds
  of buckets per view and saw only the Django path).

`GET /metrics` is answered at the ASGI level (`with_metrics`, `metrics_only`), so it costs Django
nothing and never reaches the URLconf. Labels are bounded: `route` is the contract's route
template (or `unmatched`), `method` one of the HTTP methods (or `other`), `code` the status code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

from core import metricsmerge, observability, workers

logger = logging.getLogger("orchestrator.metrics")

METRICS_PATH = "/metrics"
_NOT_FOUND = "not found: this listener serves only GET /metrics"
_NOT_ALLOWED = "method not allowed: use GET /metrics"
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


def _observe(method: str, route: str, status: int, duration: float) -> None:
    label = method if method in _METHODS else "other"
    HTTP_REQUESTS.labels(method=label, route=route, code=str(status)).inc()
    HTTP_DURATION.labels(method=label, route=route).observe(duration)


_installed = False


def install() -> None:
    """Start counting requests (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    observability.add_request_hook(_observe)
    # django-prometheus's families (its middleware creates them on first use; make them exist
    # from the first scrape), less its latency histograms.
    try:
        from django_prometheus.middleware import Metrics

        drop_django_latency_histograms(Metrics.get_instance())
    except Exception:
        logger.debug("django-prometheus metrics unavailable", exc_info=True)


def drop_django_latency_histograms(django_metrics: object) -> list[str]:
    """Unregister django-prometheus's request-latency histograms (`django_http_requests_latency_*`)
    from the default registry; its counters stay. Its middleware still observes them (into objects
    nobody exposes). Idempotent; returns the family names removed by this call."""
    removed = []
    for collector in list(vars(django_metrics).values()):
        if not isinstance(collector, Histogram):
            continue
        names = [family.name for family in collector.describe()]
        if not any("latency" in name for name in names):
            continue  # e.g. the body-size histograms: no latency, nothing duplicated
        try:
            REGISTRY.unregister(collector)
        except KeyError:
            continue  # already removed
        removed.extend(names)
    return removed


def render() -> bytes:
    """The exposition text. Collectors may read the store (rollout phases): call it off the
    event loop. Under `serve --workers N` every worker's text also counts the other workers'
    requests (their snapshots, `core.metricsmerge`); with one worker it is the registry's."""
    from django.db import connections

    try:
        directory = workers.directory()
        if directory is not None:
            return metricsmerge.render(directory, workers.index(), REGISTRY, workers.count())
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
    error = None
    if route == observability.UNMATCHED_ROUTE:
        status = 404
        error = _NOT_FOUND
        await _send(send, 404, b'{"error": "%s"}' % error.encode(), b"application/json")
    elif method not in ("GET", "HEAD"):
        status = 405
        error = _NOT_ALLOWED
        await _send(
            send,
            405,
            b'{"error": "%s"}' % error.encode(),
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
        error=error,
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
            # On the API listener /metrics is judged like every route (core.policy: viewer).
            from core import edge

            async def no_body() -> bytes:
                return b""

            denied = await edge.auth_gate().admit(
                scope, dict(scope["headers"]), METRICS_PATH, {}, no_body
            )
            if denied is not None:
                status, body, extra = denied
                await _send(send, status, body, b"application/json", extra)
                return
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
