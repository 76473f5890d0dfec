"""`autonomy-orchestrator signing-key [rotate]`: print the public key (PEM) that signs rollout
specs and poll answers, or rotate the keyring (docs/trust.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from core.flags import env_default
from rollouts.signing import SigningKeyError, key_path, load_existing, load_or_create


class Command(BaseCommand):
    help = (
        "Print the Ed25519 public key (PEM) that signs rollout plan specs and poll answers, for "
        "nodes to pin; `signing-key rotate` makes a new active key and keeps the old ones "
        "(retired) for verification. The keyring is --signing-key-file, else rollout-signing.key "
        "in the data dir (mode 0600), also when serving from PostgreSQL; `serve` creates it "
        "when it first starts. A data dir without a key is an error (exit 1), unless --create "
        "is given."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "action",
            nargs="?",
            choices=("show", "rotate"),
            default="show",
            help="show (default): print the active public key; rotate: make a new active key "
            "(the running servers pick it up within a second; audited)",
        )
        parser.add_argument(
            "--data-dir",
            metavar="DIR",
            default=env_default("data-dir") or str(settings.DATA_DIR),
            help="the data dir holding the signing key, as given to `serve --data-dir` "
            "(default $XDG_STATE_HOME/autonomyops/orchestrator; AUTONOMY_DATA_DIR)",
        )
        parser.add_argument(
            "--signing-key-file",
            metavar="FILE",
            default=env_default("signing-key-file", ""),
            help="the keyring, as given to `serve --signing-key-file` (default "
            "rollout-signing.key in --data-dir; AUTONOMY_SIGNING_KEY_FILE)",
        )
        parser.add_argument(
            "--postgres-url",
            metavar="URL",
            default="",
            help="the store `rotate` writes its audit record to, as given to `serve` (the key "
            "itself always lives in a file) (AUTONOMY_POSTGRES_URL)",
        )
        parser.add_argument(
            "--key-id", action="store_true", help="print the key id instead of the PEM"
        )
        parser.add_argument(
            "--create",
            action="store_true",
            help="create the key (and the data dir) when there is none yet, instead of failing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        data_dir = Path(options["data_dir"]).expanduser()
        key_file = str(options["signing_key_file"] or "").strip() or None
        try:
            if options["action"] == "rotate":
                key = self._rotate(key_path(data_dir, key_file))
            elif options["create"]:
                key = load_or_create(data_dir, key_file)
            else:
                key = load_existing(data_dir, key_file)
        except SigningKeyError as exc:
            raise CommandError(str(exc)) from None
        if options["key_id"]:
            self.stdout.write(key.key_id)
        elif options["action"] == "rotate":
            self.stdout.write(key.public_pem, ending="")
        else:
            self.stdout.write(key.public_pem, ending="")

    def _rotate(self, path: Path) -> Any:
        from rollouts.services import signing_key_rotate

        if not path.is_file():
            raise CommandError(f"no signing key at {path}: nothing to rotate")
        try:
            call_command("migrate", interactive=False, verbosity=0)
            ring = signing_key_rotate(path=path)
        except DatabaseError as exc:
            raise CommandError(f"cannot record the rotation in the store: {exc}") from None
        retired = ring.keys[1].key_id if len(ring.keys) > 1 else "-"
        self.stderr.write(
            f"rotated {path}: new active key {ring.active.key_id}, {retired} retired "
            f"({len(ring.keys)} keys); nodes must pin the new key (GET /v1/signing-keys)"
        )
        return ring.active
