"""`autonomy-orchestrator release sign --key PRIVATE.pem release.json [-o FILE]`: sign a release
offline (docs/trust.md). Needs no server and no database: only the private release key."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from releases.release_signing import ReleaseSignatureError, load_private_key, sign


class Command(BaseCommand):
    help = (
        "Sign a release offline with the release key: prints the release JSON with "
        "`release_signature` added, ready for POST /v1/releases on a server started with "
        "--release-trust-key (the matching public key). No server or database is used."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True, metavar="sign")
        signer = actions.add_parser(
            "sign", help="sign a release JSON file with a PEM Ed25519 private key"
        )
        signer.add_argument(
            "--key", required=True, metavar="PRIVATE.pem", help="the release key (PEM, PKCS#8)"
        )
        signer.add_argument(
            "release", metavar="release.json", help="the release to publish (JSON; - = stdin)"
        )
        signer.add_argument(
            "-o", "--output", metavar="FILE", default="-", help="write here (default stdout)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            key = load_private_key(_read(options["key"]), f"--key {options['key']}")
        except ReleaseSignatureError as exc:
            raise CommandError(str(exc)) from None
        source = options["release"]
        try:
            release = json.loads(_read(source))
        except ValueError as exc:
            raise CommandError(f"{source} is not JSON: {exc}") from None
        if not isinstance(release, dict) or not isinstance(release.get("release_id"), str):
            raise CommandError(f"{source} must be a JSON object with a string 'release_id'")
        release.pop("release_signature", None)
        release["release_signature"] = sign(release, key)
        text = json.dumps(release, indent=2, ensure_ascii=False) + "\n"
        if options["output"] == "-":
            self.stdout.write(text, ending="")
        else:
            try:
                Path(options["output"]).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise CommandError(f"cannot write {options['output']}: {exc.strerror}") from None


def _read(name: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {name}: {exc.strerror or exc}") from None
