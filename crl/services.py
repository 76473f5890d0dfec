"""CRL sync: pull `GET /v1/crl` from other control planes and adopt a newer CRL they agree on.

A pulled CRL replaces `--tls-crl-file` only when
1. at least `min_sources` sources returned the same CRL (same DER bytes),
2. it is signed by `--tls-ca-file`, and
3. it is not older than the CRL in force (CRL number, then thisUpdate).
The file is replaced atomically (temp file, fsync, rename), and the next handshake enforces it.
Every failure is logged with its source and never stops the server. Runs in its own thread; it
touches the database only for audit records and, when a round fails after rounds that did not,
the `cert.crl.sync_failed` webhook event (`notifications.services.event_emit`).
"""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from access.models import AuditRecord
from access.services import audit_write
from core import dberrors, leader
from core.auth import system
from crl.store import (
    CrlStore,
    crl_der,
    crl_is_older,
    crl_number,
    crl_signed_by,
    parse_crl,
    replace_crl_file,
)

logger = logging.getLogger("orchestrator.crl_sync")

FETCH_TIMEOUT_SECONDS = 10.0
MAX_CRL_BYTES = 16 * 1024 * 1024


class SyncSourceError(Exception):
    """One source failed; the message says why (logged with the source)."""


@dataclass(frozen=True)
class CrlSyncConfig:
    urls: tuple[str, ...]
    min_sources: int = 1
    interval: float = 300.0
    server_name: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass
class SyncResult:
    """What one round did: `adopted` is True when the CRL file was replaced."""

    adopted: bool = False
    reason: str = ""
    failures: dict[str, str] = field(default_factory=dict)
    # No CRL could be adopted: too few sources agreed, or the file could not be written.
    failed: bool = False


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS with a TLS server name (SNI and hostname check) other than the URL's host."""

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        server_name: str,
        context: ssl.SSLContext,
        timeout: float,
    ) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._server_name = server_name
        self._tls_context = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._tls_context.wrap_socket(self.sock, server_hostname=self._server_name)


