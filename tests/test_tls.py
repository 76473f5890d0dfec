"""HTTPS, mTLS and revocation against the real `serve`, with the per-session test PKI."""

from __future__ import annotations

import json
import shutil
import ssl
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from tests.liveserver import ServeProcess, run_serve_expect_exit
from tests.pki import get, refused

pytestmark = pytest.mark.e2e


def _wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_plain_tls_serves_https(tmp_path, pki):
    srv = ServeProcess(
        tmp_path / "data", *pki.serve_args(ca=False), scheme="https", ssl_context=pki.context()
    )
    with srv:
        status, body = get(srv.url("/v1/health"), pki.context())
        assert status == 200 and json.loads(body) == {"status": "ok"}
        # No client certificate is asked for without --tls-ca-file.
        raw = ssl.create_default_context(cafile=str(pki.ca))
        assert get(srv.url("/v1/health"), raw)[0] == 200
        # Modern defaults: TLS 1.2 works with a forward-secret AEAD suite, not with CBC.
        tls12 = pki.context()
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        tls12.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        assert get(srv.url("/v1/health"), tls12)[0] == 200
        cbc = pki.context()
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA")
        assert refused(srv.url("/v1/health"), cbc)
        # Plain HTTP on the HTTPS port gets no answer.
        with pytest.raises(OSError):
            get(f"http://127.0.0.1:{srv.port}/v1/health", timeout=3)
        # No CRL configured: /v1/crl is 404.
        status, body = get(srv.url("/v1/crl"), pki.context())
        assert status == 404 and "no CRL" in json.loads(body)["error"]
    assert f"listening on https://127.0.0.1:{srv.port}" in srv.logs()


def test_mtls_accepts_our_ca_and_refuses_others(tmp_path, pki):
    srv = ServeProcess(
        tmp_path / "data",
        *pki.serve_args(),
        "--log-format",
        "json",
        scheme="https",
        ssl_context=pki.context("node-b"),
    )
    with srv:
        url = srv.url("/v1/health")
        assert get(url, pki.context("node-a"))[0] == 200
        assert refused(url, pki.context())  # no client certificate
        assert refused(url, pki.context("rogue"))  # same CN, signed by another CA
        _wait_for(lambda: "not signed by --tls-ca-file" in srv.logs(), what="rogue refusal log")
        assert get(url, pki.context("node-a"))[0] == 200  # still serving
        # Through Django too (no fast path for this one): the scope carries the identity.
        assert get(srv.url("/v1/crl"), pki.context("node-a"))[0] == 404
        _wait_for(lambda: '"path":"/v1/crl"' in srv.logs(), what="Django access log")
        _wait_for(lambda: srv.logs().count('"path":"/v1/health"') >= 3, what="access log")
    lines = [json.loads(x) for x in srv.stderr_path.read_text().splitlines() if x.strip()]
    identities = {line.get("client_identity") for line in lines if line.get("path")}
    serial = format(pki.serial("node-a"), "x")
    assert any(i and "CN=node-a" in i and f"serial={serial}" in i for i in identities), identities
    django_line = next(line for line in lines if line.get("path") == "/v1/crl")
    assert django_line["client_identity"] == (
        f"CN=node-a,O=autonomy-orchestrator tests serial={serial}"
    )


