"""HTTPS and mutual TLS for `serve`: the context factory and the scope hook.

* `TlsConfig.from_flags` checks the `--tls-*` flags together (one clear line when they do not fit).
* `ServerTls` is the Twisted context factory: `serverConnectionForTLS()` runs once per connection.
  With a `RevocationSource` (the CRL store of `crl.store`, handed over by `serve`), each new
  handshake asks it for the CRL in force, so a reloaded CRL applies to the next handshake.
  OpenSSL does the revocation check itself (`X509_V_FLAG_CRL_CHECK` with the CRL in the context's
  store). Sessions and tickets are off, so every connection does a full handshake and is checked
  against the current CRL.
* `tls_scope_hook` puts the verified client identity into `scope["extensions"]["tls"]` (asgiref TLS
  extension) for Django and the access log.

Runs on the reactor thread: nothing here touches the ORM. The CRL itself (parse, verify, reload,
sync, `GET /v1/crl`) lives in the `crl` app; this module imports nothing of it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from core.auth import cert_identity

logger = logging.getLogger("orchestrator.tls")

# TLS 1.2 suites: forward secrecy and AEAD only (Mozilla "intermediate"); TLS 1.3 suites are
# OpenSSL's defaults, all of which qualify.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL"


class RevocationSource(Protocol):
    """What a handshake needs to check client certificates against a CRL (`crl.store.CrlStore`).

    `current_crl()` runs on the reactor thread for every new connection: it must be cheap when
    nothing changed and return the same object until the CRL in force changes.
    """

    def current_crl(self) -> x509.CertificateRevocationList: ...


class TlsError(Exception):
    """A TLS flag or file that stops `serve`; the message is one line."""


def read_flag_file(path: str, flag: str) -> bytes:
    """The bytes of the file a flag names; TlsError (one line naming the flag) when unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsError(f"{flag} {path}: is a directory, not a file") from None
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None


def load_certificates(path: str, flag: str) -> list[x509.Certificate]:
    data = read_flag_file(path, flag)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise TlsError(f"{flag} {path}: not a PEM certificate") from None
    return certs


def load_private_key(path: str, flag: str) -> Any:
    data = read_flag_file(path, flag)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(f"{flag} {path}: the key is encrypted; give an unencrypted key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"{flag} {path}: not a PEM private key") from None


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
        self.revocation: RevocationSource | None = None
        self._options = self._build(None)
        self._options_for: x509.CertificateRevocationList | None = None
        self.server_cert_pem = chain[0].public_bytes(serialization.Encoding.PEM).decode()

    @property
    def mutual(self) -> bool:
        return bool(self.cas)

    def enforce_revocation(self, source: RevocationSource) -> None:
        """Refuse the client certificates revoked by `source`'s CRL, from the next handshake on
        (the CRL is asked for again on every handshake). Needs `--tls-ca-file`."""
        if not self.cas:
            raise TlsError("--tls-crl-file needs --tls-ca-file (the CRL is verified against it)")
        crl = source.current_crl()
        self._options = self._build(crl)
        self._options_for = crl
        self.revocation = source

    def _build(self, crl: x509.CertificateRevocationList | None) -> Any:
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
        if crl is not None:
            store = context.get_cert_store()
            if store is None:  # pyOpenSSL gives None only for a context without a store
                raise TlsError("cannot enforce the CRL: the TLS context has no certificate store")
            store.add_crl(crl)
            store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
        return options

    def _current_options(self) -> Any:
        if self.revocation is None:
            return self._options
        crl = self.revocation.current_crl()
        if crl is not self._options_for:
            self._options = self._build(crl)
            self._options_for = crl
        return self._options

    # IOpenSSLServerConnectionCreator: called for every new connection.
    def serverConnectionForTLS(self, protocol: Any) -> Any:
        return self._current_options().serverConnectionForTLS(protocol)

    def wrap(self, factory: Any) -> Any:
        from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from zope.interface import directlyProvides

        directlyProvides(self, IOpenSSLServerConnectionCreator)
        return TLSMemoryBIOFactory(cast(Any, self), False, factory)  # provides it (above)


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


# Called (reactor thread) for a handshake refused because the client certificate is revoked,
# with (subject, serial hex, client IP); `serve` hands it to the rate-limited denial recorder
# (`cert.revocation.rejected`). Must not block.
REVOKED_CLIENT_HOOKS: list[Callable[[str, str, str | None], None]] = []
X509_V_ERR_CERT_REVOKED = 23


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
        peer_ip: str | None = peer.host
    except Exception:
        client = "unknown"
        peer_ip = None
    subject = cert.to_cryptography().subject.rfc4514_string() if cert is not None else "?"
    serial = format(cert.get_serial_number(), "x") if cert is not None else "?"
    reason = _VERIFY_ERRORS.get(errno, f"verify error {errno}")
    if errno == X509_V_ERR_CERT_REVOKED:
        for hook in REVOKED_CLIENT_HOOKS:
            try:
                hook(subject, serial, peer_ip)
            except Exception:
                logger.exception("could not record a revoked client certificate")
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
                # Our per-connection cache on Twisted's protocol object (not a declared attribute).
                transport._orchestrator_tls = cached  # type: ignore[attr-defined]
        scope.setdefault("extensions", {})["tls"] = dict(cached)

    return hook
