"""HTTPS, mutual TLS and certificate revocation for `serve`.

* `TlsConfig.from_flags` checks the `--tls-*` flags together (one clear line when they do not fit).
* `CrlStore` holds the CRL being enforced. It re-checks `--tls-crl-file` (one `stat`) on every new
  handshake and reloads it when it changed. A file that became missing, unparsable or badly signed
  never opens the door: the last good CRL stays in force and each reload attempt logs an error.
* `ServerTls` is the Twisted context factory: `serverConnectionForTLS()` runs once per connection,
  so a reloaded CRL applies to the next handshake. OpenSSL does the revocation check itself
  (`X509_V_FLAG_CRL_CHECK` with the CRL in the context's store). Sessions and tickets are off, so
  every connection does a full handshake and is checked against the current CRL.
* `tls_scope_hook` puts the verified client identity into `scope["extensions"]["tls"]` (asgiref TLS
  extension) for Django and the access log.

Runs on the reactor thread: nothing here touches the ORM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from core.auth import cert_identity

logger = logging.getLogger("orchestrator.tls")

# Warn about a CRL's nextUpdate this long before it passes (or a quarter of the CRL's validity
# window when that is shorter), and repeat the warning at most this often.
CRL_EXPIRY_WARNING = timedelta(hours=24)
# TLS 1.2 suites: forward secrecy and AEAD only (Mozilla "intermediate"); TLS 1.3 suites are
# OpenSSL's defaults, all of which qualify.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL"
CRL_WARNING_REPEAT_SECONDS = 15 * 60


class TlsError(Exception):
    """A TLS flag or file that stops `serve`; the message is one line."""


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsError(f"{flag} {path}: is a directory, not a file") from None
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None


def load_certificates(path: str, flag: str) -> list[x509.Certificate]:
    data = _read(path, flag)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise TlsError(f"{flag} {path}: not a PEM certificate") from None
    return certs


def load_private_key(path: str, flag: str) -> Any:
    data = _read(path, flag)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(f"{flag} {path}: the key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"{flag} {path}: not a PEM private key") from None


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
        self._listeners: list[Any] = []
        self._last_warning = 0.0
        data = _read(path, flag)
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

    def on_change(self, callback: Any) -> None:
        """`callback(snapshot)` runs (under the store's lock) after each successful reload."""
        self._listeners.append(callback)

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


@dataclass(frozen=True)
class TlsConfig:
    cert_file: str
    key_file: str
    ca_file: str = ""
    crl_file: str = ""

    @classmethod
    def from_flags(
        cls, *, cert_file: str, key_file: str, ca_file: str, crl_file: str
    ) -> TlsConfig | None:
        if bool(cert_file) != bool(key_file):
            given, missing = (
                ("--tls-cert-file", "--tls-key-file")
                if cert_file
                else ("--tls-key-file", "--tls-cert-file")
            )
            raise TlsError(f"{given} needs {missing} too (HTTPS needs both the cert and its key)")
        if not cert_file:
            if ca_file:
                raise TlsError("--tls-ca-file needs --tls-cert-file and --tls-key-file (mTLS)")
            if crl_file:
                raise TlsError(
                    "--tls-crl-file needs --tls-ca-file, --tls-cert-file and --tls-key-file"
                )
            return None
        if crl_file and not ca_file:
            raise TlsError("--tls-crl-file needs --tls-ca-file (the CRL is verified against it)")
        return cls(cert_file=cert_file, key_file=key_file, ca_file=ca_file, crl_file=crl_file)


class ServerTls:
    """The server's TLS context factory: TLS 1.2+, optional client-cert verification and CRL."""

    def __init__(self, config: TlsConfig) -> None:
        from OpenSSL import crypto

        self.config = config
        chain = load_certificates(config.cert_file, "--tls-cert-file")
        key = load_private_key(config.key_file, "--tls-key-file")
        if chain[0].public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise TlsError(
                f"--tls-key-file {config.key_file} is not the key of --tls-cert-file "
                f"{config.cert_file}"
            )
        self.certificate = chain[0]
        self._cert = crypto.X509.from_cryptography(chain[0])
        self._extra = [crypto.X509.from_cryptography(c) for c in chain[1:]]
        self._key = crypto.PKey.from_cryptography_key(key)
        self.cas = load_certificates(config.ca_file, "--tls-ca-file") if config.ca_file else []
        self.crl_store = CrlStore(config.crl_file, self.cas) if config.crl_file else None
        self._options = self._build(self.crl_store.snapshot if self.crl_store else None)
        self._options_for: CrlSnapshot | None = self.crl_store.snapshot if self.crl_store else None
        self.server_cert_pem = chain[0].public_bytes(serialization.Encoding.PEM).decode()

    @property
    def mutual(self) -> bool:
        return bool(self.cas)

    def _build(self, snapshot: CrlSnapshot | None) -> Any:
        from OpenSSL import SSL, crypto
        from twisted.internet.ssl import (
            AcceptableCiphers,
            Certificate,
            CertificateOptions,
            TLSVersion,
            trustRootFromCertificates,
        )

        kwargs: dict[str, Any] = {}
        if self.cas:
            kwargs["trustRoot"] = trustRootFromCertificates(
                [Certificate(crypto.X509.from_cryptography(ca)) for ca in self.cas]
            )
        options = CertificateOptions(
            privateKey=self._key,
            certificate=self._cert,
            extraCertChain=self._extra,
            raiseMinimumTo=TLSVersion.TLSv1_2,
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS),
            acceptableProtocols=[b"http/1.1"],
            **kwargs,
        )
        try:
            context = options.getContext()
        except SSL.Error as exc:
            raise TlsError(
                f"cannot set up TLS with --tls-cert-file/--tls-key-file: {exc}"
            ) from None
        if self.cas:
            # Same verification; the callback only logs why a client certificate was refused.
            context.set_verify(context.get_verify_mode(), _log_refused_client)
        if snapshot is not None:
            store = context.get_cert_store()
            store.add_crl(snapshot.crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        return options

    def _current_options(self) -> Any:
        if self.crl_store is None:
            return self._options
        snapshot = self.crl_store.refresh()
        if snapshot is not self._options_for:
            self._options = self._build(snapshot)
            self._options_for = snapshot
        return self._options

    # IOpenSSLServerConnectionCreator: called for every new connection.
    def serverConnectionForTLS(self, protocol: Any) -> Any:
        return self._current_options().serverConnectionForTLS(protocol)

    def wrap(self, factory: Any) -> Any:
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from zope.interface import directlyProvides

        directlyProvides(self, IOpenSSLServerConnectionCreator)
        return TLSMemoryBIOFactory(self, False, factory)


# X509_V_ERR_* codes an operator meets with client certificates.
_VERIFY_ERRORS = {
    2: "issuer certificate not found",
    3: "no CRL for the issuer",
    7: "bad certificate signature",
    8: "bad CRL signature",
    9: "certificate not yet valid",
    10: "certificate expired",
    11: "CRL not yet valid",
    12: "CRL expired (past its nextUpdate)",
    18: "self-signed certificate",
    19: "self-signed certificate in chain",
    20: "not signed by --tls-ca-file",
    21: "not signed by --tls-ca-file",
    23: "certificate revoked",
    26: "certificate not for TLS clients (extendedKeyUsage)",
}


def _log_refused_client(connection: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
    """pyOpenSSL verify callback (reactor thread): keep OpenSSL's verdict, log a refusal."""
    if ok:
        return True
    try:
        protocol = connection.get_app_data()
        if getattr(protocol, "_orchestrator_refusal_logged", False):
            return False
        protocol._orchestrator_refusal_logged = True
        peer = protocol.transport.getPeer()
        client = f"{peer.host}:{peer.port}"
    except Exception:
        client = "unknown"
    subject = cert.to_cryptography().subject.rfc4514_string() if cert is not None else "?"
    serial = format(cert.get_serial_number(), "x") if cert is not None else "?"
    reason = _VERIFY_ERRORS.get(errno, f"verify error {errno}")
    logger.warning(
        "refused client certificate %s serial=%s from %s: %s",
        subject,
        serial,
        client,
        reason,
        extra={"client": client, "client_identity": f"{subject} serial={serial}", "reason": reason},
    )
    return False


def _peer_identity(transport: Any, server_cert_pem: str | None) -> dict[str, Any]:
    tls: dict[str, Any] = {
        "server_cert": server_cert_pem,
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }
    try:
        connection = transport.getHandle()
        tls["tls_version"] = int(connection.get_protocol_version())
        peer = connection.get_peer_certificate(as_cryptography=True)
        chain = connection.get_peer_cert_chain(as_cryptography=True) or []
    except Exception:
        return tls
    if peer is None:
        return tls
    certs = [peer, *[c for c in chain if c != peer]]
    tls["client_cert_chain"] = [c.public_bytes(serialization.Encoding.PEM).decode() for c in certs]
    tls["client_cert_name"] = peer.subject.rfc4514_string()
    # Beyond the asgiref spec: the serial, for logs and for revocation audits.
    tls["client_cert_serial"] = format(peer.serial_number, "x")
    # Also beyond it: subject CN, O values and SAN URIs, parsed once per connection for
    # core.auth.principal_from_tls (keys client_cert_cn, client_cert_organizations,
    # client_cert_uris).
    tls.update(cert_identity(peer))
    return tls


def make_scope_hook(server_tls: ServerTls) -> Any:
    """A server.SCOPE_HOOKS entry filling scope["extensions"]["tls"] on TLS connections."""
    pem = server_tls.server_cert_pem

    from twisted.protocols.tls import TLSMemoryBIOProtocol

    def hook(protocol: Any, scope: dict[str, Any]) -> None:
        transport = getattr(protocol, "transport", None)
        if not isinstance(transport, TLSMemoryBIOProtocol):
            return  # plain HTTP (e.g. the metrics listener): no TLS extension
        cached = getattr(transport, "_orchestrator_tls", None)
        if cached is None:
            cached = _peer_identity(transport, pem)
            with contextlib.suppress(AttributeError):
                transport._orchestrator_tls = cached
        scope.setdefault("extensions", {})["tls"] = dict(cached)

    return hook


# The CRL store of this process when --tls-crl-file is set (read by GET /v1/crl and the sync).
ACTIVE_CRL: CrlStore | None = None


def set_active_crl(store: CrlStore | None) -> None:
    global ACTIVE_CRL
    ACTIVE_CRL = store


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
