"""Copy a SQLite control plane into PostgreSQL: the engine behind `autonomy-orchestrator migrate`.

The command (`management/commands/migrate_to_pg.py`) parses flags and prints; this module does
the work through two database aliases that exist only while the command runs:

* `migrate_source`: the SQLite store, opened read-only (`file:…?mode=ro`), so not even a bug
  here can write to it. `db_routers.MigrateRouter` also keeps Django's `migrate` off it.
* `migrate_target`: the PostgreSQL database.

Order (API.md §2): schema (Django migrations, idempotent) → releases + node acks → events →
rollouts (plans, stage status, history) → any other app → admin accounts → row-count validation
→ an `HACutoverAt` row. Models are found at run time, so a model added to an app is copied
without changes here.

Every batch is COPYed into a temporary staging table, checked against what the target already
holds, and moved with `INSERT … SELECT … ON CONFLICT DO NOTHING` in its own transaction: an
interrupted run keeps its finished batches, and a re-run inserts only what is missing. A row that
exists in the target with different content (same primary key or other unique key) stops the
run: the target holds another control plane's data and is never merged silently.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import environ
from django.apps import apps
from django.core.management import call_command
from django.core.management.color import no_style
from django.db import DEFAULT_DB_ALIAS, connections, models, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from core import pgurl
from orchestrator_site.db_routers import SOURCE_ALIAS

SOURCE = SOURCE_ALIAS  # the router keeps Django's `migrate` off it
TARGET = "migrate_target"

# Tie-break order of apps (the seed's order); dependencies always win over it.
APP_ORDER = ("releases", "events", "rollouts")
LATE_APPS = ("auth",)  # admin accounts last: nothing of the control plane depends on them

# Not copied: the target's own `migrate` creates content types and permissions with its own ids,
# so they and everything that points at them (admin log, per-user/group permissions) stay behind.
# Sessions are not copied either: admins log in again after the cutover.
SKIP_APPS = {"contenttypes", "sessions", "admin"}
SKIP_MODELS = {
    "orchestrator_site.hacutoverat",
    "orchestrator_site.leaderstate",
    "orchestrator_site.replicaheartbeat",
    "orchestrator_site.sharedkeyfingerprint",
    "orchestrator_site.loginfailure",
}
SKIP_DEPENDENTS_OF = {"contenttypes.contenttype"}
# The fleet view's tables are derived from events and acks and change in place while a store
# serves (a node's last_seen): not copied row for row (a re-run would see "different rows"), but
# merged into the target after the copy (`copy_fleet_view`).
DERIVED_MODELS = {"releases.fleetnode", "releases.fleetnodeack"}


_TABLES_CACHE: dict[str, set[str]] = {}  # alias -> table names, refreshed after schema changes


class MigrateError(Exception):
    """A problem the operator must fix; the message is one readable sentence."""


class ConflictError(MigrateError):
    """The target holds a row with the same key and different content."""


def _label(model: type[models.Model]) -> str:
    return model._meta.label_lower


@dataclass
class TableSpec:
    """What is needed to copy one model's table."""

    model: type[models.Model]
    table: str
    columns: list[str]
    pk: str
    unique_keys: list[list[str]]
    adapters: dict[int, Callable[[Any], Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return _label(self.model)


@dataclass
class TableResult:
    table: str
    source_rows: int
    inserted: int = 0
    already_present: int = 0
    seconds: float = 0.0


@dataclass
class CountRow:
    table: str
    source: int
    target: int | None  # None: the table does not exist in the target

    @property
    def ok(self) -> bool:
        return self.target == self.source


# --- database aliases ---------------------------------------------------------------------------


def sqlite_ro_uri(path: Path) -> str:
    """A read-only SQLite URI for the store.

    A store that `serve` closed cleanly has no `-wal`/`-shm` files and everything is in the main
    file: it is opened `immutable=1` too, so SQLite creates nothing next to it (a `-shm` created
    by another user could stop `serve` from opening the store later). A store with a `-wal`
    (serve running, or stopped uncleanly) is opened `mode=ro` only, reading the WAL as well.
    """
    resolved = path.resolve()
    uri = f"file:{quote(str(resolved))}?mode=ro"
    wal, shm = Path(f"{resolved}-wal"), Path(f"{resolved}-shm")
    if not wal.exists() and not shm.exists():
        uri += "&immutable=1"
    return uri


def postgres_settings(url: str) -> dict[str, Any]:
    try:
        pgurl.check(url)
    except pgurl.PostgresUrlError as exc:
        raise MigrateError(str(exc)) from None
    config = environ.Env.db_url_config(url)
    config["ENGINE"] = "django.db.backends.postgresql"
    config["CONN_MAX_AGE"] = None  # one connection for the whole run (temp tables live on it)
    config["CONN_HEALTH_CHECKS"] = False
    config.setdefault("OPTIONS", {})
    return config


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return pgurl.redact(url)


def _add_alias(alias: str, config: dict[str, Any]) -> None:
    from django.conf import settings

    filled = connections.configure_settings({DEFAULT_DB_ALIAS: {}, alias: dict(config)})[alias]
    if alias in connections.settings:
        connections[alias].close()
        del connections[alias]
    connections.settings[alias] = filled
    settings.DATABASES[alias] = filled
    _TABLES_CACHE.pop(alias, None)


def configure_source(sqlite_file: Path) -> None:
    _add_alias(
        SOURCE,
        {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": sqlite_ro_uri(sqlite_file),
            "OPTIONS": {"uri": True},
        },
    )


def configure_target(postgres_url: str) -> None:
    _add_alias(TARGET, postgres_settings(postgres_url))


def close_aliases() -> None:
    for alias in (SOURCE, TARGET):
        if alias in connections.settings:
            connections[alias].close()


def open_source(sqlite_file: Path) -> None:
    """Check the source is a readable SQLite control plane, with one clear error when not."""
    if not sqlite_file.is_file():
        raise MigrateError(f"no SQLite store at {sqlite_file} (check --sqlite-dir)")
    configure_source(sqlite_file)
    try:
        names = set(connections[SOURCE].introspection.table_names())
    except Exception as exc:
        raise MigrateError(f"cannot read the SQLite store {sqlite_file}: {exc}") from exc
    if "django_migrations" not in names:
        raise MigrateError(f"{sqlite_file} is not an autonomy-orchestrator store (no schema)")
    check_source_schema(sqlite_file)


def check_source_schema(sqlite_file: Path) -> None:
    """The source must have exactly this version's schema: the copy maps columns one to one."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[SOURCE])
    applied = set(executor.loader.applied_migrations)
    known = set(executor.loader.graph.nodes)
    if applied - known:
        newer = ", ".join(f"{app}.{name}" for app, name in sorted(applied - known)[:3])
        raise MigrateError(
            f"the SQLite store {sqlite_file} was written by a newer autonomy-orchestrator "
            f"(unknown migrations: {newer}); run `migrate` from that version"
        )
    missing = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if missing:
        raise MigrateError(
            f"the SQLite store {sqlite_file} has an older schema ({len(missing)} migrations not "
            "applied); start `serve` on it once with this version (it applies them), stop it, "
            "then run `migrate` again"
        )


def open_target(postgres_url: str) -> None:
    try:
        pgurl.probe(postgres_url)  # one line naming the cause: refused, auth, no database
    except pgurl.PostgresUrlError as exc:
        raise MigrateError(str(exc)) from None
    configure_target(postgres_url)
    try:
        connections[TARGET].ensure_connection()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MigrateError(
            f"cannot connect to PostgreSQL at {redact_url(postgres_url)}: {first}"
        ) from None


# --- what to copy, in which order ---------------------------------------------------------------


def _dependencies(model: type[models.Model]) -> set[str]:
    deps = set()
    for f in model._meta.concrete_fields:
        if f.remote_field is not None and f.remote_field.model is not None:
            deps.add(_label(f.remote_field.model))
    return deps


def copy_models() -> list[type[models.Model]]:
    """Every model whose rows `migrate` copies, parents before children, seed order otherwise."""
    candidates: dict[str, type[models.Model]] = {}
    for model in apps.get_models(include_auto_created=True):
        meta = model._meta
        if meta.proxy or not meta.managed or meta.app_label in SKIP_APPS:
            continue
        if _label(model) in SKIP_MODELS or _label(model) in DERIVED_MODELS:
            continue
        candidates[_label(model)] = model

    # Drop what points (directly or through another dropped model) at a skipped model.
    dropped = set(SKIP_DEPENDENTS_OF)
    changed = True
    while changed:
        changed = False
        for label, model in list(candidates.items()):
            deps = _dependencies(model)
            if deps & dropped or any(d not in candidates and d != label for d in deps):
                dropped.add(label)
                del candidates[label]
                changed = True

    def rank(model: type[models.Model]) -> tuple[int, int]:
        app = model._meta.app_label
        if app in APP_ORDER:
            group = APP_ORDER.index(app)
        elif app in LATE_APPS:
            group = len(APP_ORDER) + 1
        else:
            group = len(APP_ORDER)
        return group, position[_label(model)]

    position = {label: i for i, label in enumerate(candidates)}
    pending = {
        label: _dependencies(m) & set(candidates) - {label} for label, m in candidates.items()
    }
    ready = [(rank(candidates[lb]), lb) for lb, deps in pending.items() if not deps]
    heapq.heapify(ready)
    ordered: list[type[models.Model]] = []
    while ready:
        _, label = heapq.heappop(ready)
        ordered.append(candidates[label])
        for other, deps in pending.items():
            if label in deps:
                deps.discard(label)
                if not deps:
                    heapq.heappush(ready, (rank(candidates[other]), other))
    if len(ordered) != len(candidates):
        cycle = sorted(set(candidates) - {_label(m) for m in ordered})
        raise MigrateError(f"cannot order tables with circular foreign keys: {', '.join(cycle)}")
    return ordered


def _column(meta: Any, name: str) -> str:
    """The database column of the concrete field NAME (unique keys only name concrete fields)."""
    field = meta.get_field(name)
    assert isinstance(field, models.Field), name
    return str(field.column)


def table_spec(model: type[models.Model]) -> TableSpec:
    meta = model._meta
    fields = list(meta.concrete_fields)
    columns = [f.column for f in fields]
    keys: list[list[str]] = [[meta.pk.column]]
    for f in fields:
        if f.unique and not f.primary_key:
            keys.append([f.column])
    for together in meta.unique_together:
        keys.append([_column(meta, name) for name in together])
    for constraint in meta.constraints:
        if (
            isinstance(constraint, models.UniqueConstraint)
            and constraint.fields
            and constraint.condition is None
            and not constraint.expressions
        ):
            keys.append([_column(meta, name) for name in constraint.fields])
    adapters: dict[int, Callable[[Any], Any]] = {}
    for index, f in enumerate(fields):
        if f.get_internal_type() == "DurationField":  # SQLite keeps microseconds as an integer
            adapters[index] = lambda v: None if v is None else timedelta(microseconds=int(v))
    return TableSpec(model, meta.db_table, columns, meta.pk.column, keys, adapters)


def plan() -> list[TableSpec]:
    return [table_spec(m) for m in copy_models()]


# --- counting and validation --------------------------------------------------------------------


def _q(conn: BaseDatabaseWrapper, name: str) -> str:
    return conn.ops.quote_name(name)


def count_rows(alias: str, table: str) -> int | None:
    conn = connections[alias]
    if table not in _existing_tables(alias):
        return None
    with conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {_q(conn, table)}")
        return int(cur.fetchone()[0])


def _existing_tables(alias: str, refresh: bool = False) -> set[str]:
    if refresh or alias not in _TABLES_CACHE:
        _TABLES_CACHE[alias] = set(connections[alias].introspection.table_names())
    return _TABLES_CACHE[alias]


def compare_counts(specs: list[TableSpec], target_available: bool = True) -> list[CountRow]:
    _existing_tables(SOURCE, refresh=True)
    if target_available:
        _existing_tables(TARGET, refresh=True)
    rows = []
    for spec in specs:
        source = count_rows(SOURCE, spec.table) or 0
        target = count_rows(TARGET, spec.table) if target_available else None
        rows.append(CountRow(spec.table, source, target))
    return rows


# --- the copy -----------------------------------------------------------------------------------


def migrate_schema() -> None:
    """Apply Django's migrations to the target (a no-op when they already are)."""
    call_command("migrate", database=TARGET, interactive=False, verbosity=0)
    _existing_tables(TARGET, refresh=True)
    # Batches commit without waiting for the WAL flush: a crash can lose the last batches, and
    # the re-run that follows any interruption copies them again. Validation runs at the end.
    with connections[TARGET].cursor() as cur:
        cur.execute("SET synchronous_commit TO OFF")


def _source_rows(spec: TableSpec, batch_size: int) -> Iterator[list[tuple[Any, ...]]]:
    conn = connections[SOURCE]
    cols = ", ".join(_q(conn, c) for c in spec.columns)
    sql = f"SELECT {cols} FROM {_q(conn, spec.table)} ORDER BY {_q(conn, spec.pk)}"
    with conn.cursor() as cur:
        cur.execute(sql)
        while True:
            rows = cur.fetchmany(batch_size)
            if not rows:
                return
            if spec.adapters:
                rows = [_adapt(row, spec.adapters) for row in rows]
            yield rows


def _adapt(row: tuple[Any, ...], adapters: dict[int, Callable[[Any], Any]]) -> tuple[Any, ...]:
    values = list(row)
    for index, adapt in adapters.items():
        values[index] = adapt(values[index])
    return tuple(values)


def _stage_name(spec: TableSpec) -> str:
    return f"_migrate_stage_{spec.table}"[:63]


def _create_stage(spec: TableSpec) -> None:
    conn = connections[TARGET]
    stage, table = _q(conn, _stage_name(spec)), _q(conn, spec.table)
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {stage}")
        # ON COMMIT DELETE ROWS: every batch transaction leaves the stage empty.
        cur.execute(f"CREATE TEMPORARY TABLE {stage} (LIKE {table}) ON COMMIT DELETE ROWS")


def _drop_stage(spec: TableSpec) -> None:
    conn = connections[TARGET]
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {_q(conn, _stage_name(spec))}")


def _check_conflicts(cur: Any, spec: TableSpec) -> None:
    """Stop when a staged row's key exists in the target with different content."""
    conn = connections[TARGET]
    stage, table = _q(conn, _stage_name(spec)), _q(conn, spec.table)
    all_s = ", ".join(f"s.{_q(conn, c)}" for c in spec.columns)
    all_t = ", ".join(f"t.{_q(conn, c)}" for c in spec.columns)
    for key in spec.unique_keys:
        on = " AND ".join(f"s.{_q(conn, c)} = t.{_q(conn, c)}" for c in key)
        keys = ", ".join(f"s.{_q(conn, c)}" for c in key)
        cur.execute(
            f"SELECT {keys} FROM {stage} s JOIN {table} t ON {on} "
            f"WHERE ROW({all_s}) IS DISTINCT FROM ROW({all_t}) LIMIT 1"
        )
        found = cur.fetchone()
        if found is not None:
            where = ", ".join(f"{c}={v!r}" for c, v in zip(key, found, strict=True))
            raise ConflictError(
                f"table {spec.table}: the target already holds a different row with {where}; "
                "this PostgreSQL database holds another control plane's data. Refusing to merge: "
                "migrate into an empty database (or the one a previous run of this same store "
                "filled)"
            )


def _copy_batch(
    spec: TableSpec, rows: list[tuple[Any, ...]], check: bool, insert: bool, direct: bool = False
) -> int:
    """Stage one batch, check it, insert what is missing; returns rows inserted.

    `direct`: the table was empty when this run started, so nothing can clash: COPY straight
    into it (the fast path of a first copy).
    """
    conn = connections[TARGET]
    stage, table = _q(conn, _stage_name(spec)), _q(conn, spec.table)
    cols = ", ".join(_q(conn, c) for c in spec.columns)
    with transaction.atomic(using=TARGET), conn.cursor() as wrapper:
        cur = wrapper.cursor  # the psycopg cursor: COPY is not in Django's cursor API
        if direct:
            with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return len(rows)
        with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if check:
            _check_conflicts(cur, spec)
        if not insert:
            transaction.set_rollback(True, using=TARGET)
            return 0
        cur.execute(
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} "
            f"ORDER BY {_q(conn, spec.pk)} ON CONFLICT DO NOTHING"
        )
        return max(cur.rowcount, 0)


def preflight(specs: list[TableSpec], batch_size: int) -> None:
    """Before writing any row: compare the first batch of every non-empty target table.

    A database that holds another control plane's data conflicts on its first rows (ids start
    at 1 on both sides), so this stops such a run before it merges anything.
    """
    for spec in specs:
        if not count_rows(TARGET, spec.table):
            continue
        _create_stage(spec)
        try:
            for rows in _source_rows(spec, batch_size):
                _copy_batch(spec, rows, check=True, insert=False)
                break
        finally:
            _drop_stage(spec)


ProgressFn = Callable[[TableResult, int], None]


# --- secondary indexes of big tables are built after their rows are in -----------------------

# Building an index once over all rows is several times cheaper than updating it row by row.
# A table this big that is empty when the run starts gets its secondary indexes (those not
# backing a primary key or unique constraint) dropped and rebuilt after its rows. The definitions
# are recorded in DEFERRED_INDEXES first, in the same transaction, so a run interrupted in between
# rebuilds them when it starts again (restore_deferred_indexes, before anything else).
DEFER_INDEXES_FROM_ROWS = 50_000
DEFERRED_INDEXES = "autonomy_migrate_deferred_index"


def _secondary_indexes(cur: Any, table: str) -> list[tuple[str, str]]:
    cur.execute(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i "
        "WHERE i.schemaname = current_schema() AND i.tablename = %s AND NOT EXISTS ("
        "  SELECT 1 FROM pg_constraint c"
        "  WHERE c.conindid = format('%%I.%%I', i.schemaname, i.indexname)::regclass)",
        [table],
    )
    return [(name, definition) for name, definition in cur.fetchall()]


def _drop_secondary_indexes(spec: TableSpec) -> None:
    conn = connections[TARGET]
    with transaction.atomic(using=TARGET), conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {DEFERRED_INDEXES} "
            "(name text PRIMARY KEY, tablename text NOT NULL, definition text NOT NULL)"
        )
        for name, definition in _secondary_indexes(cur, spec.table):
            cur.execute(
                f"INSERT INTO {DEFERRED_INDEXES} VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [name, spec.table, definition],
            )
            cur.execute(f"DROP INDEX {_q(conn, name)}")


