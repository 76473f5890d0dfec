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
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection
from prometheus_client import Counter

from core import dberrors, sharedstate

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
