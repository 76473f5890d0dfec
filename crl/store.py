"""The CRL in force: parse, verify against the CA, reload on change, replace atomically.

* `CrlStore` holds the CRL being enforced. It re-checks `--tls-crl-file` (one `stat`) whenever it
  is asked for the CRL (every new TLS handshake, `GET /v1/crl`, the sync, a periodic check) and
  reloads it when it changed. A file that became missing, unparsable or badly signed never opens
  the door: the last good CRL stays in force and each reload attempt logs an error.
* `CrlStore` is the `core.tls.RevocationSource` that `serve` hands to the TLS context factory, and
  the store that `serve` hands to this app (`CrlConfig.use_store`) for `GET /v1/crl` and the sync.
* `replace_crl_file` writes a new CRL file atomically (temp file, fsync, rename, fsync dir).

Thread-safe; never touches the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from core.tls import TlsError, read_flag_file

logger = logging.getLogger("orchestrator.tls")

# Warn about a CRL's nextUpdate this long before it passes (or a quarter of the CRL's validity
# window when that is shorter), and repeat the warning at most this often.
CRL_EXPIRY_WARNING = timedelta(hours=24)
CRL_WARNING_REPEAT_SECONDS = 15 * 60


def parse_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in PEM or DER; ValueError when it is neither."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def crl_signed_by(crl: x509.CertificateRevocationList, cas: list[x509.Certificate]) -> bool:
    for ca in cas:
        if crl.issuer != ca.subject:
            continue
        try:
            if crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
                return True
        except (TypeError, ValueError, InvalidSignature, UnsupportedAlgorithm):
            continue
    return False


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def crl_is_older(
    candidate: x509.CertificateRevocationList, current: x509.CertificateRevocationList
) -> bool:
    """True when `candidate` is older than `current`: CRL number first, then thisUpdate."""
    new_number, old_number = crl_number(candidate), crl_number(current)
    if new_number is not None and old_number is not None and new_number != old_number:
        return new_number < old_number
    return candidate.last_update_utc < current.last_update_utc


@dataclass(frozen=True)
class CrlSnapshot:
    """One loaded, verified CRL: what is enforced and what `GET /v1/crl` serves."""

    crl: x509.CertificateRevocationList
    raw: bytes  # the file's bytes, as loaded
    revoked_serials: frozenset[int]

    @property
    def der(self) -> bytes:
        return crl_der(self.crl)


def _file_key(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)


class CrlStore:
    """The CRL in force, reloaded from `path` when the file changes (checked per handshake)."""

    def __init__(self, path: str, cas: list[x509.Certificate], flag: str = "--tls-crl-file"):
        self.path = Path(path)
        self.cas = cas
        self._lock = threading.Lock()
        self._listeners: list[Callable[[CrlSnapshot], None]] = []
        self._last_warning = 0.0
        data = read_flag_file(path, flag)
        try:
            snapshot = self._verify(data)
        except TlsError as exc:
            raise TlsError(f"{flag} {path}: {exc}") from None
        self._key = _file_key(self.path)
        self._snapshot = snapshot
        self.check_expiry(force=True)

    def _verify(self, data: bytes) -> CrlSnapshot:
        try:
            crl = parse_crl(data)
        except ValueError:
            raise TlsError("not a PEM CRL (cannot parse it)") from None
        if not crl_signed_by(crl, self.cas):
            raise TlsError(
                f"the CRL (issuer {crl.issuer.rfc4514_string()}) is not signed by --tls-ca-file"
            )
        serials = frozenset(entry.serial_number for entry in crl)
        return CrlSnapshot(crl=crl, raw=data, revoked_serials=serials)

    @property
    def snapshot(self) -> CrlSnapshot:
        return self._snapshot

    def on_change(self, callback: Callable[[CrlSnapshot], None]) -> None:
        """`callback(snapshot)` runs (under the store's lock) after each successful reload."""
        self._listeners.append(callback)

    def current_crl(self) -> x509.CertificateRevocationList:
        """The CRL in force, re-checked first (`core.tls.RevocationSource`, once per handshake)."""
        return self.refresh().crl

    def refresh(self) -> CrlSnapshot:
        """Reload the file when it changed since the last attempt; return the CRL in force."""
        key = _file_key(self.path)
        if key == self._key:
            return self._snapshot
        with self._lock:
            if key == self._key:
                return self._snapshot
            self._key = key
            if key is None:
                logger.error(
                    "CRL file %s is missing; still enforcing the last good CRL",
                    self.path,
                    extra={"crl_file": str(self.path)},
                )
                return self._snapshot
            try:
                data = self.path.read_bytes()
                if data == self._snapshot.raw:
                    return self._snapshot  # touched or rewritten with the same CRL
                snapshot = self._verify(data)
            except (TlsError, OSError) as exc:
                logger.error(
                    "cannot reload CRL file %s: %s; still enforcing the last good CRL",
                    self.path,
                    exc,
                    extra={"crl_file": str(self.path)},
                )
                return self._snapshot
            old = self._snapshot
            self._snapshot = snapshot
            for callback in self._listeners:
                callback(snapshot)
        logger.info(
            "reloaded CRL %s: %d revoked certificates (was %d), number %s, next update %s",
            self.path,
            len(snapshot.revoked_serials),
            len(old.revoked_serials),
            crl_number(snapshot.crl),
            _fmt(snapshot.crl.next_update_utc),
            extra={"crl_file": str(self.path), "revoked": len(snapshot.revoked_serials)},
        )
        self.check_expiry(force=True)
        return snapshot

    def check_expiry(self, *, force: bool = False) -> None:
        """Warn before the CRL's nextUpdate passes; an error once it has passed."""
        crl = self._snapshot.crl
        next_update = crl.next_update_utc
        if next_update is None:
            return
        now = datetime.now(UTC)
        window = min(CRL_EXPIRY_WARNING, (next_update - crl.last_update_utc) / 4)
        if next_update - now > window:
            return
        if not force and time.monotonic() - self._last_warning < CRL_WARNING_REPEAT_SECONDS:
            return
        self._last_warning = time.monotonic()
        extra = {"crl_file": str(self.path), "next_update": _fmt(next_update)}
        if next_update <= now:
            logger.error(
                "the CRL in %s passed its nextUpdate (%s): OpenSSL now refuses every client "
                "certificate; publish a fresh CRL",
                self.path,
                _fmt(next_update),
                extra=extra,
            )
        else:
            logger.warning(
                "the CRL in %s reaches its nextUpdate at %s (in %s): publish a fresh CRL before "
                "then, or every client certificate will be refused",
                self.path,
                _fmt(next_update),
                _fmt_delta(next_update - now),
                extra=extra,
            )


def _fmt(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "none"


def _fmt_delta(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def replace_crl_file(path: Path, data: bytes) -> None:
    """Atomically replace `path`: temp file in the same directory, fsync, rename, fsync dir."""
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        mode = 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
