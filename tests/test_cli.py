"""The console script: --help, version, flag errors (one line, non-zero exit), and the store
checks of signing-key, serve --postgres-url and createsuperuser."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from io import StringIO

import pytest
import requests
from django.core.management import CommandError, call_command

from tests import pg
from tests.liveserver import ServeProcess, cli, free_port, run_serve_expect_exit

REPO = pg.REPO
# The PostgreSQL run of the API tests sets AUTONOMY_TEST_DATABASE for this process; the CLI
# subprocesses here must choose their store from their own flags, as a user's would.
NO_TEST_DB = {"AUTONOMY_TEST_DATABASE": ""}


def test_help_lists_the_commands():
    result = cli("--help")
    assert result.returncode == 0
    for name in ("serve", "migrate", "version", "signing-key", "webhook"):
        assert re.search(rf"^\s+{name}\s", result.stdout, re.M), result.stdout


def test_unknown_command_is_an_error():
    result = cli("frobnicate")
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr


def test_version_text_and_json():
    out = StringIO()
    call_command("version", stdout=out)
    assert out.getvalue().startswith("autonomy-orchestrator 0.1.0")
    result = cli("version", "--output", "json")
    assert result.returncode == 0
    info = json.loads(result.stdout)
    assert set(info) == {"version", "build_sha", "build_date", "tier", "platform"}
    assert info["version"] == "0.1.0"
    assert re.fullmatch(r"[a-z0-9]+/[a-z0-9]+", info["platform"])


def test_version_rejects_unknown_output():
    with pytest.raises(CommandError, match="--output must be 'text' or 'json'"):
        call_command("version", output="xml", stdout=StringIO())


# --- help: the project's flags, named as users type the command -------------------------------

DJANGO_INTERNALS = (
    "--settings",
    "--pythonpath",
    "--traceback",
    "--skip-checks",
    "--verbosity",
    "--no-color",
    "--force-color",
    "--version",
    "--database",
)
# Per command: the flags whose help must name their AUTONOMY_* variable, and defaults shown.
HELP_EXPECTED = {
    "serve": (
        ("--listen", "--data-dir", "--postgres-url", "--metrics-addr", "--tls-cert-file",
         "--tls-key-file", "--tls-ca-file", "--tls-crl-file", "--tls-crl-sync-url",
         "--tls-crl-sync-min-sources", "--tls-crl-sync-interval", "--tls-crl-sync-server-name",
         "--log-format", "--log-level", "--stuck-after"),
        ("default 127.0.0.1:8888", "default $XDG_STATE_HOME/autonomyops/orchestrator",
         "default 5m", "default text", "default info", "default 1h"),
    ),
    "migrate": (
        ("--sqlite-dir", "--postgres-url", "--batch-size"),
        ("default 1000",),
    ),
    "signing-key": (("--data-dir",), ("default $XDG_STATE_HOME/autonomyops/orchestrator",)),
    "createsuperuser": (
        ("--data-dir", "--postgres-url"),
        ("default $XDG_STATE_HOME/autonomyops/orchestrator", "default empty = SQLite"),
    ),
    "version": ((), ("default text",)),
}  # fmt: skip


def _help_entry(text: str, flag: str) -> str:
    """The help text of `flag` in argparse output (its line and the indented ones after it)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.match(rf"  {re.escape(flag)}\b", line):  # an option's own line: two spaces
            entry = [line]
            for more in lines[index + 1 :]:
                if not more.startswith(" " * 10):  # the next option (2 spaces) or the end
                    break
                entry.append(more)
            return " ".join(part.strip() for part in entry)
    raise AssertionError(f"{flag} not in help:\n{text}")


