"""The CRL store and the sync rules in-process (fast); the e2e tests cover them through `serve`."""

from __future__ import annotations

import logging
import shutil
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from core.flags import parse_duration
from core.tls import TlsError
from crl.services import CrlSyncConfig, crl_sync_once
from crl.store import CrlStore, crl_der, crl_is_older, parse_crl


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("500ms", 0.5),
     ("1.5s", 1.5), ("30d", 30 * 86400), ("1d12h", 129600)],
)  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 m", "m", "5w", "-5s", "5m garbage"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_store_reloads_changes_and_keeps_the_last_good_crl(tmp_path, pki, caplog):
    path = tmp_path / "crl.pem"
    shutil.copy(pki.crl_empty, path)
    store = CrlStore(str(path), [pki.ca_cert])
    assert store.snapshot.revoked_serials == frozenset()

    shutil.copy(pki.crl_revoking_a, path)
    assert store.refresh().revoked_serials == {pki.serial("node-a")}

    caplog.set_level(logging.ERROR, logger="orchestrator.tls")
    for bad in (b"garbage", pki.crl_other_ca.read_bytes()):
        path.write_bytes(bad)
        assert store.refresh().revoked_serials == {pki.serial("node-a")}
    path.unlink()
    assert store.refresh().revoked_serials == {pki.serial("node-a")}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all("last good CRL" in m for m in messages), messages


@pytest.mark.parametrize("case", ["missing", "garbage", "other-ca"])
def test_store_fails_closed_at_start(tmp_path, pki, case):
    path = tmp_path / "crl.pem"
    if case == "garbage":
        path.write_text("nope")
    elif case == "other-ca":
        shutil.copy(pki.crl_other_ca, path)
    with pytest.raises(TlsError, match="--tls-crl-file"):
        CrlStore(str(path), [pki.ca_cert])


def test_expiry_warning_then_error(tmp_path, pki, caplog):
    now = datetime.now(UTC)
    caplog.set_level(logging.WARNING, logger="orchestrator.tls")
    pki.crl(tmp_path / "soon.pem", last_update=now - timedelta(days=1),
            next_update=now + timedelta(hours=2))  # fmt: skip
    CrlStore(str(tmp_path / "soon.pem"), [pki.ca_cert])
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    caplog.clear()
    pki.crl(tmp_path / "late.pem", last_update=now - timedelta(days=2),
            next_update=now - timedelta(minutes=1))  # fmt: skip
    CrlStore(str(tmp_path / "late.pem"), [pki.ca_cert])
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    caplog.clear()
    pki.crl(tmp_path / "fresh.pem")  # 7 days left: silent
    CrlStore(str(tmp_path / "fresh.pem"), [pki.ca_cert])
    assert caplog.records == []


def test_older_means_lower_number_then_earlier_this_update(tmp_path, pki):
    now = datetime.now(UTC)

    def crl(number, minutes_ago):
        path = pki.crl(tmp_path / f"{number}-{minutes_ago}.pem", number=number,
                       last_update=now - timedelta(minutes=minutes_ago))  # fmt: skip
        return parse_crl(path.read_bytes())

    assert crl_is_older(crl(1, 0), crl(2, 60))  # the number wins over thisUpdate
    assert not crl_is_older(crl(3, 60), crl(2, 0))
    assert crl_is_older(crl(2, 60), crl(2, 0))  # same number: thisUpdate decides
    assert not crl_is_older(crl(2, 0), crl(2, 0))


class _Publisher:
    """A loopback HTTP server answering GET /v1/crl with fixed bytes."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.hits = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/crl"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sync(store, urls, min_sources):
    return crl_sync_once(config=CrlSyncConfig(urls=tuple(urls), min_sources=min_sources),
                         store=store)  # fmt: skip


def test_sync_counts_pem_and_der_of_one_crl_as_agreeing(tmp_path, pki):
    path = tmp_path / "crl.pem"
    shutil.copy(pki.crl_empty, path)
    store = CrlStore(str(path), [pki.ca_cert])
    new = parse_crl(pki.crl_revoking_a.read_bytes())
    pem = _Publisher(new.public_bytes(serialization.Encoding.PEM))
    der = _Publisher(new.public_bytes(serialization.Encoding.DER))
    stale = _Publisher(pki.crl_empty.read_bytes())
    broken = _Publisher(b"not found", status=404)
    try:
        result = _sync(store, [pem.url, stale.url, broken.url], min_sources=2)
        assert not result.adopted and path.read_bytes() == pki.crl_empty.read_bytes()
        assert result.failures == {broken.url: "HTTP 404"}

        result = _sync(store, [pem.url, der.url, broken.url], min_sources=2)
        assert result.adopted, result
        assert crl_der(x509.load_pem_x509_crl(path.read_bytes())) == crl_der(new)
        assert store.snapshot.revoked_serials == {pki.serial("node-a")}
        assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed, not left behind

        # An older CRL from every source is not taken back.
        result = _sync(store, [stale.url], min_sources=1)
        assert not result.adopted and "older" in result.reason
        assert store.snapshot.revoked_serials == {pki.serial("node-a")}
    finally:
        for publisher in (pem, der, stale, broken):
            publisher.close()


def test_sync_rejects_a_crl_from_another_ca(tmp_path, pki):
    path = tmp_path / "crl.pem"
    shutil.copy(pki.crl_empty, path)
    store = CrlStore(str(path), [pki.ca_cert])
    rogue = _Publisher(pki.crl_other_ca.read_bytes())
    try:
        result = _sync(store, [rogue.url], min_sources=1)
    finally:
        rogue.close()
    assert not result.adopted
    assert result.failures == {rogue.url: "the CRL is not signed by --tls-ca-file"}
    assert path.read_bytes() == pki.crl_empty.read_bytes()
