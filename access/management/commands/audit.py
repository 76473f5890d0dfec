"""`autonomy-orchestrator audit export --since DURATION|RFC3339`: JSON lines to stdout."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from access.management.commands._store import add_store_arguments, open_store
from access.selectors import audit_since
from access.services import TokenError, audit_dict, parse_since


class Command(BaseCommand):
    help = "Export the audit log as JSON lines (oldest first)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_store_arguments(parser)
        actions = parser.add_subparsers(dest="action", required=True, metavar="export")
        export = actions.add_parser("export", help="print records as JSON lines, oldest first")
        export.add_argument(
            "--since",
            default=None,
            help="a duration back from now (24h, 7d) or an RFC 3339 time; default: everything",
        )
        add_store_arguments(export)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            since = parse_since(options["since"]) if options["since"] else None
        except TokenError as exc:
            raise CommandError(f"--since: {exc}") from None
        open_store(options["data_dir"])
        for record in audit_since(since).iterator(chunk_size=1000):
            self.stdout.write(json.dumps(audit_dict(record), sort_keys=True))