@pytest.mark.parametrize("name", sorted(HELP_EXPECTED))
def test_command_help_shows_the_project_flags_with_defaults_not_djangos(name):
    from core.flags import env_name

    result = cli(name, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith(f"usage: autonomy-orchestrator {name} "), text
    for internal in DJANGO_INTERNALS:
        assert internal not in text, f"{internal} listed in `{name} --help`:\n{text}"
    flags, defaults = HELP_EXPECTED[name]
    for flag in flags:
        assert env_name(flag) in _help_entry(text, flag), (flag, text)
    flat = " ".join(text.split())
    for default in defaults:
        assert default in flat, (default, text)


def test_usage_errors_name_the_command_as_typed():
    result = cli("signing-key", "--no-such-flag")
    assert result.returncode == 2
    assert "autonomy-orchestrator signing-key: error: unrecognized arguments" in result.stderr
    assert "signing_key" not in result.stderr


def test_djangos_options_still_work_and_manage_py_keeps_its_help():
    quiet = cli("version", "--no-color", "--verbosity", "0")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("autonomy-orchestrator 0.1.0")
    dev = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "signing_key", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dev.returncode == 0, dev.stderr
    assert dev.stdout.startswith("usage: manage.py signing_key")
    assert "--settings" in dev.stdout


# --- signing-key: never mint a key behind a mistyped --data-dir ---------------------------------


def test_signing_key_refuses_a_data_dir_without_a_key(tmp_path):
    typo = tmp_path / "orchestartor"
    result = cli("signing-key", "--data-dir", str(typo))
    assert result.returncode == 1
    assert result.stdout == ""
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert f"no signing key at {typo / 'rollout-signing.key'}" in err
    assert "--create" in err
    assert not typo.exists()  # nothing created, no private key minted


def test_signing_key_create_makes_the_key_once(tmp_path):
    data_dir = tmp_path / "data"
    created = cli("signing-key", "--data-dir", str(data_dir), "--create", "--key-id")
    assert created.returncode == 0, created.stderr
    assert re.fullmatch(r"[0-9a-f]{16}\n", created.stdout)
    again = cli("signing-key", "--data-dir", str(data_dir), "--key-id")  # no --create needed now
    assert again.returncode == 0, again.stderr
    assert again.stdout == created.stdout


@pytest.mark.e2e
def test_serve_creates_the_key_that_signing_key_then_prints(tmp_path):
    data_dir = tmp_path / "data"
    with ServeProcess(data_dir) as srv:
        served = requests.get(srv.url("/v1/signing-key"), timeout=10).text
    assert (data_dir / "rollout-signing.key").is_file()
    printed = cli("signing-key", "--data-dir", str(data_dir))
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == served


# --- serve --postgres-url: checked before anything starts, failures in one line ----------------


def _one_line_refusal(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    err = result.stderr.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err  # no pool warnings before it
    assert "unexpected error" not in err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize(
    ("url", "needles"),
    [
        ("mysql://root@127.0.0.1:3306/fleet", ["must be a postgresql://", "mysql://"]),
        ("pgsql://postgres@127.0.0.1/fleet", ["must be a postgresql://"]),
        ("postgresql://postgres@127.0.0.1:54x2/fleet", ["port '54x2'"]),
        ("postgresql://postgres@127.0.0.1:70000/fleet", ["port '70000'"]),
        ("postgresql://postgres@[::1:5432/fleet", ["not a valid PostgreSQL URL", "]"]),
        ("postgresql://postgres@127.0.0.1/fleet?sslmod=require", ["sslmod"]),
    ],
)
def test_serve_refuses_a_bad_postgres_url_before_starting(tmp_path, url, needles):
    result = run_serve_expect_exit(tmp_path / "data", "--postgres-url", url, env=NO_TEST_DB)
    _one_line_refusal(result, "--postgres-url", *needles)
    assert not (tmp_path / "data").exists()


def test_a_postgres_url_in_the_environment_is_checked_too(tmp_path):
    result = run_serve_expect_exit(
        tmp_path / "data", env={**NO_TEST_DB, "AUTONOMY_POSTGRES_URL": "mysql://root@db/fleet"}
    )
    _one_line_refusal(result, "--postgres-url must be a postgresql://")


def test_the_password_never_shows_in_a_refusal(tmp_path):
    url = "postgresql://ops:hunter2-secret@127.0.0.1:notaport/fleet"
    result = run_serve_expect_exit(tmp_path / "data", "--postgres-url", url, env=NO_TEST_DB)
    err = _one_line_refusal(result, "ops:***@")
    assert "hunter2" not in err


@pytest.mark.postgres
def test_serve_on_a_missing_database_is_one_line(tmp_path):
    pg.require_postgres()
    url = pg.url_for("no_such_db_for_serve")
    result = run_serve_expect_exit(tmp_path / "data", "--postgres-url", url, env=NO_TEST_DB)
    _one_line_refusal(result, "cannot connect to PostgreSQL", 'database "no_such_db_for_serve"')
    assert not (tmp_path / "data").exists()


@pytest.mark.postgres
def test_serve_on_a_closed_port_is_one_line(tmp_path):
    pg.require_postgres()  # the same test set-up as the other connection cases
    port = free_port()  # nothing listens there
    url = f"postgresql://postgres@127.0.0.1:{port}/fleet"
    result = run_serve_expect_exit(tmp_path / "data", "--postgres-url", url, env=NO_TEST_DB)
    _one_line_refusal(result, f'"127.0.0.1", port {port}', "Connection refused")


@pytest.mark.postgres
def test_serve_hands_the_urls_libpq_options_to_libpq(tmp_path):
    pg.require_postgres()
    url = pg.url_for("postgres") + "?sslmode=bogus"
    result = run_serve_expect_exit(tmp_path / "data", "--postgres-url", url, env=NO_TEST_DB)
    _one_line_refusal(result, "sslmode", "bogus")


# --- createsuperuser: says what to run when the store is not there yet --------------------------


def _createsuperuser(*args: str) -> subprocess.CompletedProcess[str]:
    return cli(
        "createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.com", *args,
        env={**NO_TEST_DB, "DJANGO_SUPERUSER_PASSWORD": "a-long-admin-passphrase-42"},
    )  # fmt: skip


def test_createsuperuser_without_a_store_says_to_start_serve(tmp_path):
    data_dir = tmp_path / "data"
    result = _createsuperuser("--data-dir", str(data_dir))
    err = _one_line_refusal(result, f"no store at {data_dir / 'orchestrator.sqlite3'}")
    assert f"`autonomy-orchestrator serve --data-dir {data_dir}` once" in err
    assert "manage.py" not in err and "migrate" not in err.replace("migrates", "")
    assert not data_dir.exists()  # no empty store file left behind


def test_createsuperuser_on_an_unmigrated_store_says_to_start_serve(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    sqlite3.connect(data_dir / "orchestrator.sqlite3").close()  # a store serve never prepared
    result = _createsuperuser("--data-dir", str(data_dir))
    _one_line_refusal(
        result, "is not migrated", f"autonomy-orchestrator serve --data-dir {data_dir}"
    )


@pytest.mark.postgres
def test_createsuperuser_on_a_missing_postgres_database_is_one_line(tmp_path):
    pg.require_postgres()
    url = pg.url_for("no_such_db_for_admin")
    result = _createsuperuser("--data-dir", str(tmp_path / "data"), "--postgres-url", url)
    _one_line_refusal(result, 'database "no_such_db_for_admin" does not exist')


@pytest.mark.postgres
def test_createsuperuser_on_an_empty_postgres_database_says_to_start_serve(tmp_path):
    with pg.temp_database("test_cli") as url:
        result = _createsuperuser("--data-dir", str(tmp_path / "data"), "--postgres-url", url)
        _one_line_refusal(result, "is not migrated", "autonomy-orchestrator serve --postgres-url")
        assert pg.table_names(url) == []  # nothing was created in it
