"""The HTTP edge, shared by both request paths (the fast path, `core.fastpath`, and Django/DRF).

One place for what every answer has in common:

* `read_body`: the request body, with `MAX_REQUEST_BODY_BYTES` enforced while reading (413 as soon
  as the declared or received size passes it; nothing past the limit is buffered). The fast
  handlers call it; `Guard` calls it in front of Django, which then gets the body replayed.
* `error_answer`: an exception -> `(status, body, headers)`: ApiError, the database failures of
  `core.dberrors` (busy 503 + Retry-After, disk full 507, NUL 400, corrupt: the process ends),
  413, and 500 for anything else. The Django middleware and the DRF exception handler turn the
  same answers into responses (`to_response`), so every message is written once, here.
* `security_headers`: the headers Django's SecurityMiddleware puts on every answer, read from the
  same settings; the fast path sends them, plus `Vary: Accept` and the route's `Allow` as DRF does.
* `HostCheck`: the Host/ALLOWED_HOSTS check; a refused Host is the same 400 on both paths.
* `Guard`: Django's ASGI app behind the edge (Host check, body limit) as the fast path is.

Imports nothing of this repository but `core`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from django.conf import settings
from django.http import HttpResponse
from django.http.request import split_domain_port, validate_host
from django.urls import Resolver404, resolve
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from core import dberrors
from core.auth import (
    ANONYMOUS,
    Enforcement,
    Kind,
    Principal,
    Role,
    authorize,
    bearer_token,
    open_mode_principal,
    open_mode_refusal,
    principal_from_tls,
)
from core.errors import BAD_REQUEST, INTERNAL_ERROR, ApiError, error_body, malformed_json
from core.observability import (
    UNMATCHED_ROUTE,
    client_identity_from_scope,
    error_reason,
    observe_request,
    route_template,
)
from core.policy import SELF_GUARDED_PREFIXES
from core.revocation import RevocationWatch

logger = logging.getLogger("orchestrator.request")

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, bytes, Headers]
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

JSON = b"application/json"
BAD_CONTENT_LENGTH = "invalid Content-Length header"
# Status and message of each database failure dberrors.classify names (CORRUPT ends the process).
_DB_ANSWERS = {
    dberrors.BUSY: (503, "the database is busy; retry shortly"),
    dberrors.UNAVAILABLE: (503, dberrors.UNAVAILABLE_MESSAGE),
    dberrors.FULL: (507, "the disk holding the database is full; nothing was stored"),
    dberrors.NUL: (400, dberrors.NUL_MESSAGE),
}


class Disconnected(Exception):
    """The client went away before its request body arrived."""


def too_large() -> ApiError:
    limit = settings.MAX_REQUEST_BODY_BYTES
    return ApiError(413, f"request body is larger than the limit of {limit} bytes", limit=limit)


def check_content_length(value: str | bytes | None) -> None:
    """Refuse a declared body size over the limit (413) or that is not a number (400)."""
    if not value:
        return
    try:
        declared = int(value)
    except ValueError:
        raise ApiError(400, BAD_CONTENT_LENGTH) from None
    if declared > settings.MAX_REQUEST_BODY_BYTES:
        raise too_large()


async def read_body(receive: Any, content_length: bytes | None) -> bytes:
    """The whole request body; ApiError 413 as soon as it passes the limit, Disconnected when
    the client goes away first."""
    check_content_length(content_length)
    limit = settings.MAX_REQUEST_BODY_BYTES
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large()
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def query_params(scope: dict[str, Any]) -> dict[str, str]:
    """The query string as a dict (the last value of a repeated key wins, as in Django's
    `QueryDict.dict()`); blank values are kept."""
    raw = scope.get("query_string") or b""
    if not raw:
        return {}
    return dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="replace"))


def json_bytes(message: str, **detail: Any) -> bytes:
    return orjson.dumps(error_body(message, **detail))


def retry_after_headers(status: int) -> Headers:
    """Every 503 tells the client when to retry (the contract's `Retry-After`)."""
    if status == 503:
        return [(b"retry-after", str(dberrors.RETRY_AFTER_SECONDS).encode())]
    return []


def api_error_answer(exc: ApiError) -> Answer:
    return (
        exc.status_code,
        json_bytes(exc.message, **exc.extra),
        retry_after_headers(exc.status_code),
    )


def db_error_answer(exc: BaseException) -> Answer | None:
    """The answer for a database failure, None when `exc` is not one. A corrupt store ends the
    process here."""
    kind = dberrors.classify(exc)
    if kind == dberrors.CORRUPT:
        dberrors.die_corrupt(exc)
    mapped = _DB_ANSWERS.get(kind) if kind is not None else None
    if mapped is None:
        return None
    status, message = mapped
    return status, json_bytes(message), retry_after_headers(status)


def internal_error_answer() -> Answer:
    return 500, json_bytes(INTERNAL_ERROR), []


def error_answer(exc: BaseException) -> Answer:
    """Any exception of a request -> its answer (unexpected ones are logged and become 500)."""
    if isinstance(exc, ApiError):
        return api_error_answer(exc)
    answer = db_error_answer(exc)
    if answer is not None:
        return answer
    logger.error("unhandled error on the fast path", exc_info=exc)
    return internal_error_answer()


def message_answer(status: int, message: str) -> Answer:
    return status, json_bytes(message), retry_after_headers(status)


def to_response(answer: Answer) -> HttpResponse:
    """A Django response with exactly the status, body and extra headers of `answer` (the
    security headers and `Vary` are added as for every other Django answer)."""
    status, body, extra = answer
    response = HttpResponse(body, status=status, content_type="application/json")
    for name, value in extra:
        response[name.decode("latin-1")] = value.decode("latin-1")
    response["Vary"] = "Accept"
    return response


def json_answer(request: Any, status: int, body: bytes) -> HttpResponse | Response:
    """For a DRF view: the fast path's exact JSON bytes for JSON clients, the parsed data for
    the browsable API (`request` is DRF's Request)."""
    if getattr(request.accepted_renderer, "format", "json") == "json":
        return HttpResponse(body, status=status, content_type="application/json")
    return Response(orjson.loads(body), status=status)


def security_headers() -> Headers:
    """What Django's SecurityMiddleware adds to every answer, from the same settings."""
    headers: Headers = []
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append((b"x-content-type-options", b"nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        if not isinstance(policy, str):
            policy = ",".join(policy)
        headers.append((b"referrer-policy", policy.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(
            (b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode())
        )
    return headers


def view_allow(view_class: Any) -> str | None:
    """The `Allow` header a DRF view sends (HEAD wherever GET is, as Django's `View.setup`
    adds); None for a view that is not DRF's."""
    if not hasattr(view_class, "allowed_methods"):
        return None
    view = view_class()
    if hasattr(view, "get") and not hasattr(view, "head"):
        view.head = view.get
    return ", ".join(view.allowed_methods)


class HostCheck:
    """`ALLOWED_HOSTS`, read once: True when the request's Host may be served."""

    def __init__(self) -> None:
        self.allowed = list(settings.ALLOWED_HOSTS)
        self.any_host = "*" in self.allowed

    def __call__(self, host: bytes | None) -> bool:
        if self.any_host:
            return True
        domain, _port = split_domain_port(host.decode("latin-1") if host else "")
        return bool(domain) and validate_host(domain, self.allowed)


async def send_answer(send: Any, answer: Answer, base: Headers) -> None:
    status, body, extra = answer
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*base, (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


def observe(
    scope: dict[str, Any], route: str, status: int, started: float, body: bytes = b""
) -> None:
    """Count and log an answer of the edge (`body`: the answer's, for a 4xx's reason)."""
    client = scope.get("client")
    observe_request(
        method=scope["method"],
        route=route,
        path=scope["path"],
        status=status,
        duration=time.perf_counter() - started,
        client=client[0] if client else None,
        client_identity=client_identity_from_scope(scope),
        error=error_reason(status, body),
    )


def _replay(body: bytes, receive: Any) -> Any:
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict[str, Any]:
        return pending.pop() if pending else await receive()

    return replayed


def _route_allow(path: str) -> Headers:
    """The `Allow` header of the DRF view at `path`, which every answer on that route carries
    (read only for the edge's own error answers)."""
    try:
        match = resolve(path)
    except Resolver404:
        return []
    allow = view_allow(getattr(match.func, "view_class", None))
    return [(b"allow", allow.encode())] if allow else []


class Guard:
    """Django behind the edge: the Host check and the body limit happen here, as on the fast
    path, and Django gets the body (read once, within the limit) replayed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._host_allowed: HostCheck | None = None
        self._headers: Headers = []

    def _prepare(self) -> HostCheck:
        """Read the settings once (the first request)."""
        self._headers = [(b"content-type", JSON), (b"vary", b"Accept"), *security_headers()]
        self._host_allowed = HostCheck()
        return self._host_allowed

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host_allowed = self._host_allowed or self._prepare()
        started = time.perf_counter()
        headers = dict(scope["headers"])
        try:
            if not host_allowed(headers.get(b"host")):
                raise ApiError(400, BAD_REQUEST)
            body = await read_body(receive, headers.get(b"content-length"))
        except Disconnected:
            return None
        except ApiError as exc:
            answer = api_error_answer(exc)
            await send_answer(send, answer, [*self._headers, *_route_allow(scope["path"])])
            return observe(scope, UNMATCHED_ROUTE, answer[0], started, answer[1])
        gate = _gate
        route, params = (
            _route_of(scope["path"])
            if gate.enforcement is not Enforcement.OFF
            else (
                None,
                {},
            )
        )

        async def read() -> bytes:
            return body

        denied = await gate.admit(scope, headers, route, params, read)
        if denied is not None:
            await send_answer(send, denied, [*self._headers, *_route_allow(scope["path"])])
            return observe(scope, route or UNMATCHED_ROUTE, denied[0], started, denied[1])
        return await self.app(scope, _replay(body, receive), send)


def _route_of(path: str) -> tuple[str | None, dict[str, Any]]:
    """The route template (as in the OpenAPI document and core.policy) and path parameters of
    `path`, or (None, {}) when no route matches."""
    try:
        match = resolve(path)
    except Resolver404:
        return None, {}
    return route_template(match.route), dict(match.kwargs)


# --- the Django side -------------------------------------------------------------------------


def drf_answer(request: Any, answer: Answer) -> HttpResponse | Response:
    """`answer` from a DRF view: the same bytes for JSON clients, data for the browsable API
    (DRF adds `Allow` and `Vary` to either)."""
    if getattr(getattr(request, "accepted_renderer", None), "format", "json") == "json":
        return to_response(answer)
    status_code, body, extra = answer
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in extra}
    return Response(orjson.loads(body), status=status_code, headers=headers)


def _first_validation_error(detail: Any, path: str = "") -> tuple[str, str]:
    """Walk a DRF ValidationError detail and return (field path, message) of the first error."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            sub = key if not path else f"{path}.{key}"
            if key == "non_field_errors":
                sub = path
            return _first_validation_error(value, sub)
    if isinstance(detail, list) and detail:
        if all(isinstance(item, str | exceptions.ErrorDetail) for item in detail):
            return path, str(detail[0])
        for index, item in enumerate(detail):
            if item:
                return _first_validation_error(item, f"{path}[{index}]" if path else str(index))
    return path, str(detail)


def api_exception_handler(
    exc: Exception, context: dict[str, Any]
) -> HttpResponse | Response | None:
    """DRF exception handler: reshape every API error into the contract's error body."""
    if isinstance(exc, ApiError):
        return drf_answer(context.get("request"), api_error_answer(exc))
    response = exception_handler(exc, context)
    if response is None:
        return None  # not an API exception: ApiErrorMiddleware decides (503/507/...)
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_validation_error(exc.detail)
        if field:
            body = error_body(f"invalid field '{field}': {message}", field=field)
        else:
            body = error_body(message)
        response.data = body
        response.status_code = status.HTTP_400_BAD_REQUEST
        return response
    if isinstance(exc, exceptions.ParseError):
        response.data = error_body(malformed_json(exc.detail).message)
        return response
    if isinstance(exc, exceptions.MethodNotAllowed):
        response.data = error_body(f"method {context['request'].method} is not allowed here")
        return response
    if isinstance(exc, exceptions.NotFound):
        message = str(exc.detail)
        response.data = error_body(message if message != "Not found." else "not found")
        return response
    detail = getattr(exc, "detail", None)
    response.data = error_body(str(detail) if detail else str(exc))
    return response


# --- who is asking (API.md §6): one gate for both request paths ------------------------------

TokenResolver = Callable[[str], Principal | None]
DenialHook = Callable[..., None]
OPERATOR_HEADER = b"x-autonomy-operator"
BAD_TOKEN = "Unknown, revoked or expired token"
BAD_AUTHORIZATION = "Malformed Authorization header: send `Authorization: Bearer <token>`"
EVENTS_ROUTE = "/v1/events"


class TokenCache:
    """Resolved bearer tokens, kept `ttl` seconds: a request with a known token costs one dict
    lookup (plus one `os.stat` of the revocation stamp, `core.revocation`). A miss resolves on
    the database reader pool (`core.dbthreads`). An expired token is refused on its first request
    after `expires_at` (checked on every use); a revocation signalled through `revocations`
    (stamp file, PostgreSQL NOTIFY) or by this process (`forget`) drops the whole cache, so the
    revoked token is refused on its next request; an unsignalled change shows after `ttl`."""

    def __init__(
        self,
        resolve: TokenResolver,
        ttl: float = 2.0,
        max_entries: int = 10_000,
        revocations: RevocationWatch | None = None,
    ):
        self.resolve = resolve
        self.ttl = ttl
        self.max_entries = max_entries
        self.revocations = revocations
        self._entries: dict[str, tuple[Principal | None, float]] = {}

    async def principal(self, token: str) -> Principal | None:
        now = time.monotonic()
        if self.revocations is not None and self.revocations.changed():
            self._entries.clear()
        hit = self._entries.get(token)
        if hit is not None and hit[1] > now:
            resolved = hit[0]
        else:
            from core import dbthreads

            resolved = await dbthreads.run_read(self.resolve, token)
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # many distinct (mostly bad) tokens: start over, bounded
            self._entries[token] = (resolved, now + self.ttl)
        expires_at = resolved.expires_at if resolved is not None else None
        if expires_at is not None and expires_at <= time.time():
            return None  # expired since it was cached
        return resolved

    def forget(self) -> None:
        self._entries.clear()


@dataclass
class AuthGate:
    """The edge's authentication and authorization (both paths call `admit`). Configured once by
    `serve` (`configure_auth`); unconfigured it is `--auth off` (in-process tests, the test
    client), where every request acts as the local operator of open mode."""

    enforcement: Enforcement = Enforcement.OFF
    tokens: TokenCache | None = None
    on_denied: DenialHook | None = None

    def _deny(
        self,
        scope: dict[str, Any],
        principal: Principal,
        route: str | None,
        status: int,
        body: dict[str, Any],
        reason: str,
        headers: Headers,
    ) -> Answer:
        if self.on_denied is not None:
            try:
                self.on_denied(
                    principal=principal,
                    route=route,
                    reason=reason,
                    status=status,
                    source_ip=_peer(scope),
                    method=scope["method"],
                    error=body.get("error"),
                )
            except Exception:
                logger.exception("could not record a denial")
        return status, orjson.dumps(body), headers

    async def _credential(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> Principal:
        raw = headers.get(b"authorization")
        token = bearer_token(raw.decode("latin-1") if raw is not None else None)
        if token is not None:  # a token wins, also under mTLS
            if token == "":
                return Principal(Kind.ANONYMOUS, "anonymous", rejected=BAD_AUTHORIZATION)
            resolved = await self.tokens.principal(token) if self.tokens is not None else None
            return resolved or Principal(Kind.ANONYMOUS, "anonymous", rejected=BAD_TOKEN)
        tls = (scope.get("extensions") or {}).get("tls")
        return principal_from_tls(tls) or ANONYMOUS

    async def admit(
        self,
        scope: dict[str, Any],
        headers: dict[bytes, bytes],
        route: str | None,
        path_params: dict[str, Any],
        body: Callable[[], Awaitable[bytes]],
    ) -> Answer | None:
        """None when the request may go on (scope["principal"] is set), else the answer (401,
        403, or open mode's 400/403/415), already handed to the denial recorder."""
        claimed = _header(headers, OPERATOR_HEADER)
        path = scope["path"]
        if self.enforcement is not Enforcement.ENFORCED:
            if self.enforcement is Enforcement.OPEN:
                refusal = open_mode_refusal(
                    method=scope["method"],
                    peer_host=_peer(scope),
                    host_header=_header(headers, b"host"),
                    origin=_header(headers, b"origin"),
                    sec_fetch_site=_header(headers, b"sec-fetch-site"),
                    content_type=_header(headers, b"content-type"),
                    body_length=_declared_length(headers),
                    json_only=path.startswith("/v1/"),
                )
                if refusal is not None:
                    return self._deny(
                        scope,
                        ANONYMOUS,
                        route,
                        refusal.status,
                        refusal.body(),
                        refusal.reason,
                        [],
                    )
            scope["principal"] = open_mode_principal(claimed)
            return None
        if path.startswith(SELF_GUARDED_PREFIXES):
            return None  # the admin checks its own staff login and session
        principal = (await self._credential(scope, headers)).with_claim(claimed)
        query = query_params(scope)
        node_ids: list[Any] = []
        if principal.role is Role.NODE and route == EVENTS_ROUTE and scope["method"] == "POST":
            node_ids = _event_node_ids(await body())
        decision = authorize(
            principal,
            scope["method"],
            route,
            path_params=path_params,
            query=query,
            body_node_ids=node_ids,
        )
        if not decision.allowed:
            return self._deny(
                scope,
                principal,
                route,
                decision.status,
                decision.body(),
                decision.reason,
                [(b"www-authenticate", b"Bearer")] if decision.status == 401 else [],
            )
        if decision.assumed_node_id is not None:  # a node polling without ?node_id=
            query_string = scope.get("query_string") or b""
            extra = urlencode({"node_id": decision.assumed_node_id}).encode()
            scope["query_string"] = query_string + b"&" + extra if query_string else extra
        scope["principal"] = principal
        return None


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


def _peer(scope: dict[str, Any]) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _declared_length(headers: dict[bytes, bytes]) -> int:
    raw = headers.get(b"content-length")
    if raw is None:
        return 1 if headers.get(b"transfer-encoding") else 0
    try:
        return int(raw)
    except ValueError:
        return 1


def _event_node_ids(body: bytes) -> list[Any]:
    """The `node_id` of every event of a `POST /v1/events` body, in order (nothing when the
    body is not a batch: the route's own validation answers that)."""
    try:
        parsed = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError:
        return []
    events = parsed.get("events") if isinstance(parsed, dict) else None
    if not isinstance(events, list):
        return []
    return [e.get("node_id") if isinstance(e, dict) else None for e in events]


_gate = AuthGate()


def auth_gate() -> AuthGate:
    return _gate


def configure_auth(
    enforcement: Enforcement,
    *,
    resolve_token: TokenResolver | None = None,
    on_denied: DenialHook | None = None,
    token_ttl: float = 2.0,
    revocations: RevocationWatch | None = None,
) -> AuthGate:
    """Set how the edge judges requests (serve calls it once before serving)."""
    _gate.enforcement = enforcement
    _gate.tokens = (
        TokenCache(resolve_token, ttl=token_ttl, revocations=revocations) if resolve_token else None
    )
    _gate.on_denied = on_denied
    return _gate
