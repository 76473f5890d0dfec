"""An unavailable store is a 503 with Retry-After, never a 500; the PostgreSQL URL's libpq options
reach the connection; the readiness routes; the events writer's retries; the pool metrics."""

from __future__ import annotations

import json
from collections import namedtuple
from typing import Any

import psycopg
import pytest
from django.db import OperationalError
from django.db.backends.postgresql.base import DatabaseWrapper
from psycopg import errors as pgerrors
from psycopg_pool import PoolTimeout

from core import dberrors, dbpool_metrics, pgconf, readiness
from core.errors import ApiError
from core.middleware import db_error_response
from events import writer
from events.services import IngestResult, events_store
from tests import pg
from tests.liveserver import free_port, run_serve_expect_exit


def django_error(cause: BaseException) -> OperationalError:
    """As Django's DatabaseErrorWrapper raises it: Django's class, the driver's as the cause."""
    exc = OperationalError(str(cause))
    exc.__cause__ = cause
    return exc


UNAVAILABLE_CAUSES = [
    PoolTimeout("couldn't get a connection after 3.00 sec"),
    psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    pgerrors.AdminShutdown("terminating connection due to administrator command"),
    pgerrors.CannotConnectNow("the database system is starting up"),
    pgerrors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
    pgerrors.DeadlockDetected("deadlock detected"),
    pgerrors.SerializationFailure("could not serialize access due to concurrent update"),
    pgerrors.TooManyConnections("sorry, too many clients already"),
]


@pytest.mark.parametrize("cause", UNAVAILABLE_CAUSES, ids=lambda c: type(c).__name__)
def test_unavailable_store_answers_503_with_retry_after(cause: BaseException) -> None:
    exc = django_error(cause)
    assert dberrors.classify(exc) == dberrors.UNAVAILABLE
    response = db_error_response(exc)
    assert response is not None
    assert response.status_code == 503
    assert response["Retry-After"] == str(dberrors.RETRY_AFTER_SECONDS)
    assert json.loads(response.content)["error"] == dberrors.UNAVAILABLE_MESSAGE


def test_other_errors_keep_their_answers() -> None:
    assert dberrors.classify(django_error(pgerrors.UniqueViolation("duplicate key"))) is None
    assert dberrors.classify(OperationalError("database is locked")) == dberrors.BUSY
    assert dberrors.classify(OperationalError("database or disk is full")) == dberrors.FULL


# --- libpq options of --postgres-url -----------------------------------------------------------


def _show(settings_dict: dict[str, Any], *names: str) -> list[str]:
    from django.db import connections

    filled = connections.configure_settings({"default": {}, "probe": dict(settings_dict)})
    wrapper = DatabaseWrapper(filled["probe"], alias="ha12_probe")
    try:
        with wrapper.cursor() as cursor:
            values = []
            for name in names:
                cursor.execute(f"SHOW {name}")
                values.append(cursor.fetchone()[0])
            return values
    finally:
        wrapper.close()
        wrapper.close_pool()  # type: ignore[attr-defined]  # psycopg backend only; stubs lack it


