"""Verify the signed desired state and the offline release signature (docs/trust.md).

The rule: verify the exact bytes that were signed, then parse them; never re-serialise JSON.
Everything here is pure (no I/O but reading key files): `verify_desired_state` takes the answer's
headers and body, the pinned keys and the node's expectations and returns a `DesiredState`, or
raises a `VerificationError` subclass naming why not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from autonomy_agent.errors import (
    BadReleaseSignature,
    BadSignature,
    Expired,
    Mismatch,
    Rollback,
    UnknownKey,
    UnsignedAnswer,
    UnsignedRelease,
)

STATEMENT_TYPE = "autonomy.desired-state/v1"
RELEASE_TYPE = "autonomy.release/v1"
HEADER_STATEMENT = "X-Autonomy-Desired-State"
HEADER_SIGNATURE = "X-Autonomy-Desired-State-Signature"
HEADER_KEY_ID = "X-Autonomy-Key-Id"
# Fields of the poll answer the statement must repeat exactly.
BOUND_FIELDS = ("release_id", "sequence", "artifact_ref", "lock_fingerprint")
# Fields of the release an offline release signature covers.
RELEASE_FIELDS = ("release_id", "channel", "artifact_ref", "lock_fingerprint", "metadata")
DEFAULT_CLOCK_SKEW = 60.0

_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----\s.*?-----END PUBLIC KEY-----", re.DOTALL)


def key_id_of(public: Ed25519PublicKey) -> str:
    """The key id the server names: first 16 hex chars of sha256(raw 32-byte public key)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_keys(data: bytes, *, source: str = "the key data") -> dict[str, Ed25519PublicKey]:
    """Every Ed25519 public key of PEM DATA (one or several concatenated `PUBLIC KEY` blocks),
    by key id. Raises ValueError (one line naming SOURCE) when there is none or one is not an
    Ed25519 public key."""
    keys: dict[str, Ed25519PublicKey] = {}
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise ValueError(f"{source} holds no PEM public key (-----BEGIN PUBLIC KEY-----)")
    for block in blocks:
        try:
            public = serialization.load_pem_public_key(block)
        except ValueError as exc:
            raise ValueError(f"{source} holds a PEM block that is not a public key") from exc
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError(f"{source} holds a public key that is not Ed25519")
        keys[key_id_of(public)] = public
    return keys


