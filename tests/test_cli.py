"""The console script: --help, version, and flag errors (one line, non-zero exit)."""

from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.liveserver import cli


def test_help_lists_the_commands():
    result = cli("--help")
    assert result.returncode == 0
    for name in ("serve", "migrate", "version", "signing-key"):
        assert re.search(rf"^\s+{name}\s", result.stdout, re.M), result.stdout


def test_unknown_command_is_an_error():
    result = cli("frobnicate")
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr


def test_version_text_and_json():
    out = StringIO()
    call_command("version", stdout=out)
    assert out.getvalue().startswith("autonomy-orchestrator 0.1.0")
    result = cli("version", "--output", "json")
    assert result.returncode == 0
    info = json.loads(result.stdout)
    assert set(info) == {"version", "build_sha", "build_date", "tier", "platform"}
    assert info["version"] == "0.1.0"
    assert re.fullmatch(r"[a-z0-9]+/[a-z0-9]+", info["platform"])


def test_version_rejects_unknown_output():
    with pytest.raises(CommandError, match="--output must be 'text' or 'json'"):
        call_command("version", output="xml", stdout=StringIO())
