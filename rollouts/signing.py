"""The Ed25519 keyring that signs rollout plan specs and desired-state answers (docs/trust.md).

The keyring lives in one file: `settings.SIGNING_KEY_FILE` (`serve --signing-key-file`, what
replicas share) or, by default, `rollout-signing.key` in `settings.DATA_DIR` (the state dir).
Two formats, both mode 0600:

- a single PKCS#8 PEM private key (what earlier versions wrote, and what a first start creates):
  a ring of one active key, `since` = the file's modification time;
- after `signing-key rotate`, a JSON document
  `{"type": "autonomy.signing-keyring/v1", "keys": [{"key_id", "status", "since",
  "private_key"}, ...]}` with exactly one `active` key; `retired` keys are kept so that
  signatures they made stay verifiable (`GET /v1/signing-keys` lists them).

The first start creates the key safely under concurrency (written aside, hard-linked into place:
another process that got there first wins). A running server re-reads the file when it changes
(checked at most once a second), so a rotation takes effect without a restart.

plan signature = Ed25519(private key, digest string as UTF-8), base64; digest = "sha256:<hex of
the spec bytes>"; key_id = first 16 hex characters of sha256(raw 32-byte public key).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

KEY_FILENAME = "rollout-signing.key"
ALGORITHM = "Ed25519"
RING_TYPE = "autonomy.signing-keyring/v1"
ACTIVE, RETIRED = "active", "retired"
RELOAD_CHECK_SECONDS = 1.0


class SigningKeyError(Exception):
    """The key file cannot be created or read; the message is one readable line."""


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey
    public_pem: str
    key_id: str
    status: str = ACTIVE
    since: datetime | None = None

    def sign(self, digest: str) -> str:
        return base64.b64encode(self.private.sign(digest.encode("utf-8"))).decode("ascii")

    def sign_bytes(self, data: bytes) -> bytes:
        return self.private.sign(data)


@dataclass(frozen=True)
class KeyRing:
    path: Path
    keys: tuple[SigningKey, ...]  # the active key first, then retired keys, newest first

    @property
    def active(self) -> SigningKey:
        return self.keys[0]

    def get(self, key_id: str) -> SigningKey | None:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        return None


def digest_of(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def key_id_of_public(public: object) -> str:
    raw = public.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:16]


def _from_private(
    private: Ed25519PrivateKey, status: str = ACTIVE, since: datetime | None = None
) -> SigningKey:
    public = private.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")
    return SigningKey(private, pem, key_id_of_public(public), status, since)


def _private_pem(private: Ed25519PrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_private(pem: bytes, path: Path) -> Ed25519PrivateKey:
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"the signing key {path} is not a PEM Ed25519 private key") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(f"the signing key {path} is not an Ed25519 key")
    return private


def _parse_since(value: object, path: Path) -> datetime:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise SigningKeyError(f"the signing keyring {path} has a bad 'since': {value!r}") from None


def _read_ring(path: Path) -> KeyRing:
    data = path.read_bytes()
    if data.lstrip().startswith(b"{"):
        try:
            doc = json.loads(data)
            entries = list(doc["keys"])
            if doc.get("type") != RING_TYPE or not entries:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise SigningKeyError(f"the signing keyring {path} is not a valid keyring") from None
        keys = []
        for entry in entries:
            private = _load_private(str(entry["private_key"]).encode(), path)
            status = str(entry.get("status", RETIRED))
            keys.append(_from_private(private, status, _parse_since(entry.get("since"), path)))
        active = [k for k in keys if k.status == ACTIVE]
        if len(active) != 1:
            raise SigningKeyError(f"the signing keyring {path} must have exactly one active key")
        retired = sorted(
            (k for k in keys if k.status != ACTIVE),
            key=lambda k: k.since or datetime.min.replace(tzinfo=UTC),
            reverse=True,
        )
        return KeyRing(path, (active[0], *retired))
    since = datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(microsecond=0)
    return KeyRing(path, (_from_private(_load_private(data, path), ACTIVE, since),))


def _write_atomically(path: Path, payload: bytes, *, exclusive: bool) -> None:
    """Write `payload` to `path` (mode 0600) via a temporary file. exclusive: only when `path`
    does not exist yet (a concurrent creator wins); else replace it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            # Atomic, and fails when another process created the key first: theirs wins.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _create(path: Path) -> None:
    _write_atomically(path, _private_pem(Ed25519PrivateKey.generate()), exclusive=True)


