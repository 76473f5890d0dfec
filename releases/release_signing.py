"""Offline release signatures (docs/trust.md "Releases signed offline"; the wire contract §2).

Importable without Django (only `cryptography`): `autonomy-orchestrator release sign` runs it on
a machine with no server and no database, and a node may reuse it.

signed bytes = UTF-8 JSON `{"type": "autonomy.release/v1", "release_id", "channel",
"artifact_ref", "lock_fingerprint", "metadata"}` with sorted keys and no spaces (`channel`
defaults to "stable", `metadata` to {}, the refs to null, as `POST /v1/releases` does);
`release_signature` = `{"key_id", "algorithm": "Ed25519", "signed": base64(signed bytes),
"signature": base64(Ed25519(signed bytes))}`. A verifier checks the signature over the decoded
`signed` bytes, parses them and compares each field with the release (JSON equality): nobody
re-serialises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

RELEASE_TYPE = "autonomy.release/v1"
ALGORITHM = "Ed25519"
SIGNED_FIELDS = ("release_id", "channel", "artifact_ref", "lock_fingerprint", "metadata")
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


class ReleaseSignatureError(ValueError):
    """Why a release signature is refused (or a key unusable): one readable sentence."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_fields(release: dict[str, Any]) -> dict[str, Any]:
    """The release's signed fields, with the defaults `POST /v1/releases` applies."""
    metadata = release.get("metadata")
    return {
        "type": RELEASE_TYPE,
        "release_id": release.get("release_id"),
        "channel": release.get("channel") or "stable",
        "artifact_ref": release.get("artifact_ref"),
        "lock_fingerprint": release.get("lock_fingerprint"),
        "metadata": {} if metadata is None else metadata,
    }


def signed_bytes(release: dict[str, Any]) -> bytes:
    return json.dumps(
        signed_fields(release), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def load_private_key(pem: bytes, name: str = "the key") -> Ed25519PrivateKey:
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ReleaseSignatureError(
            f"{name} is not an unencrypted PEM Ed25519 private key"
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise ReleaseSignatureError(f"{name} is not an Ed25519 key")
    return private


def load_public_keys(pem: bytes, name: str = "the key file") -> dict[str, Ed25519PublicKey]:
    """key_id -> key for every PEM public key (SubjectPublicKeyInfo) in `pem` (one or several
    concatenated blocks)."""
    keys: dict[str, Ed25519PublicKey] = {}
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(pem)]
    if not blocks:
        raise ReleaseSignatureError(f"{name} holds no PEM public key")
    for block in blocks:
        try:
            public = serialization.load_pem_public_key(block)
        except (ValueError, TypeError) as exc:
            raise ReleaseSignatureError(
                f"{name} holds a PEM block that is not a public key"
            ) from exc
        if not isinstance(public, Ed25519PublicKey):
            raise ReleaseSignatureError(f"{name} holds a public key that is not Ed25519")
        keys[key_id(public)] = public
    return keys


def sign(release: dict[str, Any], private: Ed25519PrivateKey) -> dict[str, str]:
    """The `release_signature` object for `release`."""
    data = signed_bytes(release)
    return {
        "key_id": key_id(private.public_key()),
        "algorithm": ALGORITHM,
        "signed": base64.b64encode(data).decode("ascii"),
        "signature": base64.b64encode(private.sign(data)).decode("ascii"),
    }


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise ReleaseSignatureError(f"release_signature.{field} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ReleaseSignatureError(f"release_signature.{field} is not valid base64") from None


def check(
    release: dict[str, Any],
    signature: Any,
    trusted: dict[str, Ed25519PublicKey] | None,
) -> None:
    """Raise ReleaseSignatureError unless `signature` is well formed, its signed fields equal the
    release's and (when `trusted` is given) it verifies with one of those keys."""
    if not isinstance(signature, dict):
        raise ReleaseSignatureError("release_signature must be an object")
    if signature.get("algorithm") != ALGORITHM:
        raise ReleaseSignatureError(f"release_signature.algorithm must be {ALGORITHM!r}")
    signer = signature.get("key_id")
    if not isinstance(signer, str) or not re.fullmatch(r"[0-9a-f]{16}", signer):
        raise ReleaseSignatureError("release_signature.key_id must be 16 lowercase hex digits")
    data = _b64(signature.get("signed"), "signed")
    raw_signature = _b64(signature.get("signature"), "signature")
    if trusted is not None:
        public = trusted.get(signer)
        if public is None:
            raise ReleaseSignatureError(
                f"release_signature is by key {signer}, which is not a trusted release key"
            )
        try:
            public.verify(raw_signature, data)
        except InvalidSignature:
            raise ReleaseSignatureError(
                f"release_signature does not verify with release key {signer}"
            ) from None
    try:
        signed = json.loads(data)
    except ValueError:
        raise ReleaseSignatureError("release_signature.signed is not UTF-8 JSON") from None
    if not isinstance(signed, dict) or signed.get("type") != RELEASE_TYPE:
        raise ReleaseSignatureError(f"release_signature.signed is not a {RELEASE_TYPE} statement")
    wanted = signed_fields(release)
    differing = [name for name in SIGNED_FIELDS if signed.get(name) != wanted[name]]
    if differing:
        raise ReleaseSignatureError(
            "release_signature was made for a different release: "
            + ", ".join(differing)
            + " differ"
        )
