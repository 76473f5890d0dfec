"""The typed Python API for node authors: poll (verified), ack, send events.

from autonomy_agent import Client

client = Client("https://orchestrator:8443", "edge-17", token="...",
                trust_keys=["/etc/autonomy/trust.pem"])
state = client.poll("stable")          # a verified DesiredState, or an exception saying why
client.ack(state.release_id, "active", "applied in 3 s")
client.send_events([client.event("heartbeat")])
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from autonomy_agent.errors import AgentError, NoRelease, TransportError, Unavailable
from autonomy_agent.transport import (
    Backoff,
    Response,
    Transport,
    client_ssl_context,
    parse_retry_after,
)
from autonomy_agent.verify import (
    DEFAULT_CLOCK_SKEW,
    DesiredState,
    load_public_key_files,
    verify_desired_state,
)

# Pinned keys: PEM file paths, or public keys by key id.
TrustKeys = Mapping[str, Ed25519PublicKey] | Iterable[str | os.PathLike[str]]
ACK_STATUSES = ("pending", "acknowledged", "active", "failed", "rejected")
MAX_MESSAGE = 4000


def _keys(keys: TrustKeys | None) -> dict[str, Ed25519PublicKey]:
    if keys is None:
        return {}
    if isinstance(keys, Mapping):
        return dict(keys)
    return load_public_key_files(keys)


def utc_now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Client:
    """One node's view of the control plane.

    Authenticate with a bearer `token`, or with a client certificate (`cert`, `key`) under mTLS;
    `ca` is the CA file that checks the server's certificate (https). `trust_keys` are the
    desired-state keys the node pins (GET /v1/signing-keys lists the server's); with
    `release_trust_keys` the node also requires every release to be signed offline by one of
    those. Every request is retried up to `retries` times on a connection failure or 503/429,
    waiting the server's `Retry-After` or an exponential backoff with jitter (at most
    `backoff_cap` seconds); every request here is idempotent, so a retry is safe.
    """

    def __init__(
        self,
        server: str,
        node_id: str,
        *,
        token: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        ca: str | None = None,
        trust_keys: TrustKeys | None = None,
        release_trust_keys: TrustKeys | None = None,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        timeout: float = 10.0,
        retries: int = 2,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not node_id:
            raise AgentError("a node id is required")
        if token and cert:
            raise AgentError("give a token or a client certificate, not both")
        if key and not cert:
            raise AgentError("a client key needs its certificate (cert)")
        context = None
        if server.startswith("https:") or cert:
            context = client_ssl_context(ca=ca, cert=cert, key=key)
        self.server = server
        self.node_id = node_id
        self.trust_keys = _keys(trust_keys)
        self.release_trust_keys = _keys(release_trust_keys)
        self.clock_skew = clock_skew
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._transport = Transport(server, token=token, ssl_context=context, timeout=timeout)

    # -- plumbing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the kept-alive connection (a later call opens a new one)."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, payload: Any = None) -> Response:
        body = json.dumps(payload).encode() if payload is not None else None
        backoff = Backoff(self.backoff_base, max(self.backoff_base, self.backoff_cap))
        attempt = 0
        while True:
            try:
                resp = self._transport.request(method, path, body)
                if resp.status in (429, 503):
                    raise Unavailable(
                        f"{method} {path}: the server answered {resp.status} ({_error_text(resp)})",
                        status=resp.status,
                        retry_after=parse_retry_after(resp.header("Retry-After")),
                    )
                return resp
            except Unavailable as exc:
                attempt += 1
                if attempt > self.retries:
                    raise
                self._sleep(backoff.next(exc.retry_after))

    def _json(self, method: str, path: str, payload: Any = None, ok: Sequence[int] = (200,)) -> Any:
        resp = self._request(method, path, payload)
        if resp.status not in ok:
            raise TransportError(
                f"{method} {path}: the server answered {resp.status} ({_error_text(resp)})",
                status=resp.status,
            )
        try:
            return json.loads(resp.body) if resp.body else None
        except ValueError as exc:
            raise TransportError(f"{method} {path}: the answer is not JSON") from exc

    # -- the API ----------------------------------------------------------------------------

    def verify(
        self,
        headers: Mapping[str, str],
        body: Mapping[str, Any],
        *,
        channel: str = "stable",
        min_sequence: int | None = None,
        now: datetime | None = None,
    ) -> DesiredState:
        """Verify a poll answer got some other way (its headers and decoded JSON body) with this
        client's pinned keys and node id; raises a VerificationError subclass when refused."""
        return verify_desired_state(
            headers,
            body,
            trust_keys=self.trust_keys,
            release_trust_keys=self.release_trust_keys,
            node_id=self.node_id,
            channel=channel,
            min_sequence=min_sequence,
            now=now,
            clock_skew=self.clock_skew,
        )

    def poll(self, channel: str = "stable", *, min_sequence: int | None = None) -> DesiredState:
        """The verified desired state of this node on CHANNEL.

        Raises NoRelease (404: nothing for this node yet), a VerificationError subclass (the
        answer must not be acted on: `min_sequence` is the highest sequence already accepted,
        for rollback protection), Unavailable or TransportError.
        """
        query = urlencode({"channel": channel, "node_id": self.node_id})
        path = f"/v1/releases/latest?{query}"
        resp = self._request("GET", path)
        if resp.status == 404:
            raise NoRelease(f"no release on channel {channel!r} for node {self.node_id!r} yet")
        if resp.status != 200:
            raise TransportError(
                f"GET {path}: the server answered {resp.status} ({_error_text(resp)})",
                status=resp.status,
            )
        try:
            body = json.loads(resp.body)
        except ValueError as exc:
            raise TransportError(f"GET {path}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise TransportError(f"GET {path}: the answer is not a JSON object")
        return self.verify(resp.headers, body, channel=channel, min_sequence=min_sequence)

    def ack(
        self,
        release_id: str,
        status: str,
        message: str | None = None,
        *,
        lock_fingerprint: str | None = None,
    ) -> dict[str, Any]:
        """Record this node's status for RELEASE_ID (`pending`, `acknowledged`, `active`,
        `failed`, `rejected`); an upsert, so sending it again is harmless. The stored ack."""
        if status not in ACK_STATUSES:
            raise AgentError(f"ack status must be one of {', '.join(ACK_STATUSES)}")
        payload: dict[str, Any] = {"release_id": release_id, "status": status}
        if message is not None:
            payload["message"] = message[-MAX_MESSAGE:]
        if lock_fingerprint is not None:
            payload["lock_fingerprint"] = lock_fingerprint
        path = f"/v1/nodes/{quote(self.node_id, safe='')}/ack"
        answer: dict[str, Any] = self._json("POST", path, payload, ok=(200, 201))
        return answer

    def send_events(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Send one batch of events (each with its own `event_id`: resending is deduplicated by
        the server). The server's `{"received", "inserted", "deduped"}`."""
        answer: dict[str, Any] = self._json("POST", "/v1/events", {"events": list(events)})
        return answer

    def signing_keys(self) -> list[dict[str, Any]]:
        """The server's desired-state keys (`GET /v1/signing-keys`). For display and for
        noticing a rotation: pin keys got over a trusted channel, not from this answer."""
        answer = self._json("GET", "/v1/signing-keys")
        return list(answer.get("keys", [])) if isinstance(answer, dict) else []

    def event(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """A new event of this node with a fresh unique `event_id` and the current time."""
        return {
            "event_id": str(uuid.uuid4()),
            "event_type": event_type,
            "node_id": self.node_id,
            "timestamp": utc_now_rfc3339(),
            **fields,
        }


def _error_text(resp: Response) -> str:
    try:
        answer = json.loads(resp.body)
    except ValueError:
        return resp.body[:200].decode(errors="replace") or "no body"
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return str(answer["error"])
    return "no error text"
