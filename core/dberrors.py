"""Map database failures onto the contract's answers: 503 (busy), 507 (disk full), fatal (corrupt),
400 (a NUL character, which PostgreSQL cannot store in text or jsonb), and 503 (unavailable: the
PostgreSQL store cannot be reached in time, the connection was lost, the database is read-only,
or a deadlock or serialization failure outlived its retries).

Used by the Django middleware and by the fast path, so both answer alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

logger = logging.getLogger("orchestrator.db")

BUSY = "busy"
FULL = "full"
CORRUPT = "corrupt"
NUL = "nul"
UNAVAILABLE = "unavailable"

RETRY_AFTER_SECONDS = 1

_BUSY_MARKERS = ("database is locked", "database table is locked", "database is busy")
_FULL_MARKERS = ("database or disk is full", "disk i/o error", "no space left on device")
# PostgreSQL (psycopg) refusing a NUL character: in a text parameter, and as \u0000 in jsonb.
_NUL_MARKERS = ("cannot contain nul (0x00)", "\\u0000 cannot be converted to text")
NUL_MESSAGE = "strings must not contain NUL (\\u0000) characters"
UNAVAILABLE_MESSAGE = "the database is unavailable; retry shortly"
# PostgreSQL SQLSTATEs (and classes) that a retry a moment later can succeed on.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08",)  # connection exception
_UNAVAILABLE_SQLSTATES = frozenset(
    {
        "25006",  # read_only_sql_transaction: a standby, or default_transaction_read_only
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down, in recovery)
    }
)
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # worth an immediate retry of the transaction
# psycopg/libpq messages without a SQLSTATE: the connection failed or was lost.
_LOST_MARKERS = (
    "server closed the connection",
    "connection is lost",
    "connection is closed",
    "connection already closed",
    "consuming input failed",
    "could not receive data from server",
    "could not send data to server",
    "no connection to the server",
    "connection refused",
    "connection failed",
    "connection timeout expired",
    "terminating connection",
    "the database system is",
    "ssl connection has been closed unexpectedly",
)
_UNAVAILABLE_MARKERS = (
    "couldn't get a connection after",  # psycopg_pool.PoolTimeout
    *_LOST_MARKERS,
    "read-only transaction",
    "deadlock detected",
    "could not serialize access",
)
_CORRUPT_MARKERS = (
    "database disk image is malformed",
    "file is not a database",
    "file is encrypted or is not a database",
)


def classify(exc: BaseException) -> str | None:
    """Return BUSY, FULL, CORRUPT, NUL, UNAVAILABLE or None for an exception raised by a
    database call."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if any(m in text for m in _CORRUPT_MARKERS):
            return CORRUPT
        if any(m in text for m in _FULL_MARKERS):
            return FULL
        if any(m in text for m in _BUSY_MARKERS):
            return BUSY
        if any(m in text for m in _NUL_MARKERS):
            return NUL
        if isinstance(current, OSError) and current.errno == 28:  # ENOSPC
            return FULL
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and (
            sqlstate in _UNAVAILABLE_SQLSTATES or sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES
        ):
            return UNAVAILABLE
        if any(m in text for m in _UNAVAILABLE_MARKERS):
            return UNAVAILABLE
        current = current.__cause__ or current.__context__
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_pool_timeout(exc: BaseException) -> bool:
    """No connection could be had from the pool in time (retrying at once only waits again)."""
    return any(
        type(e).__name__ == "PoolTimeout" or "couldn't get a connection after" in str(e).lower()
        for e in _chain(exc)
    )


_LOST_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def is_connection_lost(exc: BaseException) -> bool:
    """The connection broke under the call (server restart, failover, network): a retry on a new
    connection may succeed. The connection Django holds afterwards proves nothing: `atomic()`
    closes a broken one and its exit may already have taken a fresh one from the pool."""
    for e in _chain(exc):
        sqlstate = getattr(e, "sqlstate", None)
        if isinstance(sqlstate, str) and (sqlstate in _LOST_SQLSTATES or sqlstate[:2] == "08"):
            return True
        if sqlstate is None and any(m in str(e).lower() for m in _LOST_MARKERS):
            return True
    return False


def is_retryable_conflict(exc: BaseException) -> bool:
    """A deadlock or serialization failure: the transaction may simply be run again."""
    return any(getattr(e, "sqlstate", None) in RETRYABLE_SQLSTATES for e in _chain(exc))


def unavailable_error(exc: BaseException) -> Exception:
    """The contract's 503 (+ Retry-After) as an ApiError, for code paths that answer ApiErrors."""
    from core.errors import ApiError

    logger.warning(
        "database unavailable: %s", str(exc).strip().splitlines()[0] if str(exc) else exc
    )
    return ApiError(503, UNAVAILABLE_MESSAGE)


def die_corrupt(exc: BaseException) -> None:
    """Never serve from a corrupt store: log one clear line and end the process at once."""
    logger.critical(
        "the SQLite store is corrupt (%s); stopping. Restore the data dir from a backup.", exc
    )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # best effort before exiting
            handler.flush()
    sys.stderr.flush()
    os._exit(70)  # EX_SOFTWARE


def log_background_failure(log: logging.Logger, message: str, *args: object) -> None:
    """Log the exception being handled by a background thread (evaluator, webhook dispatcher,
    pruner, CRL sync): a busy or lost database (a restart, a failover; the thread retries on
    its next round) is one warning line, anything else an error with its traceback."""
    exc = sys.exc_info()[1]
    if exc is not None and classify(exc) in (BUSY, UNAVAILABLE):
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        log.warning(message + " (the database is busy or unavailable: %s)", *args, first)
    else:
        log.exception(message, *args)
