"""PostgreSQL helpers for tests: a fresh database per use (created here, dropped after).

    with temp_database() as url:   # postgresql://…/test_mig_<pid>_<n>
        cli("migrate", "--postgres-url", url, ...)

`require_postgres()` skips with the reason when the server is unreachable, and fails instead
under CI=true (CI must run these tests, never skip them).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.db.models import Model
from psycopg import sql

from tests.liveserver import child_env

REPO = Path(__file__).resolve().parent.parent

ADMIN_URL = os.environ.get(
    "AUTONOMY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_counter = itertools.count(1)


def unreachable_reason() -> str | None:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"PostgreSQL at {ADMIN_URL} is unreachable: {str(exc).strip().splitlines()[0]}"


def require_postgres() -> None:
    reason = unreachable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
    pytest.skip(reason)


def url_for(dbname: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + dbname))


def create_database(prefix: str = "test_mig") -> tuple[str, str]:
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # Not UTC on purpose: a timestamp copied without its zone would shift and show.
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET timezone TO 'America/New_York'").format(
                sql.Identifier(name)
            )
        )
    return name, url_for(name)


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextmanager
def temp_database(prefix: str = "test_mig") -> Iterator[str]:
    """A new, empty database; its URL is yielded and the database dropped afterwards."""
    require_postgres()
    name, url = create_database(prefix)
    try:
        yield url
    finally:
        drop_database(name)


def scalar(conn: psycopg.Connection[Any], query: str) -> Any:
    """The first column of the first row of QUERY (which must return a row)."""
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


def table_names(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return sorted(r[0] for r in rows)


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table)))
        return int(row.fetchone()[0])  # type: ignore[index]


# --- SQLite control-plane stores to migrate from ---------------------------------------------


def migrated_store(data_dir: Path) -> Path:
    """A data dir whose SQLite store has the full schema, made by the real `manage.py migrate`
    with serve's settings (WAL, as `serve` leaves it); returns the .sqlite3 path."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**child_env(), "AUTONOMY_DATA_DIR": str(data_dir)}
    env.pop("AUTONOMY_POSTGRES_URL", None)
    env.pop("AUTONOMY_TEST_DATABASE", None)
    subprocess.run(
        [sys.executable, str(REPO / "manage.py"), "migrate", "-v0"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return data_dir / "orchestrator.sqlite3"


def copied_models() -> list[type[Model]]:
    """What a migration must carry over: every model of the domain apps, plus admin accounts.
    Listed independently of orchestrator_site.pgmigrate on purpose."""
    from django.apps import apps
    from django.contrib.auth.models import Group, User

    found: list[type[Model]] = []
    for app in ("releases", "events", "rollouts", "crl", "notifications"):
        found += [m for m in apps.get_app_config(app).get_models() if m._meta.managed]
    return [*found, Group, User, User.groups.through]


def _value(f: Any, i: int, parents: dict[str, list[Any]]) -> Any:
    kind = f.get_internal_type()
    if f.remote_field is not None:
        pks = parents[f.remote_field.model._meta.label_lower]
        return pks[i % len(pks)]
    if f.null and not f.unique and i % 3 == 2:
        return None
    if f.choices:
        return f.choices[i % len(f.choices)][0]
    if kind in ("AutoField", "BigAutoField", "SmallAutoField"):
        return i + 1
    if kind in ("CharField", "TextField", "SlugField", "EmailField", "URLField"):
        text = f"{i}-{f.column}-ünïcødé ✓"
        return text[: f.max_length] if f.max_length else text
    if kind.endswith("IntegerField"):
        return i + 1
    if kind == "FloatField":
        return i + 0.25
    if kind == "DecimalField":
        return f"{i}.5"
    if kind == "BooleanField":
        return i % 2
    if kind == "DateTimeField":
        return f"2026-11-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:07.{(i * 7919) % 1000000:06d}"
    if kind == "DateField":
        return f"2026-11-{1 + i % 28:02d}"
    if kind == "JSONField":
        return json.dumps({"i": i, "nested": {"ü": [1, 2.5, None, True]}, "z": "last"})
    if kind == "BinaryField":  # every byte value: proves the bytes arrive unchanged
        return bytes(range(256)) + i.to_bytes(4, "big") + b"\x00\xff"
    if kind == "DurationField":
        return i * 1_000_000
    if kind == "UUIDField":
        return f"{i:032x}"
    raise AssertionError(f"no test value for {f.model.__name__}.{f.name} ({kind})")


def fill_store(db: Path, rows: int = 25, events: int = 0) -> dict[str, int]:
    """Put `rows` rows into every table `copied_models()` lists (parents first), plus `events`
    more events with realistic payloads; returns {table: rows} as written."""
    models = copied_models()
    written: dict[str, int] = {}
    parents: dict[str, list[Any]] = {}
    pending = list(models)
    conn = sqlite3.connect(db)
    try:
        while pending:
            for model in list(pending):
                deps = [
                    f.remote_field.model._meta.label_lower
                    for f in model._meta.concrete_fields
                    if f.remote_field is not None
                ]
                if any(d not in parents for d in deps if d != model._meta.label_lower):
                    continue
                pending.remove(model)
                fields = list(model._meta.concrete_fields)
                cols = ", ".join(f'"{f.column}"' for f in fields)
                marks = ", ".join("?" for _ in fields)
                values = [tuple(_value(f, i, parents) for f in fields) for i in range(rows)]
                conn.executemany(
                    f'INSERT INTO "{model._meta.db_table}" ({cols}) VALUES ({marks})', values
                )
                pk_index = fields.index(model._meta.pk)
                parents[model._meta.label_lower] = [v[pk_index] for v in values]
                written[model._meta.db_table] = rows
        if events:
            add_events(conn, events, start=rows)
            written["events_event"] = written.get("events_event", 0) + events
        conn.commit()
    finally:
        conn.close()
    return written


def add_events(conn: sqlite3.Connection, n: int, start: int = 0) -> None:
    """`n` events as the API stores them; ids continue after `start`, in insertion order."""
    rows = []
    for k in range(start, start + n):
        payload = json.dumps(
            {
                "event_id": f"evt-{k:08d}",
                "node_id": f"node-{k % 50:03d}",
                "event_type": "app.tick",
                "timestamp": "2026-11-27T10:00:00+02:00",
                "extra": {"k": k, "ü": "✓"},
            },
            ensure_ascii=False,
        )
        rows.append(
            (
                k + 1,
                f"evt-{k:08d}",
                "app.tick",
                f"node-{k % 50:03d}",
                "2026-11-27T10:00:00+02:00",
                None,
                None,
                payload,
                f"2026-11-27 08:{(k // 60) % 60:02d}:{k % 60:02d}.{k % 1000000:06d}",
            )
        )
    conn.executemany(
        "INSERT INTO events_event (id, event_id, event_type, node_id, timestamp, "
        "lock_fingerprint, release_id, payload, received_at) VALUES (?,?,?,?,?,?,?,?,?)",
        rows,
    )


def _normal(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "DateTimeField":
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if kind == "JSONField":
        return json.loads(value) if isinstance(value, str) else value
    if kind == "BooleanField":
        return bool(value)
    if kind == "BinaryField":
        return bytes(value)
    if kind == "DurationField":
        return value if isinstance(value, timedelta) else timedelta(microseconds=value)
    if kind == "FloatField":
        return float(value)
    if kind == "DecimalField":
        return Decimal(str(value))
    if kind == "UUIDField":
        return str(value).replace("-", "")
    if kind == "DateField" and isinstance(value, str):
        return date.fromisoformat(value)
    return value


def rows_of(
    model: type[Model], *, sqlite: Path | None = None, url: str | None = None
) -> list[tuple[Any, ...]]:
    """Every row of the model's table, ordered by primary key, normalised for comparison."""
    fields = list(model._meta.concrete_fields)
    cols = ", ".join(f'"{f.column}"' for f in fields)
    query = f'SELECT {cols} FROM "{model._meta.db_table}" ORDER BY "{model._meta.pk.column}"'
    if sqlite is not None:
        conn = sqlite3.connect(f"file:{sqlite}?mode=ro", uri=True)
        try:
            raw = conn.execute(query).fetchall()
        finally:
            conn.close()
    else:
        assert url is not None
        with psycopg.connect(url) as pg:
            raw = pg.execute(query).fetchall()
    kinds = [f.get_internal_type() if f.remote_field is None else "FK" for f in fields]
    return [tuple(_normal(k, v) for k, v in zip(kinds, row, strict=True)) for row in raw]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def event_partitions_without_key(url: str) -> list[str]:
    """Partitions of the events table lacking a valid unique index on the idempotency key
    (event_id, node_id) (events/partitions.py); [] when every one has it."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'events_event'::regclass AND NOT EXISTS ("
            "  SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisunique "
            "  AND x.indisvalid AND pg_get_indexdef(x.indexrelid) LIKE '%(event_id, node_id)')"
        )
        return [r[0] for r in rows.fetchall()]


def invalid_index_names(url: str, table: str) -> set[str]:
    """Indexes of `table` PostgreSQL does not use (a partitioned index missing on a partition)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid "
            "WHERE x.indrelid = to_regclass(%s) AND NOT x.indisvalid",
            [table],
        )
        return {r[0] for r in rows.fetchall()}


def index_names(url: str, table: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [table])
        return {r[0] for r in rows.fetchall()}
