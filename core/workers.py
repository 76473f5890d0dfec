"""Which serving process this is, under `serve --workers N` (docs/serve.md#workers).

`serve --workers N` runs N serving processes (workers) that share one listening port
(SO_REUSEPORT: the kernel spreads new connections over them) and one SQLite store. Worker 0 is
the primary: it runs the background tasks a store has once (rollout evaluator, webhook
dispatcher, events pruner, CRL sync, leader row, the metrics listener); every worker serves the
API. With one worker (the default) nothing here changes anything: `count()` is 1, `index()` 0
and `directory()` None.

`directory()` is where the workers of one `serve` meet: a 0700 directory in the data dir that
holds the shared state file (`core.sharedstate`), the cross-process write lock and each
worker's metrics snapshot (`core.metricsmerge`). Imports nothing of this repository.
"""

from __future__ import annotations

from pathlib import Path

_index = 0
_count = 1
_directory: Path | None = None


def configure(*, index: int, count: int, directory: Path | None) -> None:
    """Set by `serve` in each worker as it starts (and never again in that process)."""
    global _index, _count, _directory
    _index, _count, _directory = index, count, directory


def index() -> int:
    """This worker's index: 0 (the primary) .. count() - 1."""
    return _index


def count() -> int:
    """How many workers this `serve` runs (1 without --workers)."""
    return _count


def is_primary() -> bool:
    return _index == 0


def directory() -> Path | None:
    """The workers' shared directory, or None with one worker."""
    return _directory if _count > 1 else None
