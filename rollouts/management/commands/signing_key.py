"""`autonomy-orchestrator signing-key`: print the public key (PEM) that signs rollout specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.flags import env_default
from rollouts.signing import SigningKeyError, load_existing, load_or_create


class Command(BaseCommand):
    help = (
        "Print the Ed25519 public key (PEM) that signs rollout plan specs, for nodes to pin. "
        "The key lives in the data dir (mode 0600), also when serving from PostgreSQL; `serve` "
        "creates it when it first starts. A data dir without a key is an error (exit 1), unless "
        "--create is given."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data-dir",
            metavar="DIR",
            default=env_default("data-dir") or str(settings.DATA_DIR),
            help="the data dir holding the signing key, as given to `serve --data-dir` "
            "(default $XDG_STATE_HOME/autonomyops/orchestrator; AUTONOMY_DATA_DIR)",
        )
        parser.add_argument(
            "--postgres-url",
            metavar="URL",
            default="",
            help="accepted for symmetry with `serve` and ignored: the key always lives in the "
            "data dir (AUTONOMY_POSTGRES_URL)",
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
        try:
            key = load_or_create(data_dir) if options["create"] else load_existing(data_dir)
        except SigningKeyError as exc:
            raise CommandError(str(exc)) from None
        if options["key_id"]:
            self.stdout.write(key.key_id)
        else:
            self.stdout.write(key.public_pem, ending="")
