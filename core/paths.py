"""Where the control plane keeps its files. Imported by settings and the CLI: no Django here.

The default data dir is the XDG *state* dir (`$XDG_STATE_HOME/autonomyops/orchestrator`, else
`~/.local/state/autonomyops/orchestrator`): the store, its keys and its session secret are state
that must survive, not a cache a cleaner may delete. Earlier versions defaulted to the cache dir;
when that old default holds a store and the new one does not exist yet, the old one is used (no
data is moved behind the operator's back) and `legacy_data_dir_notice()` says how to move it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

DB_FILENAME = "orchestrator.sqlite3"
_APP = Path("autonomyops") / "orchestrator"


def state_data_dir() -> Path:
    """`$XDG_STATE_HOME/autonomyops/orchestrator`, or `~/.local/state/autonomyops/orchestrator`."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / _APP


def legacy_data_dir() -> Path:
    """The old default: `$XDG_CACHE_HOME/…`, or `~/.cache/autonomyops/orchestrator`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / _APP


def _uses_legacy() -> bool:
    return not state_data_dir().exists() and (legacy_data_dir() / DB_FILENAME).exists()


def default_data_dir() -> Path:
    """The state dir; the old cache-dir default only while it holds a store and the state dir
    does not exist (see legacy_data_dir_notice)."""
    return legacy_data_dir() if _uses_legacy() else state_data_dir()


def legacy_data_dir_notice(data_dir: Path) -> str | None:
    """One line when DATA_DIR is the old default in use, else None."""
    if data_dir != legacy_data_dir() or not _uses_legacy():
        return None
    old, new = legacy_data_dir(), state_data_dir()
    return (
        f"data dir: using {old}, the default of earlier versions; the default is now {new}: "
        f"stop the server, then `mkdir -p {shlex.quote(str(new.parent))} && "
        f"mv {shlex.quote(str(old))} {shlex.quote(str(new))}` (or pass --data-dir {old})"
    )


def data_dir_from_env() -> Path:
    value = os.environ.get("AUTONOMY_DATA_DIR", "").strip()
    return Path(value).expanduser() if value else default_data_dir()


def sqlite_path(data_dir: Path) -> Path:
    return data_dir / DB_FILENAME