def restore_deferred_indexes(table: str | None = None) -> int:
    """Rebuild the recorded secondary indexes (all, or one table's); returns how many."""
    conn = connections[TARGET]
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", [DEFERRED_INDEXES])
        if cur.fetchone()[0] is None:
            return 0
    with transaction.atomic(using=TARGET), conn.cursor() as cur:
        where, params = ("WHERE tablename = %s", [table]) if table else ("", [])
        cur.execute(f"SELECT name, definition FROM {DEFERRED_INDEXES} {where}", params)
        found = cur.fetchall()
        for _name, definition in found:
            cur.execute(
                definition.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
                .replace("CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX IF NOT EXISTS ", 1)
                # a partitioned table's index (events): built on every partition again
                .replace(" ON ONLY ", " ON ", 1)
            )
        cur.execute(f"DELETE FROM {DEFERRED_INDEXES} {where}", params)
        cur.execute(f"SELECT COUNT(*) FROM {DEFERRED_INDEXES}")
        if cur.fetchone()[0] == 0:
            cur.execute(f"DROP TABLE {DEFERRED_INDEXES}")
    return len(found)


def copy_table(
    spec: TableSpec, batch_size: int, source_rows: int, progress: ProgressFn | None = None
) -> TableResult:
    result = TableResult(spec.table, source_rows)
    # Rows can only clash with rows this run did not write: check batches only when the target
    # table held rows before the run (a re-run, or a resumed interrupted run).
    check = bool(count_rows(TARGET, spec.table))
    defer = not check and source_rows >= DEFER_INDEXES_FROM_ROWS
    if spec.table == "events_event":
        make_event_days()
    if defer:
        _drop_secondary_indexes(spec)
    started = time.monotonic()
    done = 0
    _create_stage(spec)
    try:
        for rows in _source_rows(spec, batch_size):
            inserted = _copy_batch(spec, rows, check=check, insert=True, direct=not check)
            done += len(rows)
            result.inserted += inserted
            result.already_present += len(rows) - inserted
            result.seconds = time.monotonic() - started
            if progress is not None:
                progress(result, done)
    finally:
        _drop_stage(spec)
    if defer:
        restore_deferred_indexes(spec.table)
    result.seconds = time.monotonic() - started
    return result


