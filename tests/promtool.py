"""`promtool check metrics` on an exposition: the Prometheus project's own parser and linter."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def assert_promtool_accepts(text: str) -> None:
    """Fail unless promtool accepts `text`; skip where promtool is missing (never under CI)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool (Debian package prometheus) is required in CI")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr
