"""The CRL in force, shared between the replicas of one database (API.md §7, docs/ha.md).

CRL sync pulls only on the leader (`crl.services`). So that every replica enforces what the
leader adopted, each replica with `--tls-crl-file` on PostgreSQL runs `CrlShareThread`, which
every SHARE_SECONDS compares its CRL with the one row of `ha_crl` (by SHA-256, a cheap read):
- the stored CRL is newer (CRL number, then thisUpdate) and signed by `--tls-ca-file`: the
  replica adopts it (its CRL file is replaced atomically; the next handshake enforces it);
- this replica leads and its CRL is newer than the stored one (or none is stored): it stores
  its CRL, in a fenced leader transaction (a stale leader's write is refused).
A CRL never goes backwards: an older stored CRL is never adopted, an older one never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.db import close_old_connections, connection

from core import leader
from crl.store import CrlStore, crl_der, crl_is_older, crl_number, crl_signed_by, replace_crl_file

logger = logging.getLogger("orchestrator.crl_sync")

SHARE_SECONDS = 3.0
TABLE = "ha_crl"


def _digest(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _stored_digest() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT sha256 FROM {TABLE} WHERE id = 1")
        row = cursor.fetchone()
    return row[0] if row else None


def _stored_crl() -> x509.CertificateRevocationList | None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT der FROM {TABLE} WHERE id = 1")
        row = cursor.fetchone()
    return x509.load_der_x509_crl(bytes(row[0])) if row else None


def adopt_stored(store: CrlStore) -> bool:
    """Adopt the stored CRL when it is newer than this replica's; True when the file changed."""
    stored = _stored_crl()
    current = store.refresh().crl
    if stored is None or crl_der(stored) == crl_der(current) or crl_is_older(stored, current):
        return False
    if not crl_signed_by(stored, store.cas):
        logger.error("the shared CRL is not signed by --tls-ca-file; keeping the current CRL")
        return False
    replace_crl_file(Path(store.path), stored.public_bytes(serialization.Encoding.PEM))
    store.refresh()
    logger.info(
        "CRL shared by the leader: adopted CRL number %s (%d revoked) into %s",
        crl_number(stored),
        sum(1 for _ in stored),
        store.path,
        extra={"crl_file": str(store.path)},
    )
    return True


def publish(store: CrlStore, lease: tuple[int, str]) -> bool:
    """Store this (leading) replica's CRL when it is newer than the stored one; True if stored.

    Raises `core.leader.Fenced` (nothing stored) when `lease` is no longer the leader's."""
    current = store.refresh().crl
    der = crl_der(current)
    with leader.leader_transaction(lease), connection.cursor() as cursor:
        lock = " FOR UPDATE" if connection.vendor == "postgresql" else ""
        cursor.execute(f"SELECT der FROM {TABLE} WHERE id = 1{lock}")
        row = cursor.fetchone()
        if row is not None:
            stored = x509.load_der_x509_crl(bytes(row[0]))
            if crl_der(stored) == der or crl_is_older(current, stored):
                return False
        number = crl_number(current)
        cursor.execute(
            f"INSERT INTO {TABLE} (id, der, sha256, number, stored_by, epoch, stored_at) "
            "VALUES (1, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET der = EXCLUDED.der, "
            "sha256 = EXCLUDED.sha256, number = EXCLUDED.number, stored_by = EXCLUDED.stored_by, "
            "epoch = EXCLUDED.epoch, stored_at = EXCLUDED.stored_at",
            [
                der,
                _digest(der),
                "" if number is None else str(number),
                leader.elector.node_id,
                lease[0],
                datetime.now(UTC),
            ],
        )
    logger.info("CRL number %s shared with the other replicas", number, extra={"epoch": lease[0]})
    return True


def share_once(store: CrlStore) -> None:
    """One round: adopt a newer stored CRL, or (on the leader) store a newer own one."""
    mine = _digest(store.refresh().der)
    stored = _stored_digest()
    if stored == mine:
        return
    if stored is not None and adopt_stored(store):
        return
    if leader.elector.is_leader():
        # NotLeader: another replica leads now (a refused write is counted and logged).
        with contextlib.suppress(leader.NotLeader):
            publish(store, leader.elector.lease())


class CrlShareThread(threading.Thread):
    """Runs `share_once` every SHARE_SECONDS on every replica (PostgreSQL)."""

    def __init__(self, store: CrlStore) -> None:
        super().__init__(name="crl-share", daemon=True)
        self.store = store
        self.stopped = threading.Event()
        self._last_error = ""

    def run(self) -> None:
        while not self.stopped.wait(SHARE_SECONDS):
            close_old_connections()
            try:
                share_once(self.store)
            except Exception as exc:  # the database is away: the next round retries
                why = leader.pglock_first_line(exc)
                if why != self._last_error:
                    logger.warning("CRL sharing: %s; retrying", why)
                self._last_error = why
            else:
                self._last_error = ""
            finally:
                close_old_connections()

    def stop(self) -> None:
        self.stopped.set()
