import orjson
from django.core.management.base import BaseCommand, CommandError, CommandParser

from orchestrator_site.buildinfo import build_info


class Command(BaseCommand):
    help = "Print the version, build SHA, build date, tier and platform."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--output", metavar="FORMAT", default="text", help="text or json (default text)"
        )

    def handle(self, *args: object, **options: object) -> None:
        fmt = str(options["output"])
        if fmt not in ("text", "json"):
            raise CommandError(f"--output must be 'text' or 'json', not {fmt!r}")
        info = build_info()
        if fmt == "json":
            self.stdout.write(orjson.dumps(info).decode())
            return
        self.stdout.write(f"autonomy-orchestrator {info['version']}")
        for key in ("build_sha", "build_date", "tier", "platform"):
            self.stdout.write(f"  {key.replace('_', ' ')}: {info[key]}")
