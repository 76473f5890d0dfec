"""CRL sync between replicas: real `serve` processes over mTLS on loopback."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from crl.store import crl_der, parse_crl
from tests.liveserver import ServeProcess, cli, free_port, run_serve_expect_exit
from tests.pki import SERVER_NAME, get, refused

pytestmark = pytest.mark.e2e


def _der(path) -> bytes:
    return crl_der(parse_crl(path.read_bytes()))


def _mtls(pki, crl, *extra: str) -> list[str]:
    return [
        "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
        "--tls-ca-file", str(pki.ca), "--tls-crl-file", str(crl), *extra,
    ]  # fmt: skip


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _audit(data_dir) -> dict[str, dict]:
    """The `cert.*` records of the replica's audit log (the CLI's export), by event name."""
    result = cli("audit", "export", "--since", "1h", "--data-dir", str(data_dir))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {r["event_name"]: r for r in lines if r["event_name"].startswith("cert.")}


def test_replica_pulls_a_newer_crl_only_with_enough_agreeing_sources(tmp_path, pki):
    ctx = pki.context("node-b")
    crl_a, crl_b, crl_c, crl_d = (tmp_path / f"crl-{n}.pem" for n in "abcd")
    for path in (crl_a, crl_b, crl_c):
        shutil.copy(pki.crl_empty, path)  # CRL number 1, made by openssl
    pki.crl(crl_d, number=9)  # newer than anything the publisher has
    publisher = ServeProcess(tmp_path / "a", *_mtls(pki, crl_a), scheme="https", ssl_context=ctx)
    source = f"https://127.0.0.1:{publisher.port}/v1/crl"
    dead = f"http://127.0.0.1:{free_port()}/v1/crl"
    sync = ["--tls-crl-sync-url", source, "--tls-crl-sync-server-name", SERVER_NAME,
            "--tls-crl-sync-interval", "1s"]  # fmt: skip
    replica = ServeProcess(tmp_path / "b", *_mtls(pki, crl_b, *sync), scheme="https",
                           ssl_context=ctx)  # fmt: skip
    strict = ServeProcess(
        tmp_path / "c",
        *_mtls(pki, crl_c, *sync, "--tls-crl-sync-url", dead, "--tls-crl-sync-min-sources", "2"),
        scheme="https", ssl_context=ctx,
    )  # fmt: skip
    ahead = ServeProcess(tmp_path / "d", *_mtls(pki, crl_d, *sync), scheme="https",
                         ssl_context=ctx)  # fmt: skip
    with publisher, replica, strict, ahead:
        assert get(replica.url("/v1/health"), pki.context("node-a"))[0] == 200

        # Revoke node-a on the publisher only.
        shutil.copy(pki.crl_revoking_a, crl_a)
        wanted = _der(pki.crl_revoking_a)
        _wait_for(lambda: _der(crl_b) == wanted, 20, "the replica to adopt the new CRL")
        assert refused(replica.url("/v1/health"), pki.context("node-a"))
        assert get(replica.url("/v1/health"), pki.context("node-b"))[0] == 200
        assert get(replica.url("/v1/crl"), ctx)[1] == crl_b.read_bytes()
        assert "CRL sync: adopted CRL number 2" in replica.logs()
        # The audit log of the replica: the installed CRL (system principal crl-sync) and the
        # handshake refused for node-a's revoked certificate.
        _wait_for(
            lambda: {"cert.crl.synced", "cert.revocation.rejected"} <= set(_audit(tmp_path / "b")),
            20,
            "the cert.* audit records",
        )
        records = _audit(tmp_path / "b")
        synced = records["cert.crl.synced"]
        assert synced["principal"] == "crl-sync" and synced["principal_kind"] == "system"
        assert synced["detail"]["crl_number"] == 2 and synced["detail"]["sources"] == [source]
        rejected = records["cert.revocation.rejected"]
        assert rejected["outcome"] == "denied" and rejected["source_ip"] == "127.0.0.1"
        assert "node-a" in rejected["principal"] and rejected["principal_kind"] == "cert"

        # min-sources 2 with one reachable publisher: never accepted, failures name the source.
        _wait_for(lambda: dead in strict.logs(), 10, "the dead source to be logged")
        _wait_for(lambda: strict.logs().count("best agreement: 1 of 2") >= 2, 10,
                  "a round after the publisher's update")  # fmt: skip
        assert _der(crl_c) == _der(pki.crl_empty)
        assert get(strict.url("/v1/health"), pki.context("node-a"))[0] == 200

        # A replica whose CRL is newer (number 9) does not go back to the publisher's (2).
        _wait_for(lambda: "is older than the current one" in ahead.logs(), 10, "older refusal")
        assert _der(crl_d) != wanted
    for srv in (publisher, replica, strict, ahead):
        assert srv.proc.returncode == 0, srv.logs()


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("env", "args", "needle"),
    [
        ({"AUTONOMY_TLS_CRL_SYNC_URL": "ftp://a/crl, https://b/v1/crl"}, [],
         "'ftp://a/crl' is not an http:// or https:// URL"),
        ({}, ["--tls-crl-sync-url", "https://a/v1/crl", "--tls-crl-sync-min-sources", "2"],
         "more than the 1 --tls-crl-sync-url"),
    ],
)  # fmt: skip
def test_bad_sync_settings_refuse_to_start(tmp_path, pki, env, args, needle):
    shutil.copy(pki.crl_empty, tmp_path / "crl.pem")
    result = run_serve_expect_exit(
        tmp_path / "data", *_mtls(pki, tmp_path / "crl.pem", *args), env=env
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
