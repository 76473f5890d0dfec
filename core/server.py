"""Running daphne in-process for `serve`: listening sockets, endpoints, graceful shutdown.

This module never imports models. `serve` builds a `ServeConfig`, binds the sockets itself (so a
bad address or a port in use is one clear error line before anything starts), and hands daphne
ready-made endpoints: TLS listeners through Twisted, plain-HTTP listeners through
`core.http1` on the same loop. The client limits (`ClientLimits`) here apply to both.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("orchestrator.server")

SHUTDOWN_GRACE_SECONDS = 10.0


class ServeError(Exception):
    """A flag value or start-up condition that stops `serve`; the message is one line."""


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int
    family: int

    def __str__(self) -> str:
        if self.family == socket.AF_INET6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_listen(value: str, flag: str = "--listen") -> ListenAddress:
    """`host:port`, `[v6]:port` or `:port` (all IPv4 interfaces)."""
    text = (value or "").strip()
    if not text:
        raise ServeError(f"{flag} is empty; expected host:port such as 127.0.0.1:8888")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ServeError(f"{flag} {value!r} is not a valid address; expected [v6addr]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ServeError(f"{flag} {value!r} has no port; expected host:port")
        if ":" in host:
            raise ServeError(f"{flag} {value!r}: write IPv6 addresses in brackets, e.g. [::1]:8888")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ServeError(f"{flag} {value!r}: port must be a number from 0 to 65535")
    host = host or "0.0.0.0"
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ServeError(f"{flag} {value!r}: cannot resolve host {host!r}: {exc}") from exc
        family = infos[0][0]
        host = str(infos[0][4][0])
    return ListenAddress(host=host, port=int(port_text), family=family)


def bind_socket(
    address: ListenAddress, flag: str = "--listen", *, reuse_port: bool = False
) -> socket.socket:
    """A listening socket; `reuse_port` (serve --workers) lets the other workers' sockets bind
    the same port (SO_REUSEPORT: the kernel spreads new connections over them)."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == 98:
            reason = "the port is already in use"
        raise ServeError(f"cannot listen on {flag} {address}: {reason}") from exc
    return sock


@dataclass
class Listener:
    """A bound socket plus how to serve it (plain HTTP, or wrapped by a TLS context factory)."""

    name: str
    sock: socket.socket
    family: int
    scheme: str = "http"
    wrap_factory: Callable[[Any], Any] | None = None  # factory -> factory (e.g. TLS wrapping)
    application: Any = None  # None = the main application
    port: Any = field(default=None, repr=False)
    address: str = ""

    def __post_init__(self) -> None:
        host, port = self.sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"

    def bound(self) -> str:
        """The address actually bound (port 0 resolved), for logs and tests."""
        return self.address


@dataclass(frozen=True)
class ClientLimits:
    """Bounds on what one client connection may hold (docs/security.md, "Hardening").

    `header_timeout`: seconds from the connection's start (TLS handshake included), or from the
    end of the previous answer on a kept-alive connection, until the request's headers are
    complete. `body_timeout`: seconds from the end of the headers until the whole body arrived.
    Both are absolute deadlines: a client trickling one byte at a time does not extend them
    (Twisted's own idle timer restarts on every byte). `max_connections_per_client`: open
    connections per client address; more are closed at once. `max_body_bytes`: the body limit;
    Twisted keeps at most one byte more (the application answers 413), never spooling the rest.
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections_per_client: int = 64
    max_body_bytes: int | None = None


_LIMITS = ClientLimits()
_OPEN_PER_CLIENT: dict[str, int] = {}


def _refused() -> Any:
    """The protocol of a connection over the per-client cap: closed as soon as it is made."""
    from twisted.internet.protocol import Protocol

    class Refused(Protocol):
        def connectionMade(self) -> None:
            transport: Any = self.transport
            transport.abortConnection()

    return Refused()


class _ClosedLog:
    """Counts connections closed by a limit; logs one summary line per minute at most, so a
    flood of slow clients cannot flood the log."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last = 0.0

    def note(self, why: str, client: str) -> None:
        self.counts[why] = self.counts.get(why, 0) + 1
        now = time.monotonic()
        if now - self.last >= 60.0:
            self.last = now
            summary = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
            self.counts = {}
            logger.warning(
                "closed slow or excess client connections (last from %s): %s", client, summary
            )


_CLOSED = _ClosedLog()


# How often the deadlines of open connections are checked: a deadline is enforced at most this
# much late. One sweep for all connections instead of a reactor timer armed and cancelled twice
# per request (which cost the keep-alive poll path measurably).
SWEEP_SECONDS = 0.25


