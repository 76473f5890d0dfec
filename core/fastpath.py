"""A lean ASGI router in front of Django for the hot routes.

The routes and their handlers belong to the apps (`events/fast.py`, `releases/fast.py`); the
composition root (`orchestrator_site/urls.py`) puts them into one table with `fast_routes`, which
takes every route's path and `Allow` methods from the URLconf entry of the DRF view that answers
the same route. A handler gets `(scope, receive, headers)` and returns `(status, body, extra
headers)`; it runs on the event loop (plus the database threads, `core.dbthreads`), without
Django's request objects, middleware, URL resolver or DRF. Measured on this project's machines,
Django + DRF under daphne costs about 2 ms of CPU per request, more than the SQL of these routes
(docs/performance.md).

Everything else goes to Django unchanged: other routes and methods (so 404/405 with `Allow` come
from DRF) and requests whose `Accept` asks for HTML (the browsable API). Both paths share the
edge (`core.edge`: Host check, body limit, error answers, headers) and request observation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.urls import URLPattern, URLResolver

from core import edge
from core.errors import ApiError
from core.observability import UNMATCHED_ROUTE, route_template

Handler = Callable[[dict[str, Any], Any, dict[bytes, bytes]], Awaitable[edge.Answer]]


@dataclass(frozen=True)
class FastRoute:
    method: str
    path: str  # the exact request path, which is also the route template (no parameters)
    handler: Handler
    allow: bytes  # the `Allow` header DRF sends on this route


def _walk(patterns: Iterable[Any], prefix: str = "") -> Iterable[tuple[str, URLPattern]]:
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def fast_routes(
    urlpatterns: Iterable[Any], handlers: Mapping[tuple[str, str], Handler]
) -> list[FastRoute]:
    """The fast-path table: `handlers[(method, url_name)]` answers `method` on the URLconf's route
    named `url_name`. Refuses (ImproperlyConfigured) a name that is not in the URLconf, a route
    with parameters, and a method the DRF view does not answer."""
    by_name = {pattern.name: (route, pattern) for route, pattern in _walk(urlpatterns)}
    table: list[FastRoute] = []
    for (method, name), handler in handlers.items():
        if name not in by_name:
            raise ImproperlyConfigured(f"fast route {method} {name!r} is not in the URLconf")
        route, pattern = by_name[name]
        path = route_template(route)
        if "{" in path:
            raise ImproperlyConfigured(f"fast route {method} {path} has path parameters")
        view_class = getattr(pattern.callback, "view_class", None)
        if view_class is None or not hasattr(view_class, method.lower()):
            raise ImproperlyConfigured(f"the view of {path} does not answer {method}")
        allow = edge.view_allow(view_class)
        if allow is None:
            raise ImproperlyConfigured(f"the view of {path} is not a DRF view")
        table.append(FastRoute(method, path, handler, allow.encode()))
    return table


class FastPath:
    """ASGI app: the routes of `routes` here, everything else to `app` (Django behind
    `edge.Guard`)."""

    def __init__(self, app: edge.ASGIApp, routes: Iterable[FastRoute]) -> None:
        self.app = app
        self.routes = {(route.method, route.path): route for route in routes}
        self._host_allowed: edge.HostCheck | None = None
        self._headers: dict[tuple[str, str], edge.Headers] = {}

    def _prepare(self) -> edge.HostCheck:
        """Read the settings once (the first request): Host check and per-route headers."""
        base = [(b"content-type", edge.JSON), (b"vary", b"Accept")]
        security = edge.security_headers()
        self._headers = {
            key: [*base, (b"allow", route.allow), *security] for key, route in self.routes.items()
        }
        self._host_allowed = edge.HostCheck()
        return self._host_allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        key = (scope["method"], scope["path"])
        route = self.routes.get(key)
        if route is None:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        accept = headers.get(b"accept")
        if accept is not None and b"text/html" in accept:
            return await self.app(scope, receive, send)
        host_allowed = self._host_allowed or self._prepare()
        started = time.perf_counter()
        observed_route = route.path
        try:
            if not host_allowed(headers.get(b"host")):
                # The same answer (and observation) as edge.Guard gives in front of Django.
                observed_route = UNMATCHED_ROUTE
                raise ApiError(400, edge.BAD_REQUEST)
            gate = edge.auth_gate()
            if gate.enforcement is not edge.Enforcement.OFF:
                receive, answer = await self._admit(gate, scope, receive, headers, route)
                if answer is None:
                    answer = await route.handler(scope, receive, headers)
            else:
                scope["principal"] = edge.open_mode_principal(
                    edge._header(headers, edge.OPERATOR_HEADER)
                )
                answer = await route.handler(scope, receive, headers)
        except edge.Disconnected:
            return None
        except Exception as exc:
            answer = edge.error_answer(exc)
        await edge.send_answer(send, answer, self._headers[key])
        edge.observe(scope, observed_route, answer[0], started, answer[1])
        return None

    @staticmethod
    async def _admit(
        gate: edge.AuthGate,
        scope: dict[str, Any],
        receive: Any,
        headers: dict[bytes, bytes],
        route: FastRoute,
    ) -> tuple[Any, edge.Answer | None]:
        """The edge's decision; the body, when the decision had to read it (a node's events),
        is replayed to the handler."""
        read: list[bytes] = []

        async def body() -> bytes:
            read.append(await edge.read_body(receive, headers.get(b"content-length")))
            return read[0]

        answer = await gate.admit(scope, headers, route.path, {}, body)
        if read:
            receive = edge._replay(read[0], receive)
        return receive, answer
