"""The store for `token` and `audit`: the one `serve` uses (--data-dir / --postgres-url, read by
settings through orchestrator_site.cli before Django starts), created and migrated if needed."""

from __future__ import annotations

import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError, CommandParser
from django.db import DatabaseError

from core.datadir import DataDirError, prepare_data_dir, private_umask
from core.flags import env_default


def add_store_arguments(parser: CommandParser) -> None:
    parser.add_argument(
        "--data-dir",
        default=env_default("data-dir") or str(settings.DATA_DIR),
        help="the SQLite data dir (same as `serve --data-dir`; AUTONOMY_DATA_DIR)",
    )
    parser.add_argument(
        "--postgres-url",
        default=env_default("postgres-url") or "",
        help="use this PostgreSQL store instead (same as `serve --postgres-url`)",
    )


def open_store(data_dir: str) -> None:
    """Create the data dir (0700) when serving from SQLite, and apply migrations."""
    try:
        if not settings.POSTGRES_URL:
            private_umask()
            for warning in prepare_data_dir(Path(data_dir).expanduser()):
                print(f"warning: {warning}", file=sys.stderr)
        call_command("migrate", interactive=False, verbosity=0)
    except DataDirError as exc:
        raise CommandError(str(exc)) from None
    except DatabaseError as exc:
        raise CommandError(f"cannot open the store: {exc}") from None