class _Watch:
    """One connection's current deadline (`time.monotonic()`, None when none runs) and why."""

    __slots__ = ("abort", "client", "deadline", "why")

    def __init__(self, client: str, abort: Callable[[], None]) -> None:
        self.client = client
        self.abort = abort
        self.deadline: float | None = None
        self.why = ""

    def arm(self, seconds: float, why: str) -> None:
        """A deadline `seconds` from now (none when `seconds` is 0)."""
        if seconds > 0:
            self.deadline = time.monotonic() + seconds
            self.why = why
        else:
            self.deadline = None


def client_opened(client: str) -> bool:
    """Count a new connection of `client`; False (and noted) when it is over the cap: close it
    at once."""
    if client and _OPEN_PER_CLIENT.get(client, 0) >= _LIMITS.max_connections_per_client:
        _CLOSED.note("over the per-client connection cap", client)
        return False
    if client:
        _OPEN_PER_CLIENT[client] = _OPEN_PER_CLIENT.get(client, 0) + 1
    return True


def client_closed(client: str) -> None:
    """A connection counted by `client_opened` closed."""
    left = _OPEN_PER_CLIENT.get(client, 1) - 1
    if left > 0:
        _OPEN_PER_CLIENT[client] = left
    else:
        _OPEN_PER_CLIENT.pop(client, None)


_WATCHED: set[_Watch] = set()
_SWEEPER: list[Any] = []


def _sweep() -> None:
    """Close every connection whose deadline passed (runs on the reactor every SWEEP_SECONDS)."""
    if not _WATCHED:
        return
    now = time.monotonic()
    for watch in [w for w in _WATCHED if w.deadline is not None and w.deadline <= now]:
        watch.deadline = None
        _CLOSED.note(watch.why, watch.client)
        watch.abort()


def _start_sweeper() -> None:
    if _SWEEPER:
        return
    from twisted.internet.task import LoopingCall

    loop = LoopingCall(_logged(_sweep))
    loop.start(SWEEP_SECONDS, now=False)
    _SWEEPER.append(loop)


def _guard_connection(protocol: Any, client: str) -> None:
    """Absolute header and body deadlines on one HTTP connection (see ClientLimits): a request
    only stamps a float; `_sweep` closes the connections past theirs."""
    channel = getattr(protocol, "_channel", None) or protocol
    limits = _LIMITS

    def abort() -> None:
        # twisted.web's outer protocol is a proxy: the channel holds the transport.
        transport = getattr(channel, "transport", None) or getattr(protocol, "transport", None)
        if transport is not None:
            transport.abortConnection()

    watch = _Watch(client, abort)
    arm = watch.arm

    def cancel() -> None:
        watch.deadline = None

    def wrap(name: str, before: Callable[[], None]) -> None:
        original = getattr(channel, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            before()
            return original(*args, **kwargs)

        setattr(channel, name, wrapped)

    body_timeout, header_timeout = limits.body_timeout, limits.header_timeout
    wrap("allHeadersReceived", lambda: arm(body_timeout, "body timeout"))
    wrap("allContentReceived", cancel)
    wrap("requestDone", lambda: arm(header_timeout, "header timeout"))
    original_lost = protocol.connectionLost

    def connection_lost(reason: Any) -> Any:
        _WATCHED.discard(watch)
        client_closed(client)
        return original_lost(reason)

    protocol.connectionLost = connection_lost
    arm(header_timeout, "header timeout")
    _WATCHED.add(watch)
    _start_sweeper()


class _TaggingFactory:
    """Marks each connection's protocol with its Listener, so a request knows where it came in,
    and applies the per-client connection cap and the read deadlines (ClientLimits)."""

    def __init__(self, factory: Any, listener: Listener) -> None:
        self._factory = factory
        self._listener = listener

    def buildProtocol(self, addr: Any) -> Any:
        client = str(getattr(addr, "host", "") or "")
        if not client_opened(client):
            return _refused()
        protocol = self._factory.buildProtocol(addr)
        if protocol is not None:
            protocol._orchestrator_listener = self._listener
            # twisted.web wraps its HTTPChannel; requests see the inner channel.
            inner = getattr(protocol, "_channel", None)
            if inner is not None:
                inner._orchestrator_listener = self._listener
            if client:
                _guard_connection(protocol, client)
        elif client:
            client_closed(client)
        return protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factory, name)


def listener_of(protocol: Any) -> Listener | None:
    """The Listener a daphne request protocol arrived on (None when unknown)."""
    channel = getattr(protocol, "channel", None) or protocol
    return getattr(channel, "_orchestrator_listener", None)