@pytest.mark.postgres
def test_url_options_reach_the_connection_and_a_dead_first_host_is_skipped(
    django_db_blocker: Any,
) -> None:
    pg.require_postgres()
    server = psycopg.conninfo.conninfo_to_dict(pg.ADMIN_URL)
    dead = free_port()  # nothing listens there
    url = (
        f"postgresql://{server.get('user', 'postgres')}@127.0.0.1:{dead},"
        f"{server.get('host', '127.0.0.1')}:{server.get('port', '5432')}/"
        f"{server.get('dbname', 'postgres')}?application_name=orch-ha-probe"
        "&options=-c%20statement_timeout%3D4321&target_session_attrs=read-write"
        "&connect_timeout=3&keepalives=1&keepalives_idle=30"
    )
    settings_dict = pgconf.database_settings(url, pool_size=2, pool_timeout=5)
    assert settings_dict["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 2, "timeout": 5}
    assert settings_dict["HOST"] == f"127.0.0.1,{server.get('host', '127.0.0.1')}"
    with django_db_blocker.unblock():
        app, timeout = _show(settings_dict, "application_name", "statement_timeout")
    assert app == "orch-ha-probe"
    assert timeout == "4321ms"


def test_sslmode_and_root_cert_are_kept() -> None:
    options = pgconf.database_settings(
        "postgresql://u:p%40ss@db.example:5433/orch?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    )
    assert options["PASSWORD"] == "p@ss"
    assert options["PORT"] == "5433"
    assert options["OPTIONS"]["sslmode"] == "verify-full"
    assert options["OPTIONS"]["sslrootcert"] == "/etc/ca.pem"
    assert options["OPTIONS"]["connect_timeout"] == pgconf.DEFAULT_CONNECT_TIMEOUT_SECONDS


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("flag", "value"),
    [("--db-pool-timeout", "0"), ("--db-pool-timeout", "soon"), ("--db-pool-size", "0")],
)
def test_serve_refuses_a_bad_pool_setting(tmp_path: Any, flag: str, value: str) -> None:
    done = run_serve_expect_exit(tmp_path / "data", flag, value)
    assert done.returncode != 0
    assert flag in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.django_db(transaction=True)
def test_a_lost_connection_is_retried_even_when_a_fresh_one_is_held_already() -> None:
    """atomic() closes the broken connection and its exit may take a healthy one from the pool:
    the retry decision follows the error, not the connection held afterwards."""
    from django.db import connection

    from core.dbthreads import reset_broken_connection

    lost = django_error(psycopg.OperationalError("consuming input failed: server closed"))
    timeout = django_error(PoolTimeout("couldn't get a connection after 1.00 sec"))
    other = django_error(pgerrors.UniqueViolation("duplicate key value"))
    connection.ensure_connection()
    if connection.vendor == "sqlite":
        assert reset_broken_connection(lost) is False  # SQLite never reconnects
        return
    assert reset_broken_connection(lost) is True
    connection.ensure_connection()
    assert reset_broken_connection(timeout) is False  # a retry would only wait again
    assert reset_broken_connection(other) is False


@pytest.mark.e2e
@pytest.mark.parametrize(
    "url", ["postgresql://orch:s3cret@[::1/db", "postgresql://orch:s3cret@db/x?bogus=1", "db=x"]
)
def test_serve_refuses_a_url_libpq_cannot_read_in_one_line(tmp_path: Any, url: str) -> None:
    done = run_serve_expect_exit(tmp_path / "data", "--postgres-url", url)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--postgres-url" in lines[0], done.stderr
    assert "s3cret" not in done.stderr
    assert "Traceback" not in done.stderr


# --- the events writer's retries ---------------------------------------------------------------


def test_writer_retries_a_deadlock_then_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def flaky(*, batches: list[Any]) -> list[IngestResult]:
        calls.append(1)
        if len(calls) < 3:
            raise django_error(pgerrors.DeadlockDetected("deadlock detected"))
        return [IngestResult(received=1, inserted=1)]

    monkeypatch.setattr(writer, "events_store", flaky)
    monkeypatch.setattr(writer, "CONFLICT_BACKOFF_SECONDS", 0)
    assert writer.store_with_retries([[("e",)]]) == [IngestResult(received=1, inserted=1)]  # type: ignore[list-item]
    assert len(calls) == 3


def test_writer_gives_up_on_a_lasting_deadlock_with_503(monkeypatch: pytest.MonkeyPatch) -> None:
    def always(*, batches: list[Any]) -> list[IngestResult]:
        raise django_error(pgerrors.DeadlockDetected("deadlock detected"))

    monkeypatch.setattr(writer, "events_store", always)
    monkeypatch.setattr(writer, "CONFLICT_BACKOFF_SECONDS", 0)
    monkeypatch.setattr(writer, "reset_broken_connection", lambda exc=None: False)
    with pytest.raises(ApiError) as raised:
        writer.store_with_retries([[("e",)]])  # type: ignore[list-item]
    assert raised.value.status_code == 503


def _row(event_id: str) -> tuple[Any, ...]:
    return (event_id, "app.tick", "node-1", "2026-11-27T10:00:00Z", None, None, "{}")


@pytest.mark.django_db(transaction=True)
def test_a_group_keeps_per_batch_counts() -> None:
    """On PostgreSQL the group is inserted in event_id order; each batch keeps its own counts
    (the first batch carrying an event gets it; a stored one is a duplicate for everyone)."""
    events_store(batches=[[_row("m-stored")]])
    results = events_store(
        batches=[
            [_row("z-1"), _row("a-1"), _row("a-1")],
            [_row("a-1"), _row("m-stored"), _row("b-1")],
            [],
        ]
    )
    assert [(r.received, r.inserted) for r in results] == [(3, 2), (3, 1), (0, 0)]


@pytest.mark.django_db(transaction=True)
def test_a_group_larger_than_one_statement_keeps_counts_and_stores_each_event_once() -> None:
    """SQLite inserts a group in statements of CHUNK_ROWS rows; a duplicate found in a later
    statement undoes the earlier ones and the group is counted batch by batch."""
    from events.models import Event
    from events.services import CHUNK_ROWS

    first = [[_row(f"g1-{b}-{k}") for k in range(10)] for b in range(CHUNK_ROWS // 10 + 5)]
    assert [(r.received, r.inserted) for r in events_store(batches=first)] == [(10, 10)] * len(
        first
    )
    second = [[_row(f"g2-{b}-{k}") for k in range(10)] for b in range(CHUNK_ROWS // 10 + 5)]
    second[-1][3] = _row("g1-0-0")  # stored by the first group, in the second statement
    results = events_store(batches=second)
    assert [(r.received, r.inserted) for r in results] == [(10, 10)] * (len(second) - 1) + [(10, 9)]
    assert Event.objects.count() == 10 * len(first) + 10 * len(second) - 1
    assert Event.objects.filter(event_id="g1-0-0").count() == 1


# --- readiness (the store in use: SQLite here, PostgreSQL in the PostgreSQL run) ----------------


@pytest.fixture
def fresh_probes() -> Any:
    readiness.read_prober.forget()
    readiness.write_prober.forget()
    yield
    readiness.read_prober.forget()
    readiness.write_prober.forget()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("route", ["/v1/health/read-ready", "/v1/health/write-ready"])
def test_ready_routes_on_a_healthy_store(client: Any, fresh_probes: Any, route: str) -> None:
    response = client.get(route)
    assert response.status_code == 200
    assert response.json() == {"ready": True}
    head = client.head(route)
    assert head.status_code == 200
    assert head.content == b""


@pytest.mark.django_db(transaction=True)
def test_write_ready_is_503_when_the_disk_is_full(
    client: Any, fresh_probes: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    assert readiness.data_dir_writable(tmp_path).ready
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(readiness.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 4096))
    verdict = readiness.data_dir_writable(tmp_path)
    assert not verdict.ready
    assert "full" in verdict.reason
    # The route answers the verdict (SQLite's probe is data_dir_writable of the store's dir).
    monkeypatch.setattr(readiness.write_prober, "_probe", lambda: verdict)
    response = client.get("/v1/health/write-ready")
    assert response.status_code == 503
    assert response["Retry-After"] == str(dberrors.RETRY_AFTER_SECONDS)
    assert response.json() == {"ready": False, "reason": verdict.reason}
    assert client.get("/v1/health/read-ready").status_code == 200


# --- pool metrics ------------------------------------------------------------------------------


def test_pool_families_are_exposed() -> None:
    from prometheus_client import generate_latest

    dbpool_metrics.install()
    dbpool_metrics.install()  # idempotent
    text = generate_latest().decode()
    for family in (
        "cp_db_pool_connections_in_use",
        "cp_db_pool_connections_idle",
        "cp_db_pool_requests_waiting",
        "cp_db_pool_timeouts_total",
    ):
        assert f"\n{family} " in text, family


@pytest.mark.django_db(transaction=True)
def test_concurrent_groups_in_opposite_orders_never_deadlock() -> None:
    """Two writers storing the same new events in opposite orders at the same moment: on
    PostgreSQL each group is inserted in event_id order, so neither can wait on the other in a
    cycle (unsorted, this deadlocks almost every round). Exactly one writer inserts each event."""
    import threading

    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("one SQLite writer at a time cannot deadlock; runs in the PostgreSQL run")
    rounds = 15
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    inserted = [0, 0]

    def worker(index: int) -> None:
        try:
            for r in range(rounds):
                rows = [_row(f"dl-{r:02d}-{k:03d}") for k in range(150)]
                if index:
                    rows.reverse()
                barrier.wait(10)
                results = events_store(batches=[rows[:75], rows[75:]])
                inserted[index] += sum(r.inserted for r in results)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sum(inserted) == rounds * 150
    from events.models import Event

    assert Event.objects.filter(event_id__startswith="dl-").count() == rounds * 150


@pytest.mark.django_db(transaction=True)
def test_the_writers_execute_raises_djangos_errors_and_keeps_djangos_percent_rules() -> None:
    """`core.dbthreads.execute` (the writers' long statements skip Django's per-call `%s`
    rewrite on SQLite): a constraint failure is still Django's IntegrityError, which the
    writers classify, and a text with a literal `%%` still means one `%`, as through Django."""
    from django.db import IntegrityError, connection

    from core.dbthreads import execute

    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE percent_rules (k TEXT PRIMARY KEY, v TEXT)")
        execute(cursor, "INSERT INTO percent_rules VALUES (%s, %s), (%s, %s)", ["a", "5%", "b", ""])
        with pytest.raises(IntegrityError):
            execute(cursor, "INSERT INTO percent_rules VALUES (%s, %s)", ["a", "again"])
        execute(cursor, "UPDATE percent_rules SET v = v || '%%' WHERE k = %s", ["b"])
        cursor.execute("SELECT k, v FROM percent_rules ORDER BY k")
        assert cursor.fetchall() == [("a", "5%"), ("b", "%")]
        cursor.execute("DROP TABLE percent_rules")
