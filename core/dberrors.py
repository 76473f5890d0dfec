"""Map database failures onto the contract's answers: 503 (busy), 507 (disk full), fatal (corrupt),
400 (a NUL character, which PostgreSQL cannot store in text or jsonb).

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

RETRY_AFTER_SECONDS = 1

_BUSY_MARKERS = ("database is locked", "database table is locked", "database is busy")
_FULL_MARKERS = ("database or disk is full", "disk i/o error", "no space left on device")
# PostgreSQL (psycopg) refusing a NUL character: in a text parameter, and as \u0000 in jsonb.
_NUL_MARKERS = ("cannot contain nul (0x00)", "\\u0000 cannot be converted to text")
NUL_MESSAGE = "strings must not contain NUL (\\u0000) characters"
_CORRUPT_MARKERS = (
    "database disk image is malformed",
    "file is not a database",
    "file is encrypted or is not a database",
)


def classify(exc: BaseException) -> str | None:
    """Return BUSY, FULL, CORRUPT, NUL or None for an exception raised by a database call."""
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
        current = current.__cause__ or current.__context__
    return None


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