class _PreboundEndpoint:
    """A Twisted server endpoint over a socket we bound ourselves."""

    def __init__(self, reactor: Any, listener: Listener) -> None:
        self.reactor = reactor
        self.listener = listener

    def listen(self, factory: Any) -> Any:
        from twisted.internet import defer

        if self.listener.scheme == "http" and self.listener.wrap_factory is None:
            return self._listen_http1()
        factory = _TaggingFactory(factory, self.listener)
        if self.listener.wrap_factory is not None:
            factory = self.listener.wrap_factory(factory)
        try:
            port = self.reactor.adoptStreamPort(
                self.listener.sock.fileno(), self.listener.family, factory
            )
        except Exception:
            return defer.fail()
        self.listener.port = port
        self.listener.sock.close()  # Twisted holds its own duplicate of the descriptor
        return defer.succeed(port)

    def _listen_http1(self) -> Any:
        """Plain HTTP: served by `core.http1` on the reactor's asyncio loop."""
        import asyncio

        from twisted.internet import defer

        from core import http1

        app = self.listener.application or _MAIN_APPLICATION[0]
        # The reactor's loop: daphne makes it the current loop only after its endpoints listen.
        loop = self.reactor._asyncioEventloop
        future = asyncio.ensure_future(http1.listen(app, self.listener.sock), loop=loop)

        def listening(port: Any) -> Any:
            self.listener.port = port
            return port

        return defer.Deferred.fromFuture(future).addCallback(listening)


_ENDPOINTS: dict[str, Listener] = {}
_MAIN_APPLICATION: list[Any] = [None]  # what run_daphne serves (plain listeners: core.http1)


def _no_form_parsing_in_twisted() -> None:
    """Twisted parses `multipart/form-data` and form-urlencoded POST bodies into `request.args`
    before the application sees the request, and answers a malformed multipart body with a bare
    400 (no JSON, no access log). Nothing here reads `request.args`: the application parses
    bodies itself. So daphne's requests are built with that parsing switched off."""
    import daphne.http_protocol as daphne_http

    base = daphne_http.WebRequest
    if getattr(base, "_orchestrator", False):
        return

    class WebRequest(base):  # type: ignore[misc, valid-type]
        _orchestrator = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._parsePOSTFormSubmission = False
            self._body_kept = 0

        def handleContentChunk(self, data: bytes) -> None:
            # Keep at most limit + 1 bytes: the application still sees "too large" and answers
            # 413, but a huge (or chunked, or lying) upload is never spooled past the limit.
            limit = _LIMITS.max_body_bytes
            if limit is not None:
                room = limit + 1 - self._body_kept
                if room <= 0:
                    return
                data = data[:room]
                self._body_kept += len(data)
            super().handleContentChunk(data)

    # HTTPFactory.buildProtocol() looks the request class up in daphne's module by name.
    daphne_http.WebRequest = WebRequest
    _cheaper_twisted_per_request()


def _cheaper_twisted_per_request() -> None:
    """Two things Twisted does for every request that `serve` never uses (measured on the fleet
    bench: ~5 % of the event loop's time together):

    - `HTTPFactory.log` formats a Combined Log Format line and hands it to Twisted's legacy log,
      which drops it (the access log is ours, `core.observability`);
    - `tcp.Server.getHost` asks the kernel for the connection's local address (getsockname) on
      each request daphne builds a scope for; an accepted socket's address never changes, so it
      is asked once per connection."""
    from twisted.internet import tcp
    from twisted.web import http as twisted_http

    if getattr(tcp.Server, "_orchestrator_host", False):
        return

    def no_access_log(self: Any, request: Any) -> None:
        return None

    twisted_http.HTTPFactory.log = no_access_log  # type: ignore[method-assign]
    asked = tcp.Server.getHost

    def host_once(self: Any) -> Any:
        host = self.__dict__.get("_orchestrator_local")
        if host is None:
            host = self.__dict__["_orchestrator_local"] = asked(self)
        return host

    tcp.Server.getHost = host_once  # type: ignore[method-assign]
    tcp.Server._orchestrator_host = True  # type: ignore[attr-defined]


def _server_from_string(reactor: Any, description: str) -> Any:
    if description.startswith("orchestrator:"):
        return _PreboundEndpoint(reactor, _ENDPOINTS[description.split(":", 1)[1]])
    from twisted.internet.endpoints import serverFromString

    return serverFromString(reactor, description)


