"""The CRL shared through the database (docs/ha.md): two real `serve` replicas over mTLS on one
PostgreSQL database, both with the same `--tls-crl-sync-url`. Only the leader pulls; the
follower enforces the CRL the leader adopted, read from the database, without pulling itself."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crl.store import crl_der, parse_crl
from tests.liveserver import ServeProcess
from tests.pg import temp_database
from tests.pki import SERVER_NAME, get, refused

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def database() -> Iterator[str]:
    with temp_database("test_ha_crl") as url:
        yield url


def _der(path: Path) -> bytes:
    return crl_der(parse_crl(path.read_bytes()))


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _mtls(pki, crl: Path, *extra: str) -> list[str]:
    return [
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-ca-file", str(pki.ca), "--tls-crl-file", str(crl), *extra,
    ]  # fmt: skip


def _leads(srv: ServeProcess, ctx) -> bool:
    try:
        status, body = get(srv.url("/v1/health/leader"), ctx, timeout=3)
    except OSError:
        return False
    return status == 200 and bool(json.loads(body)["session_lock_held"])


def test_the_follower_enforces_the_crl_the_leader_synced(tmp_path, pki, database):
    ctx = pki.context("node-b")
    crl_pub, crl_1, crl_2 = (tmp_path / f"crl-{n}.pem" for n in ("pub", "r1", "r2"))
    for path in (crl_pub, crl_1, crl_2):
        shutil.copy(pki.crl_empty, path)  # CRL number 1
    publisher = ServeProcess(tmp_path / "pub" / "data", *_mtls(pki, crl_pub), scheme="https",
                             ssl_context=ctx)  # fmt: skip
    sync = ["--tls-crl-sync-url", f"https://127.0.0.1:{publisher.port}/v1/crl",
            "--tls-crl-sync-server-name", SERVER_NAME, "--tls-crl-sync-interval", "1s",
            "--postgres-url", database, "--db-pool-size", "4"]  # fmt: skip
    first = ServeProcess(tmp_path / "r1" / "data", *_mtls(pki, crl_1, *sync, "--node-name", "r1"),
                         scheme="https", ssl_context=ctx)  # fmt: skip
    with publisher, first:
        _wait_for(lambda: _leads(first, ctx), 15, "r1 to lead")
        data = tmp_path / "r2" / "data"
        data.mkdir(parents=True, mode=0o700)
        for key in ("rollout-signing.key", "django-secret.key"):
            shutil.copy2(first.data_dir / key, data / key)
        second = ServeProcess(data, *_mtls(pki, crl_2, *sync, "--node-name", "r2"),
                              scheme="https", ssl_context=ctx)  # fmt: skip
        with second:
            assert get(second.url("/v1/health"), pki.context("node-a"))[0] == 200
            assert not _leads(second, ctx)

            # Revoke node-a at the source: the leader pulls it, the follower follows.
            shutil.copy(pki.crl_revoking_a, crl_pub)
            wanted = _der(pki.crl_revoking_a)
            _wait_for(lambda: _der(crl_1) == wanted, 20, "the leader to adopt the new CRL")
            _wait_for(lambda: _der(crl_2) == wanted, 20, "the follower to adopt the shared CRL")
            assert refused(second.url("/v1/health"), pki.context("node-a"))
            assert get(second.url("/v1/health"), pki.context("node-b"))[0] == 200
            assert get(second.url("/v1/crl"), ctx)[1] == crl_2.read_bytes()
            assert "CRL shared by the leader: adopted CRL number 2" in second.logs()
            assert "CRL sync: adopted" not in second.logs()  # the follower never pulled
            assert "CRL sync: adopted CRL number 2" in first.logs()

            # The leader stops: the follower leads and keeps the CRL; never goes backwards.
            assert first.proc is not None
            first.proc.send_signal(signal.SIGTERM)
            _wait_for(lambda: _leads(second, ctx), 20, "r2 to lead")
            assert _der(crl_2) == wanted
