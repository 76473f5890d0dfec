"""Where the control plane keeps its files. Imported by settings and the CLI: no Django here."""

from __future__ import annotations

import os
from pathlib import Path

DB_FILENAME = "orchestrator.sqlite3"


def default_data_dir() -> Path:
    """`$XDG_CACHE_HOME/autonomyops/orchestrator`, or `~/.cache/autonomyops/orchestrator`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "autonomyops" / "orchestrator"


def data_dir_from_env() -> Path:
    value = os.environ.get("AUTONOMY_DATA_DIR", "").strip()
    return Path(value).expanduser() if value else default_data_dir()


def sqlite_path(data_dir: Path) -> Path:
    return data_dir / DB_FILENAME
