"""Admin logins survive a restart: the session-signing secret lives in the data dir (SQLite and
PostgreSQL alike), unless AUTONOMY_SECRET_KEY is set."""

from __future__ import annotations

import re
import stat

import pytest
import requests

from tests import pg
from tests.liveserver import ServeProcess, cli

PASSWORD = "a-long-admin-passphrase-42"


def _create_admin(data_dir, extra_env=None, *args: str) -> None:
    result = cli(
        "createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.com",
        "--data-dir", str(data_dir), *args,
        env={"DJANGO_SUPERUSER_PASSWORD": PASSWORD, **(extra_env or {})},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def _log_in(srv: ServeProcess) -> requests.Session:
    session = requests.Session()
    page = session.get(srv.url("/admin/login/"), timeout=10)
    found = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert found, page.text
    token = found.group(1)
    done = session.post(
        srv.url("/admin/login/?next=/admin/"),
        data={"username": "ops", "password": PASSWORD, "csrfmiddlewaretoken": token},
        headers={"Referer": srv.url("/admin/login/")},
        timeout=10,
        allow_redirects=False,
    )
    assert done.status_code == 302, done.text[:500]
    return session


def _still_logged_in(srv: ServeProcess, session: requests.Session) -> bool:
    answer = session.get(srv.url("/admin/"), timeout=10, allow_redirects=False)
    return answer.status_code == 200


def _check_login_survives_restart(data_dir, *serve_args: str, env=None) -> None:
    with ServeProcess(data_dir, *serve_args, env=env) as srv:
        _create_admin(data_dir, env, *serve_args)
        session = _log_in(srv)
        assert _still_logged_in(srv, session)
        port = srv.port
    with ServeProcess(data_dir, *serve_args, port=port, env=env) as srv:
        assert _still_logged_in(srv, session)


@pytest.mark.e2e
def test_admin_login_survives_a_restart_on_sqlite(tmp_path):
    data_dir = tmp_path / "data"
    _check_login_survives_restart(data_dir)
    secret = data_dir / "django-secret.key"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


@pytest.mark.e2e
@pytest.mark.postgres
def test_admin_login_survives_a_restart_on_postgres(tmp_path):
    with pg.temp_database("test_secret") as url:
        data_dir = tmp_path / "data"
        _check_login_survives_restart(data_dir, "--postgres-url", url)
        assert (data_dir / "django-secret.key").exists()


@pytest.mark.e2e
def test_secret_key_from_the_environment_wins(tmp_path):
    data_dir = tmp_path / "data"
    env = {"AUTONOMY_SECRET_KEY": "k" * 60}
    _check_login_survives_restart(data_dir, env=env)
    assert not (data_dir / "django-secret.key").exists()
