"""The `autonomy-orchestrator` console script: maps sub-commands onto management commands.

`serve`, `signing-key` and `createsuperuser` choose the database from `--data-dir` /
`--postgres-url` (flag, else `AUTONOMY_*` env var, else default). Settings are read once when
Django starts, so those two flags are copied into the environment before that.
"""

from __future__ import annotations

import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run the HTTP API (daphne) on --listen, SQLite in --data-dir"),
    "migrate": ("migrate_to_pg", "copy all data from the SQLite store to PostgreSQL"),
    "version": ("version", "print version, build SHA, build date, tier and platform"),
    "signing-key": ("signing_key", "print the public key (PEM) that signs rollout plan specs"),
    "createsuperuser": ("createsuperuser", "create an admin user for /admin/"),
    "token": ("token", "create, list or revoke API bearer tokens"),
    "audit": ("audit", "export the audit log (audit export --since 24h) as JSON lines"),
}

# Management commands whose database is the serving store chosen by --data-dir/--postgres-url.
_STORE_COMMANDS = {"serve", "signing_key", "signing-key", "createsuperuser", "changepassword"}
_STORE_COMMANDS |= {"token", "audit"}
_STORE_FLAGS = {"--data-dir": "AUTONOMY_DATA_DIR", "--postgres-url": "AUTONOMY_POSTGRES_URL"}

USAGE = """\
usage: autonomy-orchestrator <command> [flags]

A self-hosted control plane for fleets of edge nodes.

commands:
{commands}

Run `autonomy-orchestrator <command> --help` for a command's flags.
Every flag also reads AUTONOMY_<FLAG> from the environment (e.g. AUTONOMY_LISTEN); the flag wins.
"""


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def preconfigure_env(command: str, args: list[str]) -> None:
    """Copy `--data-dir` / `--postgres-url` into the environment before settings load."""
    if command not in _STORE_COMMANDS:
        return
    for index, arg in enumerate(args):
        for flag, var in _STORE_FLAGS.items():
            if arg == flag and index + 1 < len(args):
                os.environ[var] = args[index + 1]
            elif arg.startswith(flag + "="):
                os.environ[var] = arg.split("=", 1)[1]


# Django's commands that take the store flags only through the shim (which removes them).
_DJANGO_STORE_COMMANDS = {"createsuperuser", "changepassword"}


def strip_store_flags(args: list[str]) -> list[str]:
    """`args` without `--data-dir X` / `--postgres-url X` (and their `--flag=X` forms)."""
    kept: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg in _STORE_FLAGS:
            skip_next = True
        elif not any(arg.startswith(flag + "=") for flag in _STORE_FLAGS):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(f"autonomy-orchestrator: unknown command {name!r}\n\n{usage()}")
        return 2
    command = COMMANDS[name][0]
    preconfigure_env(command, rest)
    if command in _DJANGO_STORE_COMMANDS:  # Django's own commands do not know these flags
        rest = strip_store_flags(rest)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
    import django
    from django.core.management import ManagementUtility

    django.setup()
    # Not execute_from_command_line(): it answers `version` with Django's own version.
    argv_for_django = ["autonomy-orchestrator", command, *rest]
    ManagementUtility(argv_for_django).fetch_command(command).run_from_argv(argv_for_django)
    return 0


if __name__ == "__main__":
    sys.exit(main())