def run_daphne(
    application: Any,
    listeners: list[Listener],
    on_ready: Callable[[], None] | None = None,
    periodic: list[tuple[float, Callable[[], None]]] | None = None,
    limits: ClientLimits | None = None,
) -> None:
    """Serve `application` on the listeners until SIGTERM/SIGINT, then drain and return.

    A listener with its own `application` serves that instead of `application`. `periodic`
    (seconds, callable) run on the reactor thread: never touch the ORM from them.
    """
    import daphne.server as daphne_server  # installs the asyncio reactor first
    from twisted.internet import reactor as _reactor

    # The installed reactor (asyncio): its module-level name is typed as the bare module.
    reactor: Any = _reactor

    # daphne builds endpoints with serverFromString(); ours are pre-bound sockets.
    daphne_server.serverFromString = _server_from_string
    _no_form_parsing_in_twisted()
    from core import http1

    _MAIN_APPLICATION[0] = application

    class OrchestratorServer(daphne_server.Server):
        application: Any  # set by daphne.Server.__init__

        def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
            for hook in SCOPE_HOOKS:
                hook(protocol, scope)
            listener = listener_of(protocol)
            if listener is None or listener.application is None:
                return super().create_application(protocol, scope)
            # One reactor thread: swapping the application for this synchronous call is safe.
            default, self.application = self.application, listener.application
            try:
                return super().create_application(protocol, scope)
            finally:
                self.application = default

        def kill_all_applications(self) -> Any:
            from twisted.internet import defer

            pending = [
                d["application_instance"]
                for d in self.connections.values()
                if d.get("application_instance") is not None
                and not d["application_instance"].done()
            ]
            for future in pending:
                future.cancel()
            pending += http1.cancel_all()
            if pending:
                logger.info("cancelled %d unfinished requests at shutdown", len(pending))
            import asyncio

            waiter = defer.Deferred.fromFuture(asyncio.gather(*pending, return_exceptions=True))
            waiter.addErrback(lambda _: None)
            return waiter

    global _LIMITS
    _LIMITS = limits or ClientLimits()
    endpoints = []
    for listener in listeners:
        _ENDPOINTS[listener.name] = listener
        endpoints.append(f"orchestrator:{listener.name}")

    server = OrchestratorServer(
        application=application,
        endpoints=endpoints,
        signal_handlers=False,
        verbosity=0,
        http_timeout=None,
        application_close_timeout=SHUTDOWN_GRACE_SECONDS,
        ready_callable=on_ready,
        server_name="autonomy-orchestrator",
    )

    def in_flight() -> int:
        # A request counts from its first line (a body still uploading is in flight) until its
        # response is finished or the client went away (plain HTTP: from its headers).
        daphne = sum(1 for d in server.connections.values() if "disconnected" not in d)
        return daphne + len(http1.IN_FLIGHT)

    stopping = {"started": 0.0}

    def drain_then_stop() -> None:
        if in_flight() == 0 or time.monotonic() - stopping["started"] > SHUTDOWN_GRACE_SECONDS:
            if reactor.running:
                reactor.stop()
            return
        reactor.callLater(0.05, drain_then_stop)

    def begin_shutdown(signum: int) -> None:
        if stopping["started"]:
            return
        stopping["started"] = time.monotonic()
        logger.info(
            "received %s: no new connections, finishing %d in-flight requests",
            signal.Signals(signum).name,
            in_flight(),
        )
        for listener in listeners:
            if listener.port is not None:
                listener.port.stopListening()
        drain_then_stop()

    def handle_signal(signum: int, _frame: Any) -> None:
        reactor.callFromThread(begin_shutdown, signum)

    from twisted.internet.task import LoopingCall

    for interval, task in periodic or []:
        LoopingCall(_logged(task)).start(interval, now=False)

    signal.signal(signal.SIGTERM, handle_signal)
    signal.signal(signal.SIGINT, handle_signal)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    server.run()
    logger.info("stopped")


# How long the thread holding the GIL keeps it once another thread asks for it (Python's default:
# 5 ms). The writer threads hold SQLite's one write turn across their statements, and sqlite3
# lets go of the GIL for every statement step, so while the event loop is busy each statement of
# a turn waited up to 5 ms to get it back, and the turn stayed held meanwhile. Measured with
# `bench/write_turn.py --busy-threads 1` (docs/performance.md, "The write turn under a busy
# loop"): per stored ack 2,044 us of turn at 5 ms, 323 us at 0.5 ms, 132 us at 0.1 ms; per event
# 106 -> 31 -> 19 us. A thread alone never switches, so an idle writer costs the loop nothing.
GIL_SWITCH_INTERVAL_SECONDS = 0.0001

# Callables (protocol, scope) -> None run before each request's application starts; the TLS
# layer registers one that puts the verified client identity into scope["extensions"]["tls"].
SCOPE_HOOKS: list[Callable[[Any, dict[str, Any]], None]] = []


def _logged(task: Callable[[], None]) -> Callable[[], None]:
    """A periodic task whose failure is logged and does not stop the loop."""

    def run() -> None:
        try:
            task()
        except Exception:
            logger.exception("periodic task %s failed", getattr(task, "__name__", task))

    return run