def test_revoked_cert_refused_after_crl_update_without_restart(tmp_path, pki):
    crl = tmp_path / "crl.pem"
    shutil.copy(pki.crl_empty, crl)
    srv = ServeProcess(
        tmp_path / "data",
        *pki.serve_args(crl=crl),
        scheme="https",
        ssl_context=pki.context("node-b"),
    )
    with srv:
        url = srv.url("/v1/health")
        assert get(url, pki.context("node-a"))[0] == 200
        status, body = get(srv.url("/v1/crl"), pki.context("node-b"))
        assert status == 200 and body == crl.read_bytes()

        # Revoke node-a: the CRL made by `openssl ca`, written over the file. No restart.
        shutil.copy(pki.crl_revoking_a, crl)
        assert refused(url, pki.context("node-a"))
        assert get(url, pki.context("node-b"))[0] == 200
        serial = format(pki.serial("node-a"), "x")
        _wait_for(
            lambda: (
                f"CN=node-a,O=autonomy-orchestrator tests serial={serial}" in srv.logs()
                and "certificate revoked" in srv.logs()
            ),
            what="the refusal in the log",
        )
        with urllib.request.urlopen(
            srv.url("/v1/crl"), context=pki.context("node-b"), timeout=10
        ) as resp:
            assert resp.headers["Content-Type"] == "application/pkix-crl"
            assert resp.read() == pki.crl_revoking_a.read_bytes()  # bytes equal to the file

        # A CRL that turns to garbage does not open the door: the last good one stays.
        crl.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
        assert refused(url, pki.context("node-a"))
        assert get(url, pki.context("node-b"))[0] == 200
        _wait_for(lambda: "cannot reload CRL file" in srv.logs(), what="reload error")
        # One signed by another CA: refused the same way.
        shutil.copy(pki.crl_other_ca, crl)
        assert refused(url, pki.context("node-a"))
        _wait_for(lambda: "not signed by --tls-ca-file" in srv.logs(), what="signature error")
        # Missing: same.
        crl.unlink()
        assert refused(url, pki.context("node-a"))
        _wait_for(lambda: "is missing" in srv.logs(), what="missing error")
        assert get(srv.url("/v1/crl"), pki.context("node-b"))[1] == pki.crl_revoking_a.read_bytes()
    assert "still enforcing the last good CRL" in srv.logs()


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("crl-missing", ["--tls-crl-file", "no such file"]),
        ("crl-garbage", ["--tls-crl-file", "cannot parse"]),
        ("crl-other-ca", ["--tls-crl-file", "not signed by --tls-ca-file"]),
        ("cert-without-key", ["--tls-cert-file needs --tls-key-file"]),
        ("key-without-cert", ["--tls-key-file needs --tls-cert-file"]),
        ("crl-without-ca", ["--tls-crl-file needs --tls-ca-file"]),
        ("key-mismatch", ["--tls-key-file", "is not the key of --tls-cert-file"]),
        ("cert-missing", ["--tls-cert-file", "no such file"]),
    ],
)
def test_refuses_to_start_with_bad_tls_files(tmp_path, pki, case, needles):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a CRL\n")
    cert, key, ca = str(pki.server_cert), str(pki.server_key), str(pki.ca)
    args = {
        "crl-missing": pki.serve_args(crl=tmp_path / "nope.pem"),
        "crl-garbage": pki.serve_args(crl=garbage),
        "crl-other-ca": pki.serve_args(crl=pki.crl_other_ca),
        "cert-without-key": ["--tls-cert-file", cert],
        "key-without-cert": ["--tls-key-file", key],
        "crl-without-ca": [
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-crl-file",
            str(pki.crl_empty),
        ],
        "key-mismatch": [
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            str(pki.client("node-a")[1]),
            "--tls-ca-file",
            ca,
        ],
        "cert-missing": ["--tls-cert-file", str(tmp_path / "none.pem"), "--tls-key-file", key],
    }[case]
    result = run_serve_expect_exit(tmp_path / "data", *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_warns_before_the_crl_next_update(tmp_path, pki):
    now = datetime.now(UTC)
    crl = pki.crl(
        tmp_path / "soon.pem",
        last_update=now - timedelta(days=1),
        next_update=now + timedelta(hours=1),
    )
    srv = ServeProcess(
        tmp_path / "data",
        *pki.serve_args(crl=crl),
        scheme="https",
        ssl_context=pki.context("node-b"),
    )
    with srv:
        assert get(srv.url("/v1/health"), pki.context("node-a"))[0] == 200
    logs = srv.logs()
    assert "reaches its nextUpdate" in logs and " warn " in logs, logs
