"""Web hardening of the admin over the real `serve` (issue 11, item 7): Secure cookies and HSTS
under TLS, no framing and a CSP on the admin pages, admin login throttling, and Django's
password validators for `createsuperuser --noinput`."""

from __future__ import annotations

import re
import sqlite3

import pytest
import requests

from tests.liveserver import ServeProcess, cli, share_keys

pytestmark = pytest.mark.e2e

TIMEOUT = 10
PASSWORD = "a-long-admin-passphrase-42"


def create_admin(data_dir, *args: str, password: str = PASSWORD):
    return cli(
        "createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.com",
        "--data-dir", str(data_dir), *args,
        env={"DJANGO_SUPERUSER_PASSWORD": password},
    )  # fmt: skip


def login_form(srv: ServeProcess, session: requests.Session, **kwargs) -> str:
    page = session.get(srv.url("/admin/login/"), timeout=TIMEOUT, **kwargs)
    assert page.status_code == 200, page.text[:300]
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert found, page.text[:300]
    return found.group(1)


def log_in(srv, session, username: str, password: str, **kwargs) -> requests.Response:
    token = login_form(srv, session, **kwargs)
    return session.post(
        srv.url("/admin/login/?next=/admin/"),
        data={"username": username, "password": password, "csrfmiddlewaretoken": token},
        headers={"Referer": srv.url("/admin/login/")},
        timeout=TIMEOUT,
        allow_redirects=False,
        **kwargs,
    )


def test_over_https_admin_cookies_are_secure_and_every_answer_has_hsts(tmp_path, pki):
    data = tmp_path / "data"
    tls = ["--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key)]
    with ServeProcess(data, *tls, scheme="https", ssl_context=pki.context()) as srv:
        assert create_admin(data).returncode == 0
        with requests.Session() as session:
            done = log_in(srv, session, "ops", PASSWORD, verify=str(pki.ca))
            assert done.status_code == 302, done.text[:300]
            cookies = {c.name: c for c in session.cookies}
            assert cookies["csrftoken"].secure
            assert cookies["sessionid"].secure
            assert "Secure" in done.headers["Set-Cookie"]
            assert done.headers["Strict-Transport-Security"].startswith("max-age=")
            for path in ("/v1/health", "/v1/events", "/v1/releases", "/admin/"):
                answer = session.get(srv.url(path), timeout=TIMEOUT, verify=str(pki.ca))
                assert answer.status_code == 200, path
                assert "max-age=31536000" in answer.headers["Strict-Transport-Security"], path


def test_over_plain_http_no_hsts_and_cookies_stay_usable(tmp_path):
    with ServeProcess(tmp_path / "data") as srv, requests.Session() as session:
        login_form(srv, session)
        assert not any(c.secure for c in session.cookies)
        answer = session.get(srv.url("/v1/health"), timeout=TIMEOUT)
        assert "Strict-Transport-Security" not in answer.headers


def test_admin_pages_cannot_be_framed_and_have_a_csp(tmp_path):
    with ServeProcess(tmp_path / "data") as srv:
        for path in ("/admin/login/", "/admin/"):
            answer = requests.get(srv.url(path), timeout=TIMEOUT)
            assert answer.headers["X-Frame-Options"] == "DENY", path
            csp = answer.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in csp
            assert "script-src 'self';" in csp and "style-src 'self';" in csp


def test_the_sixth_failed_login_within_15_minutes_is_429_and_audited(tmp_path):
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        assert create_admin(data).returncode == 0
        with requests.Session() as session:
            for _ in range(5):
                wrong = log_in(srv, session, "ops", "not-the-password")
                assert wrong.status_code == 200  # the form again, with its error
                assert "Please enter the correct username and password" in wrong.text
            sixth = log_in(srv, session, "ops", "not-the-password")
            assert sixth.status_code == 429
            assert int(sixth.headers["Retry-After"]) > 0
            # Even the right password: no login (and no password check) while throttled.
            right = log_in(srv, session, "ops", PASSWORD)
            assert right.status_code == 429
            # Another username from the same address is not throttled.
            other = log_in(srv, session, "someone-else", "x")
            assert other.status_code == 200
    with sqlite3.connect(data / "orchestrator.sqlite3") as conn:
        rows = conn.execute(
            "SELECT target, outcome, source_ip FROM access_auditrecord "
            "WHERE event_name = 'auth.login.throttled'"
        ).fetchall()
    conn.close()
    assert rows == [("ops", "denied", "127.0.0.1")]  # once per window, not per attempt


def test_a_successful_login_resets_the_failures(tmp_path):
    data = tmp_path / "data"
    with ServeProcess(data) as srv:
        assert create_admin(data).returncode == 0
        with requests.Session() as session:
            for _ in range(4):
                assert log_in(srv, session, "ops", "wrong").status_code == 200
            assert log_in(srv, session, "ops", PASSWORD).status_code == 302
        with requests.Session() as session:
            for _ in range(5):
                assert log_in(srv, session, "ops", "wrong").status_code == 200


@pytest.mark.parametrize("weak", ["x", "password", "12345678901234", "ops@example.com1"])
def test_createsuperuser_noinput_refuses_a_weak_password_in_one_line(tmp_path, weak):
    data = tmp_path / "data"
    with ServeProcess(data):
        pass  # creates and migrates the store
    result = create_admin(data, password=weak)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "DJANGO_SUPERUSER_PASSWORD refused:" in lines[0]
    with sqlite3.connect(data / "orchestrator.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM auth_user").fetchone() == (0,)
    conn.close()


@pytest.mark.postgres
def test_failed_logins_count_across_replicas_on_postgresql(tmp_path):
    from tests.pg import require_postgres, temp_database

    require_postgres()
    with temp_database() as url:
        args = ("--postgres-url", url)
        with ServeProcess(tmp_path / "a" / "data", *args) as one:
            share_keys(tmp_path / "a" / "data", tmp_path / "b" / "data")
            with ServeProcess(tmp_path / "b" / "data", *args) as two, requests.Session() as session:
                assert create_admin(tmp_path / "a" / "data", *args).returncode == 0
                for srv in (one, two, one, two, one):  # two replicas, one database
                    assert log_in(srv, session, "ops", "wrong").status_code == 200
                assert log_in(two, session, "ops", "wrong").status_code == 429
                assert log_in(one, session, "ops", PASSWORD).status_code == 429
