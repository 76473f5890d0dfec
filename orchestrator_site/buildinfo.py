"""Version and build facts for `autonomy-orchestrator version`."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from orchestrator_site import __version__

TIER = "self-hosted"

_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
    "armv7l": "arm",
}


def platform_string() -> str:
    """`linux/amd64` style, as Go would print GOOS/GOARCH."""
    machine = platform.machine().lower()
    return f"{platform.system().lower()}/{_ARCH.get(machine, machine or 'unknown')}"


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            env={**os.environ, "TZ": "UTC"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def build_info() -> dict[str, str]:
    """Build SHA/date come from AUTONOMY_BUILD_SHA/AUTONOMY_BUILD_DATE (set by packagers), else
    from the git checkout the code runs from, else "unknown"."""
    sha = os.environ.get("AUTONOMY_BUILD_SHA") or _git("rev-parse", "HEAD") or "unknown"
    date = (
        os.environ.get("AUTONOMY_BUILD_DATE")
        or _git("log", "-1", "--format=%cd", "--date=format-local:%Y-%m-%dT%H:%M:%SZ")
        or "unknown"
    )
    return {
        "version": __version__,
        "build_sha": sha,
        "build_date": date,
        "tier": TIER,
        "platform": platform_string(),
    }