def _client_context(config: CrlSyncConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.cert_file and config.key_file:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


def fetch_crl(url: str, config: CrlSyncConfig, context: ssl.SSLContext | None) -> bytes:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SyncSourceError("not an http:// or https:// URL")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        assert context is not None
        connection = _HTTPSConnection(
            parts.hostname,
            parts.port,
            server_name=config.server_name or parts.hostname,
            context=context,
            timeout=FETCH_TIMEOUT_SECONDS,
        )
    else:
        connection = http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=FETCH_TIMEOUT_SECONDS
        )
    try:
        connection.request("GET", path, headers={"Accept": "application/pkix-crl"})
        response = connection.getresponse()
        body = response.read(MAX_CRL_BYTES + 1)
    except ssl.SSLError as exc:
        raise SyncSourceError(f"TLS failed: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise SyncSourceError(f"request failed: {exc}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise SyncSourceError(f"HTTP {response.status}")
    if len(body) > MAX_CRL_BYTES:
        raise SyncSourceError(f"response larger than {MAX_CRL_BYTES} bytes")
    return body


def crl_sync_once(*, config: CrlSyncConfig, store: CrlStore) -> SyncResult:
    """One round: pull every source, apply the acceptance rules, maybe replace the CRL file."""
    result = SyncResult()
    context = _client_context(config) if any(u.startswith("https:") for u in config.urls) else None
    agreeing: dict[bytes, list[str]] = defaultdict(list)
    parsed: dict[bytes, x509.CertificateRevocationList] = {}
    for url in config.urls:
        try:
            body = fetch_crl(url, config, context)
            try:
                crl = parse_crl(body)
            except ValueError:
                raise SyncSourceError("the response is not a CRL (PEM or DER)") from None
            if not crl_signed_by(crl, store.cas):
                raise SyncSourceError("the CRL is not signed by --tls-ca-file")
        except SyncSourceError as exc:
            result.failures[url] = str(exc)
            logger.warning("CRL sync: %s: %s", url, exc, extra={"source": url})
            continue
        der = crl_der(crl)
        agreeing[der].append(url)
        parsed[der] = crl
    candidates = [der for der, urls in agreeing.items() if len(urls) >= config.min_sources]
    if not candidates:
        best = max((len(u) for u in agreeing.values()), default=0)
        result.reason = (
            f"no CRL returned by at least {config.min_sources} sources "
            f"(best agreement: {best} of {len(config.urls)})"
        )
        result.failed = True
        logger.warning("CRL sync: %s; keeping the current CRL", result.reason)
        return result
    # Several groups may qualify when min_sources is small: take the newest.
    chosen = candidates[0]
    for der in candidates[1:]:
        if crl_is_older(parsed[chosen], parsed[der]):
            chosen = der
    candidate = parsed[chosen]
    current = store.refresh()
    if chosen == current.der:
        result.reason = "already current"
        logger.debug("CRL sync: the sources' CRL is the one in force")
        return result
    if crl_is_older(candidate, current.crl):
        result.reason = (
            f"the sources' CRL (number {crl_number(candidate)}, thisUpdate "
            f"{candidate.last_update_utc:%Y-%m-%dT%H:%M:%SZ}) is older than the current one "
            f"(number {crl_number(current.crl)}, thisUpdate "
            f"{current.crl.last_update_utc:%Y-%m-%dT%H:%M:%SZ})"
        )
        logger.warning(
            "CRL sync: %s; keeping the current CRL",
            result.reason,
            extra={"sources": agreeing[chosen]},
        )
        return result
    pem = candidate.public_bytes(serialization.Encoding.PEM)
    try:
        replace_crl_file(Path(store.path), pem)
    except OSError as exc:
        result.reason = f"cannot write {store.path}: {exc.strerror or exc}"
        result.failed = True
        logger.error("CRL sync: %s", result.reason)
        return result
    store.refresh()
    result.adopted = True
    result.reason = "adopted"
    _audit_synced(candidate, agreeing[chosen], str(store.path))
    logger.info(
        "CRL sync: adopted CRL number %s (%d revoked) from %s into %s",
        crl_number(candidate),
        sum(1 for _ in candidate),
        ", ".join(agreeing[chosen]),
        store.path,
        extra={"sources": agreeing[chosen], "crl_file": str(store.path)},
    )
    return result


def _audit_synced(crl: x509.CertificateRevocationList, sources: list[str], path: str) -> None:
    """`cert.crl.synced` (principal: the system's `crl-sync`) for a newly installed CRL. The file
    is already in force; a failure to record it is logged, never undoes it."""
    try:
        audit_write(
            event_name="cert.crl.synced",
            outcome=AuditRecord.Outcome.SUCCESS,
            principal=system("crl-sync"),
            target=path,
            detail={
                "crl_number": crl_number(crl),
                "revoked": sum(1 for _ in crl),
                "this_update": f"{crl.last_update_utc:%Y-%m-%dT%H:%M:%SZ}",
                "sources": list(sources),
            },
        )
    except Exception:
        logger.exception("CRL sync: could not write the cert.crl.synced audit record")


def notify_sync_failed(config: CrlSyncConfig, result: SyncResult, crl_file: str) -> None:
    from notifications.services import event_emit

    event_emit(
        name="cert.crl.sync_failed",
        data={
            "reason": result.reason,
            "sources": list(config.urls),
            "failures": dict(result.failures),
            "min_sources": config.min_sources,
            "crl_file": crl_file,
        },
    )


class CrlSyncThread(threading.Thread):
    """Runs `crl_sync_once` at start and then every `interval` seconds (0: only once), on the
    leader of background work only (`core.leader`; a follower waits until it leads)."""

    def __init__(self, *, config: CrlSyncConfig, store: CrlStore) -> None:
        super().__init__(name="crl-sync", daemon=True)
        self.config = config
        self.store = store
        self.stopped = threading.Event()
        self.failing = False  # the last round failed (a failure is announced once per episode)

    def run(self) -> None:
        while not self.stopped.is_set():
            if not leader.elector.is_leader():
                self.stopped.wait(1.0)
                continue
            try:
                result = crl_sync_once(config=self.config, store=self.store)
            except Exception as exc:
                dberrors.log_background_failure(logger, "CRL sync round failed")
                result = SyncResult(reason=f"the round failed: {exc!r}", failed=True)
            self.announce(result)
            if self.config.interval <= 0:
                return
            self.stopped.wait(self.config.interval)

    def announce(self, result: SyncResult) -> None:
        """`cert.crl.sync_failed` for the first failed round after a good one (or the start)."""
        if result.failed and not self.failing:
            try:
                notify_sync_failed(self.config, result, str(self.store.path))
            except Exception:
                logger.exception("CRL sync: could not queue the cert.crl.sync_failed event")
                return  # try again after the next failed round
            finally:
                from django.db import connection

                if not connection.in_atomic_block:
                    connection.close()  # this thread keeps no pooled connection between rounds
        self.failing = result.failed

    def stop(self) -> None:
        self.stopped.set()