def make_event_days() -> list[str]:
    """The target's events table is partitioned by day (events/partitions.py): its partitions
    cover everything up to a few days after the target's migration. A source event that arrived
    later than that (a server whose clock ran ahead) needs its day's partition before the copy;
    make each such day's. Returns the partitions made."""
    from events import partitions

    with connections[TARGET].cursor() as cur:
        if not partitions.is_partitioned(cur):
            return []
        ends = [p.ends for p in partitions.partitions(cur) if p.ends is not None]
    if not ends:
        return []
    covered = max(ends).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    with connections[SOURCE].cursor() as cur:
        cur.execute(
            "SELECT DISTINCT substr(received_at, 1, 10) FROM events_event WHERE received_at >= %s",
            [covered],
        )
        days = sorted(datetime.strptime(row[0], "%Y-%m-%d").date() for row in cur.fetchall())
    return [partitions.day_name(day) for day in days if partitions.create_day(day, using=TARGET)]


def reset_sequences(specs: list[TableSpec]) -> None:
    conn = connections[TARGET]
    statements = conn.ops.sequence_reset_sql(no_style(), [s.model for s in specs])
    with conn.cursor() as cur:
        for sql in statements:
            cur.execute(sql)


def record_cutover(source: Path, rows_copied: int, counts: list[CountRow]) -> Any:
    from orchestrator_site import __version__
    from orchestrator_site.models import HACutoverAt

    return HACutoverAt.objects.using(TARGET).create(
        completed_at=datetime.now(UTC),
        source=str(source),
        rows_copied=rows_copied,
        table_counts={row.table: row.source for row in counts},
        version=__version__,
    )


