"""The signature of a webhook delivery (Stripe-style; docs/operating.md "Webhooks").

    X-Autonomy-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

The timestamp is signed with the body, so a receiver that refuses signatures older than a few
minutes cannot be fed a recorded delivery again (replay protection). Pure functions: no Django.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse

SIGNATURE_HEADER = "X-Autonomy-Signature"
EVENT_ID_HEADER = "X-Autonomy-Event-Id"
EVENT_HEADER = "X-Autonomy-Event"
ATTEMPT_HEADER = "X-Autonomy-Delivery-Attempt"
DEFAULT_TOLERANCE_SECONDS = 300


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of `<timestamp>.<body>` keyed with the endpoint's secret."""
    message = str(int(timestamp)).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={signature(secret, body, t)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """What a receiver does: True when `header` signs `body` with `secret` and is recent."""
    parts: dict[str, list[str]] = {}
    for item in (header or "").split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = signature(secret, body, t)
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


def redact_url(url: str) -> str:
    """The URL without a password in it (for logs and pages)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + host))
