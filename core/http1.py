"""The HTTP/1.1 engine of `serve`'s plain-HTTP listeners: an asyncio protocol on daphne's loop.

Why not daphne's own: in the 50,000-node fleet (docs/performance.md, "The HTTP engine of plain
listeners") two thirds of the event loop's time went to Twisted's HTTP parsing and writing
(`LineReceiver` per header line, `Headers` objects, the reactor's logging context around each
read) and to daphne's per-request machinery (an `inlineCallbacks` chain, an `asyncio.Queue` and
an application task per request, a once-a-second sweep over every request), not to the
application. This protocol parses a request in a few `bytes` operations, runs the same ASGI
application (request ids, error guard, metrics, the fast path, Django behind it) as one task per
request and writes each answer with one `write`. The server's CPU in that fleet went from
131-140 % to 108-110 % of a core for the same requests, and p99 from over a second to under 250 ms.

Only plain HTTP: TLS listeners stay on daphne and Twisted (pyOpenSSL, the CRL, the client
identity hooks of `core.tls`). What a client sees is what daphne gave: the same answers, `Date`
and `Server` headers, keep-alive (HTTP/1.1 by default, HTTP/1.0 with `Connection: keep-alive`),
`Expect: 100-continue`, chunked request bodies, `HEAD` without a body. The hardening of
`core.server` applies here too (`ClientLimits`): the absolute header and body deadlines (checked
by the same sweep), the per-client connection cap and the body limit (at most limit + 1 bytes
of a body are kept; the application answers 413). What the parser refuses is a JSON 400 (431
for a header section over `MAX_HEADER_BYTES`, 501 for a transfer coding other than chunked) and
the connection is closed: a request line or header that is not HTTP/1.1's grammar, a header
name outside RFC 9110's token characters or a value with a control character (daphne's checks),
`Content-Length` that is not one number, or both `Content-Length` and `Transfer-Encoding` (a
request smuggling shape). As daphne does, header names with `_` are left out of the scope (so
`X_Forwarded_For` cannot pose as `X-Forwarded-For`) and the path is percent-decoded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import orjson

from core import server as limits

logger = logging.getLogger("orchestrator.server")

# Request line and header section, as Twisted's HTTPChannel bounds them.
MAX_HEADER_BYTES = 16384
MAX_HEADERS = 500
# A chunk-size line (hex digits and extensions).
MAX_CHUNK_LINE = 1024
# While an answer is being computed, bytes of the next (pipelined) requests kept before reading
# pauses.
MAX_PENDING_BYTES = 1 << 20

TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# Disallowed in a field value (RFC 9110 §5.5; daphne's set, plus NUL, CR and LF).
_BAD_VALUE = re.compile(b"[\x00\r\n\x0b\x0c\x1c\x1d\x1e\x85]")
_HEX = re.compile(rb"[0-9a-fA-F]{1,16}")
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}

_HEAD, _BODY, _BUSY, _CLOSED = range(4)
_IDENTITY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER = range(5)

_REASONS: dict[int, bytes] = {}
# Answer header names as Twisted writes them (`Content-Type`, `X-Request-Id`): clients that read
# headers into a plain dict see the names they saw from daphne.
_NAMES: dict[bytes, bytes] = {}
_SPECIAL_NAMES = {
    b"Content-Md5": b"Content-MD5",
    b"Dnt": b"DNT",
    b"Etag": b"ETag",
    b"P3p": b"P3P",
    b"Te": b"TE",
    b"Www-Authenticate": b"WWW-Authenticate",
    b"X-Xss-Protection": b"X-XSS-Protection",
}
_date: list[Any] = [0, b""]

# Requests whose headers arrived and whose answer is not written yet (serve's drain counts
# them), and the application tasks running (cancelled at shutdown).
IN_FLIGHT: set[Http1] = set()
TASKS: set[asyncio.Task[None]] = set()


def _reason(status: int) -> bytes:
    reason = _REASONS.get(status)
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Unknown"
        _REASONS[status] = reason
    return reason


def _header_name(name: bytes) -> bytes:
    canonical = _NAMES.get(name)
    if canonical is None:
        canonical = b"-".join(word.capitalize() for word in name.split(b"-"))
        canonical = _SPECIAL_NAMES.get(canonical, canonical)
        if len(_NAMES) < 1000:
            _NAMES[name] = canonical
    return canonical


def _date_header() -> bytes:
    now = int(time.time())
    if _date[0] != now:
        _date[0], _date[1] = now, formatdate(now, usegmt=True).encode()
    return bytes(_date[1])


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Http1(asyncio.Protocol):
    """One connection: requests one after the other (pipelined ones wait their turn)."""

    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.transport: Any = None
        self.buffer = b""
        self.state = _HEAD
        self.client: list[Any] | None = None
        self.server: list[Any] | None = None
        self.peer = ""
        self.watch: Any = None
        self.paused = False
        self.gone: asyncio.Future[None] = loop.create_future()
        self._reset_request()

    def _reset_request(self) -> None:
        self.scope: dict[str, Any] = {}
        self.keep_alive = True
        self.head_only = False
        self.version = b"HTTP/1.1"
        self.body: list[bytes] = []
        self.kept = 0
        self.coding = _IDENTITY
        self.remaining = 0

    # --- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.client, self.server = [str(peer[0]), peer[1]], [str(local[0]), local[1]]
        if not limits.client_opened(str(peer[0])):
            self.state = _CLOSED
            transport.abort()
            return
        self.peer = str(peer[0])
        self.watch = limits._Watch(self.peer, transport.abort)
        self._arm(limits._LIMITS.header_timeout, "header timeout")
        limits._WATCHED.add(self.watch)
        limits._start_sweeper()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        IN_FLIGHT.discard(self)
        if not self.gone.done():
            self.gone.set_result(None)
        if self.watch is not None:
            limits._WATCHED.discard(self.watch)
            self.watch = None
        if self.peer:
            limits.client_closed(self.peer)
            self.peer = ""

    def _arm(self, seconds: float, why: str) -> None:
        if self.watch is not None:
            self.watch.arm(seconds, why)

    def data_received(self, data: bytes) -> None:
        if self.state == _BODY:
            self._body_bytes(data)
            return
        if self.state == _CLOSED:
            return
        self.buffer = self.buffer + data if self.buffer else data
        if self.state == _HEAD:
            self._next_request()
        elif self.state == _BUSY and len(self.buffer) > MAX_PENDING_BYTES and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        # The client closed its side: finish an answer in progress, then close.
        self.keep_alive = False
        return self.state == _BUSY or None

    # --- parsing ----------------------------------------------------------------------------

    def _next_request(self) -> None:
        try:
            self._parse_head()
        except BadRequest as refused:
            self._refuse(refused.status, refused.message)

    def _parse_head(self) -> None:
        buffer = self.buffer.lstrip(b"\r\n")  # RFC 9112 §2.2: ignore empty lines before one
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self.buffer = buffer
            if len(buffer) > MAX_HEADER_BYTES:
                raise BadRequest(431, "the request's header section is too large")
            return
        if end > MAX_HEADER_BYTES:
            raise BadRequest(431, "the request's header section is too large")
        lines = buffer[:end].split(b"\r\n")
        rest = buffer[end + 4 :]
        if len(lines) > MAX_HEADERS + 1:
            raise BadRequest(431, "the request has too many headers")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not TOKEN.fullmatch(parts[0]) or not parts[1].startswith(b"/"):
            raise BadRequest(400, "malformed request line")
        method, target, version = parts
        http_version = _VERSIONS.get(version)
        if http_version is None:
            raise BadRequest(400, "unsupported HTTP version")
        self.version = version
        self.keep_alive = version == b"HTTP/1.1"
        headers: list[tuple[bytes, bytes]] = []
        length: bytes | None = None
        chunked = continue_ = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not TOKEN.fullmatch(name):
                raise BadRequest(400, "invalid header name")
            value = value.strip(b" \t")
            if _BAD_VALUE.search(value):
                raise BadRequest(400, "invalid header value")
            name = name.lower()
            if name == b"content-length":
                if not value.isdigit() or (length is not None and value != length):
                    raise BadRequest(400, "invalid Content-Length header")
                length = value
            elif name == b"transfer-encoding":
                if value.lower() != b"chunked" or chunked:
                    raise BadRequest(501, "only the chunked transfer coding is supported")
                chunked = True
            elif name == b"connection":
                tokens = {token.strip() for token in value.lower().split(b",")}
                if b"close" in tokens:
                    self.keep_alive = False
                elif b"keep-alive" in tokens and http_version == "1.0":
                    self.keep_alive = True
            elif name == b"expect" and value.lower() == b"100-continue":
                continue_ = http_version == "1.1"
            if b"_" not in name:
                headers.append((name, value))
        if chunked and length is not None:
            raise BadRequest(400, "a request may not carry both Content-Length and chunked")
        path, _, query = target.partition(b"?")
        try:
            text_path = path.decode("ascii")
            query.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest(400, "invalid characters in the request target") from None
        self.head_only = method == b"HEAD"
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": http_version,
            "method": method.decode("ascii"),
            "path": unquote(text_path),
            "raw_path": path,
            "root_path": "",
            "scheme": "http",
            "query_string": query,
            "headers": headers,
            "client": self.client,
            "server": self.server,
        }
        self.buffer = b""
        IN_FLIGHT.add(self)
        if chunked:
            self.coding = _CHUNK_SIZE
        else:
            self.coding = _IDENTITY
            self.remaining = int(length) if length is not None else 0
            if self.remaining == 0:
                self._dispatch(rest)
                return
        self.state = _BODY
        self._arm(limits._LIMITS.body_timeout, "body timeout")
        if continue_:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if rest:
            self._body_bytes(rest)

    def _keep(self, data: bytes) -> None:
        """Keep body bytes up to the limit + 1 (the application answers 413 beyond it)."""
        limit = limits._LIMITS.max_body_bytes
        if limit is not None:
            room = limit + 1 - self.kept
            if room <= 0:
                return
            data = data[:room]
        self.kept += len(data)
        self.body.append(data)

    def _body_bytes(self, data: bytes) -> None:
        try:
            if self.coding == _IDENTITY:
                take = data[: self.remaining]
                self.remaining -= len(take)
                self._keep(take)
                if self.remaining == 0:
                    self._dispatch(data[len(take) :])
                return
            self._chunked(data)
        except BadRequest as refused:
            self._refuse(refused.status, refused.message)

    def _chunked(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        self.buffer = b""
        while True:
            if self.coding == _CHUNK_DATA:
                take = buffer[: self.remaining]
                self.remaining -= len(take)
                self._keep(take)
                buffer = buffer[len(take) :]
                if self.remaining:
                    return
                self.coding = _CHUNK_END
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_CHUNK_LINE:
                    raise BadRequest(400, "malformed chunked body")
                self.buffer = buffer
                return
            line, buffer = buffer[:end], buffer[end + 2 :]
            if self.coding == _CHUNK_END:
                if line:
                    raise BadRequest(400, "malformed chunked body")
                self.coding = _CHUNK_SIZE
            elif self.coding == _CHUNK_SIZE:
                size = line.split(b";", 1)[0].strip()
                if (
                    not size
                    or len(size) > 16
                    or not all(c in b"0123456789abcdefABCDEF" for c in size)
                ):
                    raise BadRequest(400, "malformed chunked body")
                self.remaining = int(size, 16)
                self.coding = _CHUNK_DATA if self.remaining else _TRAILER
            elif line:  # _TRAILER: trailer fields are read and dropped
                if len(line) > MAX_HEADER_BYTES:
                    raise BadRequest(431, "the request's trailer section is too large")
            else:
                self._dispatch(buffer)
                return

    # --- answering --------------------------------------------------------------------------

    def _dispatch(self, rest: bytes) -> None:
        self.state = _BUSY
        self.buffer = rest
        self._arm(0, "")
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        task = self.loop.create_task(self._answer(self.scope, body))
        TASKS.add(task)
        task.add_done_callback(TASKS.discard)

    async def _answer(self, scope: dict[str, Any], body: bytes) -> None:
        writer = _Answer(self)
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Shielded: an application that cancels its waiting receive (Django does, once it
            # answered) must not cancel the connection's own future.
            await asyncio.shield(self.gone)
            return {"type": "http.disconnect"}

        try:
            await self.app(scope, receive, writer.send)
        except asyncio.CancelledError:
            self.keep_alive = False  # shutdown, or the application gave up: close
            self._done()
            raise
        except Exception:
            logger.exception("the application failed on %s %s", scope["method"], scope["path"])
            if not writer.started:
                writer.error(500, "internal server error")
            self.keep_alive = False
        if not writer.finished:
            self.keep_alive = False
        self._done()

    def _done(self) -> None:
        IN_FLIGHT.discard(self)
        if self.state == _CLOSED:
            return
        if not self.keep_alive:
            self.state = _CLOSED
            self.transport.close()
            return
        self._reset_request()
        self.state = _HEAD
        self._arm(limits._LIMITS.header_timeout, "header timeout")
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        if self.buffer:
            self._next_request()

    def _refuse(self, status: int, message: str) -> None:
        """A request the parser refuses: a JSON error, then the connection is closed."""
        IN_FLIGHT.discard(self)
        self.keep_alive = False
        if self.state != _CLOSED:
            _Answer(self).error(status, message)
            self.state = _CLOSED
            self.transport.close()

    def write(self, data: bytes) -> None:
        if self.state != _CLOSED and not self.transport.is_closing():
            self.transport.write(data)


class _Answer:
    """The `send` of one request: the ASGI messages -> HTTP/1.1 bytes."""

    __slots__ = ("chunked", "connection", "finished", "head", "started")

    def __init__(self, connection: Http1) -> None:
        self.connection = connection
        self.head: dict[str, Any] | None = None
        self.started = self.finished = self.chunked = False

    def _status_line(self, status: int, headers: Any, length: int | None) -> bytes:
        conn = self.connection
        lines = [b"%s %d %s\r\n" % (conn.version, status, _reason(status))]
        has_length = has_server = False
        for name, value in headers:
            name = _header_name(name)
            if name == b"Content-Length":
                has_length = True
            elif name == b"Server":
                has_server = True
            if b"\r" in value or b"\n" in value:  # as Twisted: never a header injection
                value = value.replace(b"\r", b" ").replace(b"\n", b" ")
            lines.append(b"%s: %s\r\n" % (name, value))
        if status in (204, 304) or status < 200:
            pass  # no body and no length (RFC 9110 §8.6)
        elif not has_length:
            if length is not None:
                lines.append(b"Content-Length: %d\r\n" % length)
            elif conn.version == b"HTTP/1.1":
                self.chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                conn.keep_alive = False
        if not has_server:
            lines.append(b"Server: autonomy-orchestrator\r\n")
        lines.append(b"Date: %s\r\n" % _date_header())
        if not conn.keep_alive:
            lines.append(b"Connection: close\r\n")
        elif conn.version == b"HTTP/1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("the response has already started")
            self.started = True
            self.head = message
            return
        if kind != "http.response.body" or not self.started or self.finished:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        conn = self.connection
        if self.head is not None:
            start, self.head = self.head, None
            head = self._status_line(
                start["status"], start.get("headers", ()), None if more else len(body)
            )
            if conn.head_only or not body:
                conn.write(head)
            elif self.chunked:
                conn.write(head + b"%x\r\n%s\r\n" % (len(body), body))
            else:
                conn.write(head + body)
        elif body and not conn.head_only:
            conn.write(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)
        if not more:
            self.finished = True
            if self.chunked and not conn.head_only:
                conn.write(b"0\r\n\r\n")

    def error(self, status: int, message: str) -> None:
        body = orjson.dumps({"error": message})
        headers = [(b"content-type", b"application/json")]
        self.connection.keep_alive = False
        self.connection.write(self._status_line(status, headers, len(body)) + body)
        self.started = self.finished = True


class Http1Port:
    """What daphne and `serve` hold of a listening asyncio server (Twisted's port interface:
    the bound address, `stopListening`)."""

    def __init__(self, server: asyncio.AbstractServer, host: str, port: int) -> None:
        self._server = server
        self.host, self.port = host, port

    def getHost(self) -> Http1Port:
        return self

    def stopListening(self) -> None:
        self._server.close()


async def listen(app: Any, sock: Any) -> Http1Port:
    """Serve `app` on the bound, listening socket `sock` (on the running loop)."""
    loop = asyncio.get_running_loop()
    host, port = sock.getsockname()[:2]
    server = await loop.create_server(lambda: Http1(app, loop), sock=sock, backlog=1024)
    return Http1Port(server, host, port)


def cancel_all() -> list[asyncio.Task[None]]:
    """Cancel the answers still running (shutdown); the tasks, to wait for."""
    pending = [task for task in TASKS if not task.done()]
    for task in pending:
        task.cancel()
    return pending
