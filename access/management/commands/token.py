"""`autonomy-orchestrator token create|list|revoke` (API.md §6)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from access.management.commands._store import add_store_arguments, open_store
from access.selectors import token_list
from access.services import TokenError, _iso, parse_span, token_create, token_revoke
from core.auth import ROLE_CHOICES


class Command(BaseCommand):
    help = "Create, list and revoke the bearer tokens of the API (stored only as hashes)."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_store_arguments(parser)
        actions = parser.add_subparsers(dest="action", required=True, metavar="create|list|revoke")
        create = actions.add_parser(
            "create", help="create a token and print it once (alone on the last line)"
        )
        create.add_argument("--name", required=True, help="a unique name (shown in the audit log)")
        create.add_argument("--role", required=True, help=" | ".join(ROLE_CHOICES))
        create.add_argument("--node-id", default=None, help="the node a node token acts for")
        create.add_argument(
            "--expires", default=None, help="lifetime, e.g. 90d, 2w, 12h (default: never)"
        )
        add_store_arguments(create)
        listing = actions.add_parser("list", help="names, roles, created/expires/last used")
        add_store_arguments(listing)
        revoke = actions.add_parser("revoke", help="revoke a token by name")
        revoke.add_argument("name")
        add_store_arguments(revoke)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "create":
                # Check the input before touching the store.
                expires = parse_span(options["expires"]) if options["expires"] else None
                open_store(options["data_dir"])
                token, secret = token_create(
                    name=options["name"],
                    role=options["role"],
                    node_id=options["node_id"],
                    expires=expires,
                )
                where = f" for node {token.node_id}" if token.node_id else ""
                until = f", expires {_iso(token.expires_at)}" if token.expires_at else ""
                self.stdout.write(f"created token {token.name!r} ({token.role}{where}{until}).")
                self.stdout.write(
                    "It is shown only now; send it as `Authorization: Bearer <token>`:"
                )
                self.stdout.write(secret)
            elif action == "list":
                open_store(options["data_dir"])
                self._list()
            else:
                open_store(options["data_dir"])
                token = token_revoke(name=options["name"])
                self.stdout.write(f"revoked token {token.name!r} at {_iso(token.revoked_at)}")
        except TokenError as exc:
            raise CommandError(str(exc)) from None

    def _list(self) -> None:
        rows = [("NAME", "ROLE", "NODE", "CREATED", "EXPIRES", "LAST USED", "REVOKED")]
        for token in token_list():
            rows.append(
                (
                    token.name,
                    token.role,
                    token.node_id or "-",
                    _iso(token.created_at) or "-",
                    _iso(token.expires_at) or "never",
                    _iso(token.last_used_at) or "never",
                    _iso(token.revoked_at) or "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            )
