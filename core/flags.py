"""Flags that also read `AUTONOMY_<FLAG_IN_UPPER_SNAKE>` from the environment; the flag wins."""

from __future__ import annotations

import os
import re
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


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """A Go-style duration (`30s`, `5m`, `1h30m`, `500ms`; `0` alone) in seconds; `d` (24 h)
    is accepted too (`30d`), for retention periods.

    ValueError (with a readable message) for anything else.
    """
    value = (text or "").strip()
    if value == "0":
        return 0.0
    if not value or _DURATION.sub("", value) != "":
        raise ValueError(f"{text!r} is not a duration; write it like 30s, 5m, 1h, 7d or 0")
    return sum(float(num) * _DURATION_UNITS[unit] for num, unit in _DURATION.findall(value))
