"""The CRL shared through the database, in-process (crl.shared, docs/ha.md): only the current
lease stores a CRL, a replica adopts a newer stored CRL into its file, and a CRL never goes
backwards (an older one is neither stored nor adopted). Runs on the test database (SQLite, and
PostgreSQL in the PostgreSQL run). The two-replica end-to-end test is tests/test_ha_crl.py."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest
from django.db import connection

from core import leader
from crl import shared
from crl.store import CrlStore, crl_der, parse_crl

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)


def set_leader(epoch: int, token: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ha_leader")
        cursor.execute(
            "INSERT INTO ha_leader (id, epoch, token, holder_id, acquired_at, renewed_at) "
            "VALUES (1, %s, %s, 'r1', %s, %s)",
            [epoch, token, T0, T0],
        )


def store_of(pki, tmp_path, name: str, source) -> CrlStore:
    path = tmp_path / f"{name}.pem"
    shutil.copy(source, path)
    return CrlStore(str(path), [pki.ca_cert])


def stored_der() -> bytes | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT der FROM ha_crl WHERE id = 1")
        row = cursor.fetchone()
    return bytes(row[0]) if row else None


def test_only_the_current_lease_stores_and_followers_adopt_the_newer_crl(pki, tmp_path):
    set_leader(5, "current")
    ours = store_of(pki, tmp_path, "leader", pki.crl_revoking_a)  # CRL number 2
    with pytest.raises(leader.Fenced):
        shared.publish(ours, (5, "stale"))
    assert stored_der() is None
    assert shared.publish(ours, (5, "current"))
    assert stored_der() == ours.snapshot.der
    assert not shared.publish(ours, (5, "current"))  # already stored: nothing to do

    follower = store_of(pki, tmp_path, "follower", pki.crl_empty)  # CRL number 1
    assert shared.adopt_stored(follower)
    assert follower.snapshot.der == ours.snapshot.der
    assert crl_der(parse_crl(follower.path.read_bytes())) == ours.snapshot.der
    assert pki.serial("node-a") in follower.snapshot.revoked_serials


def test_a_crl_never_goes_backwards(pki, tmp_path):
    set_leader(1, "t")
    newest = tmp_path / "crl-9.pem"
    pki.crl(newest, number=9)
    assert shared.publish(store_of(pki, tmp_path, "a", newest), (1, "t"))
    # An older CRL on the leader is not stored over the newer one...
    assert not shared.publish(store_of(pki, tmp_path, "b", pki.crl_revoking_a), (1, "t"))
    assert stored_der() == crl_der(parse_crl(newest.read_bytes()))
    # ...and a replica ahead of the stored CRL keeps its own.
    set_leader(2, "u")
    ahead = tmp_path / "crl-12.pem"
    pki.crl(ahead, number=12)
    mine = store_of(pki, tmp_path, "c", ahead)
    assert not shared.adopt_stored(mine)
    assert mine.snapshot.der == crl_der(parse_crl(ahead.read_bytes()))
