"""Database threads for the fast path: a small reader pool with persistent per-thread connections.

Each pool thread keeps its own Django connection open for the life of the process (Django only
closes connections around requests it handles itself, and these threads never handle one). On
PostgreSQL a connection that broke (server restart, network) is closed and the call retried once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection

logger = logging.getLogger("orchestrator.db")

T = TypeVar("T")

READER_THREADS = 4

_readers: ThreadPoolExecutor | None = None


def readers() -> ThreadPoolExecutor:
    global _readers
    if _readers is None:
        _readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="db-read")
    return _readers


def reset_broken_connection() -> bool:
    """Close this thread's connection if it is unusable (PostgreSQL); True when it was."""
    if connection.vendor == "sqlite":
        return False
    try:
        usable = connection.connection is None or connection.is_usable()
    except DatabaseError:
        usable = False
    if not usable:
        logger.warning("database connection broke; reconnecting")
        with contextlib.suppress(DatabaseError):
            connection.close()
        return True
    return False


def call_with_reconnect(fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in this thread; on PostgreSQL retry once on a fresh connection if it broke."""
    try:
        return fn(*args)
    except (InterfaceError, OperationalError):
        if not reset_broken_connection():
            raise
    return fn(*args)


async def run_read(fn: Callable[..., T], *args: Any) -> T:
    """Run a read-only `fn(*args)` on the reader pool and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(readers(), call_with_reconnect, fn, *args)
