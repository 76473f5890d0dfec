"""HTTP for the agent: one keep-alive connection (plain, TLS or mTLS), `Retry-After` and an
exponential backoff with jitter. Standard library only."""

from __future__ import annotations

import email.utils
import http.client
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from autonomy_agent.errors import AgentError, Unavailable

USER_AGENT = "autonomy-agent/1"


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date; None when absent or
    unreadable (a negative wait is 0)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


class Backoff:
    """Exponential backoff with jitter and a cap: the n-th consecutive failure waits a random
    time in [d/2, d] with d = min(cap, base * 2**(n-1)), and never less than the server's
    `Retry-After`. `reset()` after a success."""

    def __init__(
        self, base: float = 1.0, cap: float = 300.0, rng: Callable[[], float] = random.random
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.failures = 0
        self._rng = rng

    def next(self, retry_after: float | None = None) -> float:
        self.failures += 1
        delay = min(self.cap, self.base * 2 ** min(self.failures - 1, 62))
        delay = delay / 2 + self._rng() * delay / 2
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def reset(self) -> None:
        self.failures = 0


def client_ssl_context(
    *, ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """A TLS client context: the server is checked against CA (else the system roots); CERT and
    KEY are the node's client certificate for mTLS."""
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


class Transport:
    """Requests to one server over one kept-alive connection, re-opened when it breaks."""

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(server)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AgentError(f"the server URL {server!r} is not http(s)://host[:port]")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        if self.scheme == "https" and ssl_context is None:
            ssl_context = client_ssl_context()
        self.ssl_context = ssl_context
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "https":
                self._conn = http.client.HTTPSConnection(
                    self.host, self.port, timeout=self.timeout, context=self.ssl_context
                )
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """METHOD PATH: the answer whatever its status; Unavailable when there is none."""
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        # A kept-alive connection the server closed meanwhile fails on first use: one fresh retry.
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._connection()
            try:
                conn.request(method, self.prefix + path, body=body, headers=all_headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue
                raise Unavailable(f"{method} {path}: cannot reach the server ({exc!r})") from exc
            if resp.will_close:
                self.close()
            return Response(resp.status, dict(resp.getheaders()), data)
        raise AssertionError("unreachable")  # pragma: no cover


def sleep_for(seconds: float) -> None:
    time.sleep(max(0.0, seconds))
