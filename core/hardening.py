"""Web hardening for browsers (docs/security.md, "Hardening").

- `with_hsts(app)`: under TLS, every answer (both request paths) carries
  `Strict-Transport-Security`; `serve` wraps the application with it when it serves HTTPS.
- `AdminHeadersMiddleware`: the admin's pages cannot be framed (`X-Frame-Options: DENY`, CSP
  `frame-ancestors 'none'`, against clickjacking of Cancel / Roll back) and run only the
  server's own scripts and style sheets (a Content-Security-Policy: no inline script or event
  handler; inline `style=` attributes only, which Django's admin and the phase badges use).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

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
