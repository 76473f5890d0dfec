"""The Ed25519 key that signs rollout plan specs, kept in the data dir.

The private key is created once (PKCS#8 PEM, mode 0600) as `rollout-signing.key` in
`settings.DATA_DIR`; concurrent first starts are safe (the file is written aside and hard-linked
into place, which fails when another process got there first). Nodes pin the public key that
`autonomy-orchestrator signing-key` and `GET /v1/signing-key` print.

signature = Ed25519(private key, digest string as UTF-8), base64; digest = "sha256:<hex of the
spec bytes>"; key_id = first 16 hex characters of sha256(raw 32-byte public key).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_FILENAME = "rollout-signing.key"
ALGORITHM = "Ed25519"


class SigningKeyError(Exception):
    """The key file cannot be created or read; the message is one readable line."""


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    public_pem: str
    key_id: str

    def sign(self, digest: str) -> str:
        return base64.b64encode(self.private.sign(digest.encode("utf-8"))).decode("ascii")


_cache: dict[Path, SigningKey] = {}
_lock = threading.Lock()


def digest_of(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _from_private(private: Ed25519PrivateKey) -> SigningKey:
    public = private.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    return SigningKey(private, pem, hashlib.sha256(raw).hexdigest()[:16])


def _read(path: Path) -> SigningKey:
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"the signing key {path} is not a PEM Ed25519 private key") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"the signing key {path} is not an Ed25519 key")
    return _from_private(private)


def _create(path: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{KEY_FILENAME}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        # Atomic, and fails when another process created the key first: theirs wins.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_or_create(data_dir: Path) -> SigningKey:
    """The data dir's signing key, created on first use."""
    path = Path(data_dir) / KEY_FILENAME
    with _lock:
        cached = _cache.get(path)
        if cached is not None:
            return cached
        try:
            Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():
                _create(path)
            key = _read(path)
        except OSError as exc:
            raise SigningKeyError(
                f"cannot create or read the signing key {path}: {exc.strerror or exc}"
            ) from exc
        _cache[path] = key
        return key


def load_existing(data_dir: Path) -> SigningKey:
    """The data dir's signing key; SigningKeyError when there is none (nothing is created).

    For `signing-key`: a mistyped --data-dir must not mint a new private key whose public key a
    node would then pin.
    """
    path = Path(data_dir) / KEY_FILENAME
    with _lock:
        cached = _cache.get(path)
    if cached is not None:
        return cached
    if not path.is_file():
        raise SigningKeyError(
            f"no signing key at {path}: check --data-dir (`serve` creates the key when it first "
            "starts; `signing-key --create` creates one now)"
        )
    try:
        return _read(path)
    except OSError as exc:
        raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror or exc}") from exc


def current_key() -> SigningKey:
    from django.conf import settings

    return load_or_create(Path(settings.DATA_DIR))
