"""Web hardening for browsers (docs/security.md, "Hardening").

- `with_hsts(app)`: under TLS, every answer (both request paths) carries
  `Strict-Transport-Security`; `serve` wraps the application with it when it serves HTTPS.
- `json_errors(app)`: the outermost layer; an exception that escapes every other layer before
  an answer started (e.g. the static files handler's `SuspiciousFileOperation` for
  `/static/../orchestrator.sqlite3`) is a JSON answer, never daphne's HTML 500.
- `AdminHeadersMiddleware`: the admin's pages cannot be framed (`X-Frame-Options: DENY`, CSP
  `frame-ancestors 'none'`, against clickjacking of Cancel / Roll back) and run only the
  server's own scripts and style sheets (a Content-Security-Policy: no inline script or event
  handler; inline `style=` attributes only, which Django's admin and the phase badges use).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest, HttpResponse

from core import edge
from core.errors import BAD_REQUEST
from core.observability import UNMATCHED_ROUTE

logger = logging.getLogger("orchestrator.request")

HSTS_SECONDS = 365 * 24 * 3600
HSTS_HEADER = (b"strict-transport-security", b"max-age=%d" % HSTS_SECONDS)

ADMIN_PREFIX = "/admin/"
ADMIN_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def with_hsts(app: Any) -> Any:
    """ASGI wrapper adding HSTS to every HTTPS answer."""

    async def hsts(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("type") != "http" or scope.get("scheme") != "https":
            return await app(scope, receive, send)

        async def send_with_hsts(message: dict[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                headers = list(message.get("headers") or [])
                if not any(name.lower() == HSTS_HEADER[0] for name, _ in headers):
                    headers.append(HSTS_HEADER)
                message = {**message, "headers": headers}
            await send(message)

        return await app(scope, receive, send_with_hsts)

    return hsts


def json_errors(app: Any) -> Any:
    """ASGI wrapper: an exception raised before the answer started becomes a JSON answer
    (SuspiciousOperation → 400, a database failure → its 503/507, anything else → 500 with the
    traceback in the log); after the answer started, the connection is closed as before."""

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope.get("type") != "http":
            return await app(scope, receive, send)
        started_at = time.perf_counter()
        answered = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal answered
            if message.get("type") == "http.response.start":
                answered = True
            await send(message)

        try:
            return await app(scope, receive, tracking_send)
        except Exception as exc:
            if answered:
                raise
            if isinstance(exc, SuspiciousOperation):
                logger.warning("refused %s %s: %s", scope.get("method"), scope.get("path"), exc)
                answer = edge.message_answer(400, BAD_REQUEST)
            else:
                answer = edge.db_error_answer(exc) or edge.internal_error_answer()
                if answer[0] == 500:
                    logger.error(
                        "unhandled error on %s %s",
                        scope.get("method"),
                        scope.get("path"),
                        exc_info=exc,
                    )
            base = [(b"content-type", b"application/json"), *edge.security_headers()]
            await edge.send_answer(send, answer, base)
            edge.observe(scope, UNMATCHED_ROUTE, answer[0], started_at, answer[1])
            return None

    return guarded


class AdminHeadersMiddleware:
    """X-Frame-Options and Content-Security-Policy on every answer under /admin/."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if request.path.startswith(ADMIN_PREFIX):
            response["X-Frame-Options"] = "DENY"
            response.setdefault("Content-Security-Policy", ADMIN_CSP)
        return response