def load_public_key_files(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Ed25519PublicKey]:
    """The keys of every PEM file in PATHS, by key id (see `load_public_keys`)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the key file {path}: {exc.strerror}") from exc
        keys.update(load_public_keys(data, source=f"the key file {path}"))
    return keys


def _b64(value: str, what: str, error: type[Exception]) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise error(f"{what} is not valid base64") from exc


def _rfc3339(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise Mismatch(f"the signed statement has no {what}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise Mismatch(f"the signed statement's {what} is not an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        raise Mismatch(f"the signed statement's {what} has no UTC offset")
    return parsed


@dataclass(frozen=True)
class ReleaseSignature:
    """A verified offline release signature: which release key signed which release."""

    key_id: str
    signature: str


@dataclass(frozen=True)
class DesiredState:
    """What the node should run, verified. `statement` is the parsed signed statement and
    `statement_bytes` the exact bytes the signature covers (keep them as evidence)."""

    node_id: str | None
    channel: str
    release_id: str
    sequence: int
    artifact_ref: str | None
    lock_fingerprint: str | None
    plan_id: str | None
    spec_digest: str | None
    issued_at: datetime
    expires_at: datetime
    key_id: str
    release_signature: ReleaseSignature | None
    body: dict[str, Any] = field(repr=False)
    statement: dict[str, Any] = field(repr=False)
    statement_bytes: bytes = field(repr=False)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def verify_release_signature(
    release: Mapping[str, Any], release_keys: Mapping[str, Ed25519PublicKey]
) -> ReleaseSignature:
    """Check RELEASE's offline signature (`release_signature` field) against RELEASE_KEYS.

    Raises UnsignedRelease when the field is missing or null, BadReleaseSignature when the key is
    not pinned, the signature does not verify or the signed fields differ from the release's.
    """
    sig = release.get("release_signature")
    if not sig:
        raise UnsignedRelease(
            f"release {release.get('release_id')!r} carries no offline release signature and "
            "release trust keys are pinned"
        )
    if not isinstance(sig, Mapping):
        raise BadReleaseSignature("the release_signature field is not an object")
    key_id = sig.get("key_id")
    public = release_keys.get(key_id) if isinstance(key_id, str) else None
    if public is None:
        raise BadReleaseSignature(
            f"the release is signed by key {key_id!r}, which is not a pinned release trust key"
        )
    signed = _b64(str(sig.get("signed", "")), "release_signature.signed", BadReleaseSignature)
    signature = _b64(
        str(sig.get("signature", "")), "release_signature.signature", BadReleaseSignature
    )
    try:
        public.verify(signature, signed)
    except InvalidSignature as exc:
        raise BadReleaseSignature(
            f"the offline signature of release {release.get('release_id')!r} does not verify "
            f"with release key {key_id}"
        ) from exc
    try:
        fields = json.loads(signed)
    except ValueError as exc:
        raise BadReleaseSignature("the offline-signed release bytes are not JSON") from exc
    if not isinstance(fields, dict) or fields.get("type") != RELEASE_TYPE:
        raise BadReleaseSignature(f"the offline-signed bytes are not a {RELEASE_TYPE} object")
    for name in RELEASE_FIELDS:
        signed_value = fields.get(name)
        value = release.get(name)
        if name == "metadata":  # an absent metadata is the empty object on both sides
            signed_value, value = signed_value or {}, value or {}
        if signed_value != value:
            raise BadReleaseSignature(
                f"the offline signature covers another {name} than the release's "
                f"({signed_value!r} signed, {value!r} served)"
            )
    return ReleaseSignature(key_id=str(key_id), signature=str(sig.get("signature")))


def verify_desired_state(
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    *,
    trust_keys: Mapping[str, Ed25519PublicKey],
    node_id: str | None,
    channel: str,
    min_sequence: int | None = None,
    release_trust_keys: Mapping[str, Ed25519PublicKey] | None = None,
    now: datetime | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
) -> DesiredState:
    """Verify a 200 answer of `GET /v1/releases/latest` (its HEADERS and decoded JSON BODY).

    Accepts only when: the statement's signature verifies with a pinned key (chosen by key id);
    its type, node, channel and the body's release_id/sequence/artifact_ref/lock_fingerprint
    match; it has not expired (CLOCK_SKEW seconds allowed); its sequence is not below
    MIN_SEQUENCE; and, when RELEASE_TRUST_KEYS is non-empty, the release carries a valid offline
    signature by one of them that the statement names too. Raises a VerificationError otherwise.
    """
    statement_b64 = _header(headers, HEADER_STATEMENT)
    signature_b64 = _header(headers, HEADER_SIGNATURE)
    key_id = _header(headers, HEADER_KEY_ID)
    if not statement_b64 or not signature_b64 or not key_id:
        raise UnsignedAnswer(
            "the answer carries no signed desired state "
            f"({HEADER_STATEMENT}, {HEADER_SIGNATURE} and {HEADER_KEY_ID} headers)"
        )
    public = trust_keys.get(key_id)
    if public is None:
        pinned = ", ".join(sorted(trust_keys)) or "none"
        raise UnknownKey(
            f"the answer is signed by key {key_id}, which is not pinned (pinned: {pinned})"
        )
    statement_bytes = _b64(statement_b64, HEADER_STATEMENT, BadSignature)
    signature = _b64(signature_b64, HEADER_SIGNATURE, BadSignature)
    try:
        public.verify(signature, statement_bytes)
    except InvalidSignature as exc:
        raise BadSignature(
            f"the desired-state signature does not verify with key {key_id}"
        ) from exc
    try:
        statement = json.loads(statement_bytes)
    except ValueError as exc:
        raise Mismatch("the signed statement is not JSON") from exc
    if not isinstance(statement, dict) or statement.get("type") != STATEMENT_TYPE:
        raise Mismatch(f"the signed statement is not a {STATEMENT_TYPE} object")
    if statement.get("key_id") != key_id:
        raise Mismatch(
            f"the statement names key {statement.get('key_id')!r}, the header {key_id!r}"
        )
    if statement.get("node_id") != node_id:
        raise Mismatch(f"the statement is for node {statement.get('node_id')!r}, not {node_id!r}")
    if statement.get("channel") != channel:
        raise Mismatch(
            f"the statement is for channel {statement.get('channel')!r}, not {channel!r}"
        )
    for name in BOUND_FIELDS:
        if statement.get(name) != body.get(name):
            raise Mismatch(
                f"the answer's {name} {body.get(name)!r} is not the signed {statement.get(name)!r}"
            )
    sequence = statement.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool):
        raise Mismatch("the signed statement's sequence is not an integer")
    issued_at = _rfc3339(statement.get("issued_at"), "issued_at")
    expires_at = _rfc3339(statement.get("expires_at"), "expires_at")
    current = now or datetime.now(UTC)
    if (current - expires_at).total_seconds() >= clock_skew:
        raise Expired(
            f"the desired state expired at {statement.get('expires_at')} "
            f"(a replayed or frozen answer; {clock_skew:g} s of clock skew allowed)"
        )
    if min_sequence is not None and sequence < min_sequence:
        raise Rollback(
            f"the answer's sequence {sequence} (release {statement.get('release_id')!r}) is "
            f"below sequence {min_sequence} already accepted on channel {channel!r}"
        )
    release_signature: ReleaseSignature | None = None
    if release_trust_keys:
        try:
            release_signature = verify_release_signature(body, release_trust_keys)
        except (UnsignedRelease, BadReleaseSignature) as exc:
            exc.release_id = str(statement["release_id"])
            raise
        named = statement.get("release_signature") or {}
        if (
            not isinstance(named, Mapping)
            or named.get("key_id") != release_signature.key_id
            or named.get("signature") != release_signature.signature
        ):
            raise Mismatch("the statement names another release signature than the release's")
    plan_id = statement.get("plan_id")
    spec_digest = statement.get("spec_digest")
    return DesiredState(
        node_id=node_id,
        channel=channel,
        release_id=str(statement["release_id"]),
        sequence=sequence,
        artifact_ref=statement.get("artifact_ref"),
        lock_fingerprint=statement.get("lock_fingerprint"),
        plan_id=plan_id if isinstance(plan_id, str) else None,
        spec_digest=spec_digest if isinstance(spec_digest, str) else None,
        issued_at=issued_at,
        expires_at=expires_at,
        key_id=key_id,
        release_signature=release_signature,
        body=dict(body),
        statement=statement,
        statement_bytes=statement_bytes,
    )