def last_cutover() -> Any:
    from orchestrator_site.models import HACutoverAt

    if HACutoverAt._meta.db_table not in _existing_tables(TARGET):
        return None
    return HACutoverAt.objects.using(TARGET).order_by("-completed_at").first()


def source_snapshot() -> Any:
    """One read transaction on the source for the whole run: a consistent view of every table,
    even while a `serve` still writes to the store."""
    return transaction.atomic(using=SOURCE)


def copy_fleet_view(batch_size: int) -> int:
    """The fleet view's tables on the target, after the rows are copied: every node of the
    source's `FleetNode` upserted (its last_seen outlives pruned events, so it is copied, not
    recomputed; a re-run takes the newer values), then each node's newest ack per channel
    rebuilt from the target's acks (`releases.services.fleet_acks_refresh`). Returns the nodes."""
    from releases.models import FleetNode
    from releases.services import fleet_acks_refresh

    conn = connections[TARGET]
    table = _q(conn, FleetNode._meta.db_table)
    node, seen, heard = _q(conn, "node_id"), _q(conn, "last_seen"), _q(conn, "last_heard")
    sql = (
        f"INSERT INTO {table} ({node}, {seen}, {heard}) VALUES (%s, %s, %s) "
        f"ON CONFLICT ({node}) DO UPDATE SET {seen} = excluded.{seen}, "
        f"{heard} = excluded.{heard}"
    )
    rows = (
        FleetNode.objects.using(SOURCE)
        .order_by("node_id")
        .values_list("node_id", "last_seen", "last_heard")
        .iterator(chunk_size=batch_size)
    )
    nodes = 0
    batch: list[tuple[Any, ...]] = []
    with transaction.atomic(using=TARGET):
        with conn.cursor() as cur:
            for row in rows:
                batch.append(row)
                if len(batch) >= batch_size:
                    cur.executemany(sql, batch)
                    nodes += len(batch)
                    batch = []
            if batch:
                cur.executemany(sql, batch)
                nodes += len(batch)
        fleet_acks_refresh(node_ids=None, using=TARGET)
    return nodes
