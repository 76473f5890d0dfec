"""One place where every answered request is counted and logged.

Both the Django middleware and the fast path (core.fastpath, core.edge) call `observe_request`.
The `route` label is the contract's route template (`/v1/rollouts/{plan_id}`), never a raw path.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

access_logger = logging.getLogger("orchestrator.access")

_CONVERTER = re.compile(r"<(?:[^:>]+:)?([^>]+)>")

UNMATCHED_ROUTE = "unmatched"


def route_template(django_route: str | None) -> str:
    """`v1/rollouts/<str:plan_id>` -> `/v1/rollouts/{plan_id}`."""
    if not django_route:
        return UNMATCHED_ROUTE
    route = _CONVERTER.sub(r"{\1}", django_route)
    return route if route.startswith("/") else "/" + route


# Hooks added by other modules (metrics). Each is called as hook(method, route, status, duration).
_request_hooks: list[Any] = []


def add_request_hook(hook: Any) -> None:
    if hook not in _request_hooks:
        _request_hooks.append(hook)


MAX_ERROR_LOG = 300  # characters of a 4xx's reason in the access log


def error_reason(status: int, body: bytes | None) -> str | None:
    """The `error` of a 4xx JSON answer (the contract's error body), shortened for the access
    log; None for other answers or bodies that are not an error object."""
    if not 400 <= status < 500 or not body or body[:1] != b"{":
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, str) or not error:
        return None
    return error if len(error) <= MAX_ERROR_LOG else error[: MAX_ERROR_LOG - 1] + "…"


def observe_request(
    *,
    method: str,
    route: str,
    path: str,
    status: int,
    duration: float,
    client: str | None = None,
    client_identity: str | None = None,
    error: str | None = None,
) -> None:
    """Count the answer (the hooks) and write its access log line; `error` is a 4xx's reason
    (`error_reason`), logged at the end of the line and as the `error` field."""
    for hook in _request_hooks:
        hook(method, route, status, duration)
    if access_logger.isEnabledFor(logging.INFO):
        access_logger.info(
            "%s %s %s %.1fms%s",
            method,
            path,
            status,
            duration * 1000,
            f" error={error!r}" if error else "",
            extra={
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(duration * 1000, 3),
                "client": client,
                "client_identity": client_identity,
                "error": error,
            },
        )


def client_identity_from_scope(scope: dict[str, Any] | None) -> str | None:
    """The verified mTLS client identity put into the ASGI scope by the TLS layer, if any."""
    if not scope:
        return None
    tls = (scope.get("extensions") or {}).get("tls") or {}
    name = tls.get("client_cert_name")
    if not name:
        return None
    serial = tls.get("client_cert_serial")  # set by core.tls (hex)
    return f"{name} serial={serial}" if serial else str(name)
