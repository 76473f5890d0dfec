"""`autonomy-orchestrator signing-key`: print the public key (PEM) that signs rollout specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.flags import env_default
from rollouts.signing import SigningKeyError, load_or_create


class Command(BaseCommand):
    help = (
        "Print the Ed25519 public key (PEM) that signs rollout plan specs, for nodes to pin. "
        "The key lives in the data dir (created once, mode 0600), also when serving from "
        "PostgreSQL."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--data-dir",
            default=env_default("data-dir") or str(settings.DATA_DIR),
            help="the data dir holding the signing key (same as `serve --data-dir`; "
            "AUTONOMY_DATA_DIR)",
        )
        parser.add_argument(
            "--postgres-url",
            default="",
            help="accepted for symmetry with `serve`; the key always lives in the data dir",
        )
        parser.add_argument(
            "--key-id", action="store_true", help="print the key id instead of the PEM"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key = load_or_create(Path(options["data_dir"]).expanduser())
        except SigningKeyError as exc:
            raise CommandError(str(exc)) from None
        if options["key_id"]:
            self.stdout.write(key.key_id)
        else:
            self.stdout.write(key.public_pem, ending="")
