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

Signing costs ~60 us, the poll path a few hundred: signatures are cached per (node_id, channel)
and reused while the answer (body, plan, key) is the same and the signature is younger than
`RESIGN_FRACTION` of the validity (`settings.DESIRED_STATE_TTL_SECONDS`, `serve
--desired-state-ttl`). So every answer a node gets is still valid for at least
(1 - RESIGN_FRACTION) x TTL.

The cache holds one small tuple per node: the 64 signature bytes and the second the statement was
issued, with the answer's body, plan and key id (objects every node's entry shares). The
statement is built again for each answer from those (~5 us, the same bytes: it is canonical
JSON); keeping the statement and its headers instead cost ~1.2 KB per node, 62 MB per worker at
50,000 nodes (docs/performance.md, "Memory, the switch interval, and two designs that did
not help").
"""

from __future__ import annotations

import base64
import threading
import time
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


# channel -> node_id -> (body, plan, key id, validity, issued at (epoch seconds), signature)
_Signed = tuple[bytes, "tuple[str, str] | None", str, float, int, bytes]
_cache: dict[str, dict[str | None, _Signed]] = {}
_cached = 0  # entries over all channels
_lock = threading.Lock()
# body -> the release it is (parsed once per release answer, not per node)
_releases: dict[bytes, dict[str, Any]] = {}
_MAX_RELEASES = 256
_STATE_NAME = HEADER_STATE.lower().encode()
_SIGNATURE_NAME = HEADER_SIGNATURE.lower().encode()
_KEY_ID_NAME = HEADER_KEY_ID.lower().encode()


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def statement_bytes(
    *,
    channel: str,
    node_id: str | None,
    release: dict,
    plan: tuple[str, str] | None,
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
    plan: tuple[str, str] | None,
) -> Headers:
    """The desired-state headers of a `GET /v1/releases/latest` answer ([] unless 200)."""
    global _cached
    if status != 200:
        return []
    key, ttl = _active(time.monotonic())
    now = int(time.time())
    nodes = _cache.get(channel)
    entry = nodes.get(node_id) if nodes is not None else None
    if entry is not None and not (
        entry[2] == key.key_id
        and entry[3] == ttl
        and entry[1] == plan
        and 0 <= now - entry[4] < ttl * RESIGN_FRACTION
        and entry[0] == body
    ):
        entry = None  # another answer, key or validity, or signed too long ago: sign again
    issued = now if entry is None else entry[4]
    raw = _statement(channel, node_id, body, plan, key.key_id, issued, ttl)
    if entry is not None:
        signature = entry[5]
    else:
        signature = key.sign_bytes(raw)
        with _lock:
            if _cached >= MAX_CACHED:
                _cache.clear()
                _cached = 0
            nodes = _cache.setdefault(channel, {})
            if node_id not in nodes:
                _cached += 1
            nodes[node_id] = (body, plan, key.key_id, ttl, issued, signature)
    return [
        (_STATE_NAME, base64.b64encode(raw)),
        (_SIGNATURE_NAME, base64.b64encode(signature)),
        (_KEY_ID_NAME, key.key_id.encode()),
    ]


def _statement(
    channel: str,
    node_id: str | None,
    body: bytes,
    plan: tuple[str, str] | None,
    key_id: str,
    issued: int,
    ttl: float,
) -> bytes:
    release = _releases.get(body)
    if release is None:
        release = orjson.loads(body)
        if len(_releases) >= _MAX_RELEASES:
            _releases.clear()
        _releases[body] = release
    return statement_bytes(
        channel=channel,
        node_id=node_id,
        release=release,
        plan=plan,
        key_id=key_id,
        issued_at=datetime.fromtimestamp(issued, UTC),
        ttl=ttl,
    )


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
    global _active_state, _cached
    with _lock:
        _cache.clear()
        _releases.clear()
        _cached = 0
        _active_state = None