# Bumped whenever this process rotates or forgets keys: callers that keep the active key a
# moment (releases.desired_state) compare it instead of asking for the ring on every request.
_generation = 0


def generation() -> int:
    return _generation


# path -> (ring, (mtime_ns, size, inode), monotonic time of the last stat)
_cache: dict[Path, tuple[KeyRing, tuple[int, int, int], float]] = {}
_lock = threading.Lock()


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def _cached_ring(path: Path) -> KeyRing | None:
    """The cached ring of `path`, re-read when the file changed (checked at most once a
    second); None when it was never read."""
    entry = _cache.get(path)
    if entry is None:
        return None
    ring, stamp, checked = entry
    now = time.monotonic()
    if now - checked < RELOAD_CHECK_SECONDS:
        return ring
    try:
        current = _stamp(path)
        if current != stamp:
            ring = _read_ring(path)
    except (OSError, SigningKeyError):
        current = stamp  # keep signing with what we have; the next check tries again
    _cache[path] = (ring, current, now)
    return ring


def _load(path: Path, *, create: bool) -> KeyRing:
    with _lock:
        cached = _cached_ring(path)
        if cached is not None:
            return cached
        try:
            if create and not path.exists():
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _create(path)
            if not path.is_file():
                raise SigningKeyError(
                    f"no signing key at {path}: check --data-dir / --signing-key-file (`serve` "
                    "creates the key when it first starts; `signing-key --create` creates one now)"
                )
            stamp = _stamp(path)
            ring = _read_ring(path)
        except OSError as exc:
            raise SigningKeyError(
                f"cannot create or read the signing key {path}: {exc.strerror or exc}"
            ) from exc
        _cache[path] = (ring, stamp, time.monotonic())
        return ring


def key_path(data_dir: Path, key_file: str | Path | None = None) -> Path:
    """Where the keyring lives: `key_file` when given, else `rollout-signing.key` in the data
    dir."""
    if key_file:
        return Path(key_file).expanduser()
    return Path(data_dir) / KEY_FILENAME


def load_or_create(data_dir: Path, key_file: str | Path | None = None) -> SigningKey:
    """The active key of the keyring, the keyring created on first use."""
    return _load(key_path(data_dir, key_file), create=True).active


def load_existing(data_dir: Path, key_file: str | Path | None = None) -> SigningKey:
    """The active key; SigningKeyError when there is none (nothing is created).

    For `signing-key`: a mistyped --data-dir must not mint a new private key whose public key a
    node would then pin.
    """
    return _load(key_path(data_dir, key_file), create=False).active


def ring_at(path: Path, *, create: bool = False) -> KeyRing:
    return _load(Path(path), create=create)


def rotate(path: Path, *, now: datetime | None = None) -> KeyRing:
    """Make a new active key; the previous active key becomes `retired` (since now). Writes the
    keyring as JSON (atomic replace, 0600) and returns it."""
    global _generation
    path = Path(path)
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    with _lock:
        _generation += 1
        _cache.pop(path, None)
        try:
            old = _read_ring(path)
        except OSError as exc:
            raise SigningKeyError(
                f"cannot read the signing key {path}: {exc.strerror or exc}"
            ) from exc
        new = _from_private(Ed25519PrivateKey.generate(), ACTIVE, moment)
        entries = [(new, new.since)]
        for key in old.keys:
            entries.append((key, moment if key.status == ACTIVE else key.since))
        doc = {
            "type": RING_TYPE,
            "keys": [
                {
                    "key_id": key.key_id,
                    "status": ACTIVE if key is new else RETIRED,
                    "since": _rfc3339(since),
                    "private_key": _private_pem(key.private).decode("ascii"),
                }
                for key, since in entries
            ],
        }
        try:
            _write_atomically(path, json.dumps(doc, indent=1).encode(), exclusive=False)
            ring = _read_ring(path)
            _cache[path] = (ring, _stamp(path), time.monotonic())
            _generation += 1
        except OSError as exc:
            raise SigningKeyError(
                f"cannot write the signing keyring {path}: {exc.strerror or exc}"
            ) from exc
        return ring


def _rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def configured_path() -> Path:
    from django.conf import settings

    return key_path(Path(settings.DATA_DIR), getattr(settings, "SIGNING_KEY_FILE", "") or None)


def current_ring() -> KeyRing:
    """The serving keyring (created on first use)."""
    return _load(configured_path(), create=True)


def current_key() -> SigningKey:
    return current_ring().active


def forget_cache() -> None:
    """Tests: read the key files again."""
    global _generation
    with _lock:
        _cache.clear()
        _generation += 1
