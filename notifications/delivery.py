"""Sending one webhook request, and when to try again (docs/operating.md "Webhooks").

`send()` POSTs the stored body with its signature and answers a `SendResult`; it never raises for
the endpoint's failures. `RetryPolicy.delay(n)` is the wait after the n-th failed attempt:
`min(cap, base * 2**(n-1))`, scaled by a random factor in [0.8, 1.0] so that receivers coming
back are not hit by every retry at once. Plain Python: no database here.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from importlib import metadata

from core.flags import parse_duration
from notifications.signing import (
    ATTEMPT_HEADER,
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    signature_header,
)

REQUEST_TIMEOUT_SECONDS = 10.0  # the whole request: connect, send, the answer
MAX_RESPONSE_BYTES = 64 * 1024  # read (and ignored) of an answer; the status is what counts

# Test-only: AUTONOMY_TEST_WEBHOOK_RETRY="<base>,<cap>,<attempts>" (durations like 200ms, 1s)
# shortens the backoff so tests stay fast. Never set it in production.
RETRY_ENV = "AUTONOMY_TEST_WEBHOOK_RETRY"
# Test-only: AUTONOMY_TEST_WEBHOOK_TIMEOUT=<duration> shortens REQUEST_TIMEOUT_SECONDS.
TIMEOUT_ENV = "AUTONOMY_TEST_WEBHOOK_TIMEOUT"


def _user_agent() -> str:
    try:
        version = metadata.version("autonomy-orchestrator")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"autonomy-orchestrator-webhooks/{version}"


USER_AGENT = _user_agent()


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 30.0  # seconds before the 2nd attempt
    cap: float = 3600.0  # the longest wait between two attempts
    attempts: int = 16  # attempts in all, the first included (about 9 h with the defaults)

    def delay(self, failed_attempts: int, rand: float | None = None) -> float:
        """Seconds to wait after the `failed_attempts`-th failure before trying again."""
        exponent = min(max(failed_attempts - 1, 0), 62)
        scale = 0.8 + 0.2 * (random.random() if rand is None else rand)
        return min(self.cap, self.base * 2.0**exponent) * scale


def policy_from_env() -> RetryPolicy:
    raw = os.environ.get(RETRY_ENV, "").strip()
    if not raw:
        return RetryPolicy()
    base, cap, attempts = (part.strip() for part in raw.split(","))
    return RetryPolicy(parse_duration(base), parse_duration(cap), int(attempts))


def timeout_from_env() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    return parse_duration(raw) if raw else REQUEST_TIMEOUT_SECONDS


@dataclass(frozen=True)
class SendResult:
    ok: bool
    status: int | None
    error: str
    duration_ms: int


def send(
    *,
    url: str,
    secret: str,
    body: str,
    event_id: str,
    event_name: str,
    attempt: int,
    timeout: float = REQUEST_TIMEOUT_SECONDS,
    timestamp: int | None = None,
) -> SendResult:
    """POST `body` to `url`, signed with `secret`, within `timeout` seconds in all (a receiver
    that trickles its answer is cut off too). 2xx is delivered; anything else (another status, a
    refused connection, a timeout, a TLS failure) is a failed attempt. Redirects are not
    followed."""
    payload = body.encode()
    parts = urllib.parse.urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID_HEADER: event_id,
        EVENT_HEADER: event_name,
        ATTEMPT_HEADER: str(attempt),
        SIGNATURE_HEADER: signature_header(secret, payload, timestamp),
    }
    if parts.username is not None:
        import base64

        userinfo = f"{urllib.parse.unquote(parts.username)}:"
        userinfo += urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
    host = parts.hostname or ""
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    started = time.monotonic()
    status: int | None = None
    expired = threading.Event()

    def cut_off() -> None:
        expired.set()
        sock = connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once

    deadline = threading.Timer(timeout, cut_off)
    deadline.daemon = True
    deadline.start()
    try:
        connection.request("POST", path, body=payload, headers=headers)
        response = connection.getresponse()
        status = response.status
        response.read(MAX_RESPONSE_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            return _failed(started, None, f"no answer within {timeout:g}s")
        if isinstance(exc, ssl.SSLError):
            return _failed(started, status, f"TLS failed: {exc.reason or exc}")
        return _failed(started, status, f"request failed: {exc or type(exc).__name__}")
    finally:
        deadline.cancel()
        connection.close()
    if expired.is_set():
        return _failed(started, None, f"no answer within {timeout:g}s")
    duration = int((time.monotonic() - started) * 1000)
    if 200 <= status < 300:
        return SendResult(True, status, "", duration)
    return SendResult(False, status, f"HTTP {status}", duration)


def _failed(started: float, status: int | None, error: str) -> SendResult:
    return SendResult(False, status, error[:1000], int((time.monotonic() - started) * 1000))
