"""The signed desired state: detached Ed25519 signatures on every 200 of
`GET /v1/releases/latest` (docs/trust.md, the wire contract).

A wrapper around the computed answer: `signed_headers(channel, node_id, status, body, plan)`
returns the three response headers for a 200 answer (none for any other status), the JSON body
stays as it is:

- `X-Autonomy-Desired-State`: base64 of the statement bytes (sorted-key compact JSON binding
  node, channel, release, sequence, artifact, lock fingerprint, the deciding plan and its spec
  digest, the offline release signature, issued_at/expires_at and the key id);
- `X-Autonomy-Desired-State-Signature`: base64 of the Ed25519 signature over those bytes;
- `X-Autonomy-Key-Id`: the signing key's id.

Signing costs ~50 us, the poll path a few hundred: signatures are cached per (node_id, channel)
and reused while the answer (body, plan, key) is the same and the signature is younger than
`RESIGN_FRACTION` of the validity (`settings.DESIRED_STATE_TTL_SECONDS`, `serve
--desired-state-ttl`). So every answer a node gets is still valid for at least
(1 - RESIGN_FRACTION) x TTL.
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings

from core.edge import Headers
from core.errors import ApiError

STATEMENT_TYPE = "autonomy.desired-state/v1"
HEADER_STATE = "X-Autonomy-Desired-State"
HEADER_SIGNATURE = "X-Autonomy-Desired-State-Signature"
HEADER_KEY_ID = "X-Autonomy-Key-Id"
RESIGN_FRACTION = 0.25
MAX_CACHED = 100_000


@dataclass(frozen=True)
class _Signed:
    body: bytes
    plan: tuple[int, str] | None
    key_id: str
    ttl: float
    signed_at: float  # time.monotonic()
    headers: Headers


_cache: dict[tuple[str | None, str], _Signed] = {}
_lock = threading.Lock()


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def statement_bytes(
    *,
    channel: str,
    node_id: str | None,
    release: dict,
    plan: tuple[int, str] | None,
    key_id: str,
    issued_at: datetime,
    ttl: float,
) -> bytes:
    """The canonical statement (sorted keys, no spaces) for the release JSON `release`."""
    offline = release.get("release_signature")
    statement = {
        "type": STATEMENT_TYPE,
        "node_id": node_id,
        "channel": channel,
        "release_id": release.get("release_id"),
        "sequence": release.get("sequence"),
        "artifact_ref": release.get("artifact_ref"),
        "lock_fingerprint": release.get("lock_fingerprint"),
        "plan_id": None if plan is None else plan[0],
        "spec_digest": None if plan is None else plan[1],
        "release_signature": (
            {"key_id": offline["key_id"], "signature": offline["signature"]}
            if isinstance(offline, dict)
            else None
        ),
        "issued_at": _rfc3339(issued_at),
        "expires_at": _rfc3339(issued_at + timedelta(seconds=ttl)),
        "key_id": key_id,
    }
    return orjson.dumps(statement, option=orjson.OPT_SORT_KEYS)


def signed_headers(
    *,
    channel: str,
    node_id: str | None,
    status: int,
    body: bytes,
    plan: tuple[int, str] | None,
) -> Headers:
    """The desired-state headers of a `GET /v1/releases/latest` answer ([] unless 200)."""
    if status != 200:
        return []
    now = time.monotonic()
    key, ttl = _active(now)
    cache_key = (node_id, channel)
    entry = _cache.get(cache_key)
    if (
        entry is not None
        and entry.key_id == key.key_id
        and entry.ttl == ttl
        and entry.plan == plan
        and now - entry.signed_at < ttl * RESIGN_FRACTION
        and entry.body == body
    ):
        return list(entry.headers)  # a copy: the cached list must never be extended
    issued = datetime.now(UTC).replace(microsecond=0)
    raw = statement_bytes(
        channel=channel,
        node_id=node_id,
        release=orjson.loads(body),
        plan=plan,
        key_id=key.key_id,
        issued_at=issued,
        ttl=ttl,
    )
    headers: Headers = [
        (HEADER_STATE.lower().encode(), base64.b64encode(raw)),
        (HEADER_SIGNATURE.lower().encode(), base64.b64encode(key.sign_bytes(raw))),
        (HEADER_KEY_ID.lower().encode(), key.key_id.encode()),
    ]
    with _lock:
        if len(_cache) >= MAX_CACHED:
            _cache.clear()
        _cache[cache_key] = _Signed(body, plan, key.key_id, ttl, now, headers)
    return list(headers)


# (active key, validity, monotonic time it was read, keyring generation): asked for again at most
# once a second (the keyring itself notices a changed file within a second too) or at once after
# a rotation in this process.
_active_state: tuple[Any, float, float, int] | None = None
RING_RECHECK_SECONDS = 1.0


def _active(now: float) -> tuple[Any, float]:
    global _active_state
    from rollouts import selectors  # an app's selectors (import rule); not at import time

    state = _active_state
    generation = selectors.signing_generation()
    if state is None or now - state[2] >= RING_RECHECK_SECONDS or state[3] != generation:
        try:
            key = selectors.signing_ring().active
        except Exception as exc:  # rollouts.signing.SigningKeyError: no unsigned answers
            if state is None:
                raise ApiError(503, f"cannot sign the answer: {exc}") from exc
            key = state[0]  # keep signing with the key we had
        state = (key, float(settings.DESIRED_STATE_TTL_SECONDS), now, generation)
        _active_state = state
    return state[0], state[1]


def forget() -> None:
    """Drop every cached signature and the remembered key (tests; a key rotation needs no call:
    the key id is compared)."""
    global _active_state
    with _lock:
        _cache.clear()
        _active_state = None
