"""Database access for the fast path: a small reader pool with persistent per-thread connections,
and, on SQLite, one read-only connection used directly on the event loop thread.

Each pool thread keeps its own Django connection open for the life of the process (Django only
closes connections around requests it handles itself, and these threads never handle one). On
PostgreSQL a connection that broke (server restart, network) is closed and the call retried once.

Why reads on the loop thread: Python's sqlite3 releases the GIL around every row step, so a read
on a pool thread has to win the GIL back from the busy event loop once per row, and waits up to
the interpreter's switch interval each time. Measured with 32 connections on `GET /v1/events`
(100 rows): 4 pool threads 724 req/s at ~100 % CPU, 1 pool thread 350 req/s at 41 % CPU; the
same query inline on the loop is far faster (docs/performance.md). Indexed, LIMITed SQLite reads
take well under a millisecond and WAL readers never wait for the writer, so running them inline
holds the loop no longer than parsing a request body does.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection
from prometheus_client import Counter

from core import dberrors, sharedstate
from core.errors import ApiError

logger = logging.getLogger("orchestrator.db")

T = TypeVar("T")

READER_THREADS = 4

_readers: ThreadPoolExecutor | None = None


def readers() -> ThreadPoolExecutor:
    global _readers
    if _readers is None:
        _readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="db-read")
    return _readers


def reset_broken_connection(exc: BaseException | None = None) -> bool:
    """After `exc` failed a call (PostgreSQL): close this thread's connection if it is broken and
    say whether one retry on a fresh connection is worth it.

    Decided by the error first: after a lost connection `transaction.atomic()` closes it, and
    its exit may already have taken a fresh, healthy one from the pool, which proves nothing
    about the failed call. Never after a pool timeout: a retry would only wait as long again.
    """
    if connection.vendor == "sqlite":
        return False
    if exc is not None and dberrors.is_pool_timeout(exc):
        return False
    if exc is not None and dberrors.is_connection_lost(exc):
        usable = False
    else:
        try:
            usable = connection.connection is not None and connection.is_usable()
        except DatabaseError:
            usable = False
    if not usable:
        logger.warning("database connection broke; reconnecting")
        with contextlib.suppress(DatabaseError):
            connection.close()
        return True
    return False


def call_with_reconnect(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in this thread; on PostgreSQL retry once on a fresh connection if it broke.

    A store that stays unreachable answers the contract's 503 + Retry-After (an ApiError), never
    a 500, and never after more than about one pool timeout.
    """
    try:
        return fn(*args)
    except DatabaseError as exc:
        if not isinstance(exc, InterfaceError | OperationalError) or not reset_broken_connection(
            exc
        ):
            if dberrors.classify(exc) == dberrors.UNAVAILABLE:
                raise dberrors.unavailable_error(exc) from exc
            raise
    try:
        return fn(*args)
    except DatabaseError as exc:
        if dberrors.classify(exc) == dberrors.UNAVAILABLE:
            with contextlib.suppress(DatabaseError):
                connection.close()
            raise dberrors.unavailable_error(exc) from exc
        raise


