"""Flags that also read `AUTONOMY_<FLAG_IN_UPPER_SNAKE>` from the environment; the flag wins."""

from __future__ import annotations

import os
from typing import Any


def env_name(flag: str) -> str:
    return "AUTONOMY_" + flag.lstrip("-").upper().replace("-", "_")


def env_default(flag: str, default: Any = None) -> Any:
    return os.environ.get(env_name(flag), default)


def env_list(flag: str) -> list[str]:
    """A repeatable flag's env default: comma- or whitespace-separated."""
    raw = os.environ.get(env_name(flag), "")
    return [item for item in raw.replace(",", " ").split() if item]


def env_bool(flag: str, default: bool = False) -> bool:
    raw = os.environ.get(env_name(flag))
    if raw is None:
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")