async def run_read(fn: Callable[..., T], *args: Any) -> T:
    """Run a read-only `fn(*args)` on the reader pool and await its result (in the caller's
    context, so its log lines keep the request id, `core.requestid`)."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return await loop.run_in_executor(readers(), context.run, call_with_reconnect, fn, *args)


INLINE_CACHE_KIB = 64 * 1024

_inline: sqlite3.Connection | None = None
_inline_thread: int | None = None


def inline_sqlite() -> sqlite3.Connection | None:
    """A read-only sqlite3 connection to the store for the calling (event loop) thread.

    None when the store is not a SQLite file (PostgreSQL, or an in-memory test database): use
    `run_read` then. The connection is opened once, with the store's busy timeout, and
    `query_only` so it can never write. TEXT columns are returned as bytes.
    """
    global _inline, _inline_thread
    if _inline is not None and _inline_thread == threading.get_ident():
        return _inline
    settings_dict = connection.settings_dict
    name = str(settings_dict.get("NAME") or "")
    if settings_dict["ENGINE"] != "django.db.backends.sqlite3" or not name or "memory" in name:
        return None
    timeout = float(settings_dict.get("OPTIONS", {}).get("timeout", 5.0))
    conn = sqlite3.connect(name, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    # A 64 MiB page cache (SQLite's default is 2 MiB) keeps the recent pages of the list query's
    # index and rows in memory: ~35 % less CPU per 100-row page at 300k+ events. Not mmap: a
    # mapped file turns an I/O error into SIGBUS instead of a clean error answer.
    conn.execute(f"PRAGMA cache_size=-{INLINE_CACHE_KIB}")
    conn.text_factory = bytes  # TEXT comes back as the stored UTF-8 bytes: no decode/encode
    _inline, _inline_thread = conn, threading.get_ident()
    return conn


# --- the writers' long statements on SQLite ---------------------------------------------------


def execute(cursor: Any, sql: str, params: Any) -> None:
    """`cursor.execute(sql, params)` (a Django cursor) for the writers' multi-row statements.

    On SQLite Django rewrites every `%s` to `?` with a regular expression on each call: ~130 of
    the ~500 us of a 250-row insert of events, in the writer's write turn. The same rewrite is a
    plain `str.replace` when every `%` of the text starts a `%s` (no `%%`, no literal `%`), as
    in these statements; anything else takes Django's path. Errors come out as Django's
    (`DatabaseError`...), as they do from `cursor.execute`."""
    if connection.vendor != "sqlite" or sql.count("%") != sql.count("%s"):
        cursor.execute(sql, params)
        return
    connection.validate_no_broken_transaction()
    with connection.wrap_database_errors:
        sqlite3.Cursor.execute(cursor.cursor, sql.replace("%s", "?"), params)


# --- one writer at a time on SQLite ----------------------------------------------------------

_write_turn = threading.Lock()
_turn_held = threading.local()

# How busy the one write lock of a SQLite store is (docs/metrics.md; summed over `--workers`).
WRITE_TURN_SECONDS = Counter(
    "cp_store_write_turn_seconds_total",
    "SQLite: seconds the writer threads spent waiting for the write turn and holding it.",
    ["phase"],
)
WRITE_TURNS = Counter("cp_store_write_turns_total", "SQLite: write turns taken by writer threads.")
_TURN_WAIT, _TURN_HELD = WRITE_TURN_SECONDS.labels("wait"), WRITE_TURN_SECONDS.labels("held")


@contextlib.contextmanager
def write_turn() -> Any:
    """Hold this around a write transaction of a writer thread (events, acks).

    SQLite has one write lock per database; two threads of one process that both write only
    queue on it through the busy handler, which sleeps up to 100 ms between tries (seconds of
    p99 under load). Taking turns on an in-process lock first hands the database over as soon
    as the other commits. Does nothing on PostgreSQL (row locks; replicas write concurrently).
    """
    if connection.vendor != "sqlite" or getattr(_turn_held, "held", False):
        yield  # PostgreSQL, or this thread has the turn already (a writer holds it for a group)
        return
    _turn_held.held = True
    asked = time.perf_counter()
    try:
        shared = sharedstate.state()
        # serve --workers: the writers of every worker take turns
        lock: contextlib.AbstractContextManager[Any] = (
            shared.write_lock() if shared is not None else _write_turn
        )
        with lock:
            got = time.perf_counter()
            try:
                yield
            finally:
                _TURN_WAIT.inc(got - asked)
                _TURN_HELD.inc(time.perf_counter() - got)
                WRITE_TURNS.inc()
    finally:
        _turn_held.held = False
        if _sync_after_turn:
            _make_durable()


# --- the WAL synced after the turn, not inside it (SQLite under `serve`) ---------------------
#
# With `synchronous=FULL` every COMMIT fsyncs the WAL while its writer still holds the store's
# one write turn, so the other workers' writers wait for the disk too. Under `serve` a writer
# thread's connection commits with `synchronous=NORMAL` (the WAL is written, not synced) and the
# thread fsyncs the WAL itself once its turn is over, before it answers anyone: the next writer
# writes while this one's fsync runs. A 2xx still means the data is on disk. What another
# connection reads in the ~millisecond between the COMMIT and the fsync may be lost if the
# machine loses power then (never after a crash of the process: the page cache keeps it); any
# write made after reading it lies later in the same WAL, so it can never survive without it.

_sync_after_turn = False
_durable = threading.local()

WAL_SYNCS = Counter(
    "cp_store_wal_syncs_total",
    "SQLite under serve: fsyncs of the WAL made by writer threads after their write turn.",
)
WAL_SYNC_SECONDS = Counter(
    "cp_store_wal_sync_seconds_total",
    "SQLite under serve: seconds writer threads spent in those fsyncs (outside the write turn).",
)


def sync_after_turn(enabled: bool = True) -> None:
    """`serve` on a SQLite file: writer threads fsync the WAL after their write turn, not in
    their COMMIT (`answer_when_durable` holds their answers until then)."""
    global _sync_after_turn
    _sync_after_turn = enabled


def answer_when_durable(future: Future[Any], outcome: object) -> None:
    """Resolve `future` with `outcome` (an exception: raised by it) once what this thread
    committed is on disk: at the end of its write turn when the WAL is synced after the turn,
    at once otherwise."""
    if _sync_after_turn and getattr(_turn_held, "held", False):
        pending: list[tuple[Future[Any], object]] | None = getattr(_durable, "pending", None)
        if pending is None:
            pending = _durable.pending = []
        pending.append((future, outcome))
        return
    _settle(future, outcome)


def _settle(future: Future[Any], outcome: object) -> None:
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _make_durable() -> None:
    """After a turn: fsync the WAL if this thread's connection wrote since the last sync,
    then answer what waited for it; a failed fsync answers 507 (disk full) or 503."""
    pending: list[tuple[Future[Any], object]] = getattr(_durable, "pending", None) or []
    _durable.pending = None
    failure: ApiError | None = None
    try:
        _sync_wal()
    except Exception as exc:  # never leave a caller waiting, never answer it as stored
        logger.error("the store's WAL could not be synced to disk: %s", exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            failure = ApiError(507, "the disk holding the database is full; send it again later")
        else:
            failure = ApiError(503, dberrors.UNAVAILABLE_MESSAGE)
    for future, outcome in pending:
        if failure is not None and not isinstance(outcome, BaseException):
            outcome = failure
        _settle(future, outcome)


def _sync_wal() -> None:
    raw = connection.connection
    changes = raw.total_changes if raw is not None else None
    if raw is getattr(_durable, "raw", None) and changes == getattr(_durable, "changes", None):
        return  # nothing written on this connection since its last sync
    path = f"{connection.settings_dict['NAME']}-wal"
    fd: int | None = getattr(_durable, "fd", None)
    if fd is not None and os.fstat(fd).st_nlink == 0:  # the WAL was removed (and checkpointed)
        os.close(fd)
        fd = _durable.fd = None
    if fd is None:
        try:
            fd = _durable.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None  # not a WAL store (or no WAL yet): its commits sync themselves
    if fd is not None:
        started = time.perf_counter()
        os.fdatasync(fd)
        WAL_SYNC_SECONDS.inc(time.perf_counter() - started)
        WAL_SYNCS.inc()
    if raw is not None and raw is not getattr(_durable, "raw", None) and not raw.in_transaction:
        # A new connection: its first turn committed with SQLite's own fsync; from now on its
        # COMMITs leave that to this thread, if the store is a WAL file.
        if fd is not None and raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            raw.execute("PRAGMA synchronous=NORMAL")
        _durable.raw = raw
    _durable.changes = raw.total_changes if raw is not None else None
