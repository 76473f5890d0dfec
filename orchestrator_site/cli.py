"""The `autonomy-orchestrator` console script: maps sub-commands onto management commands.

`serve`, `signing-key` and `createsuperuser` choose the database from `--data-dir` /
`--postgres-url` (flag, else `AUTONOMY_*` env var, else default). Settings are read once when
Django starts, so those two flags are copied into the environment before that.

Run this way, a sub-command's parser is named as users type it (`autonomy-orchestrator
signing-key`) and its `--help` lists the project's flags only: Django's own options (`--settings`,
`--traceback`, ...) still work but are not shown. `python manage.py <command>` is unchanged.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "run the HTTP API (daphne) on --listen, SQLite in --data-dir"),
    "migrate": ("migrate_to_pg", "copy all data from the SQLite store to PostgreSQL"),
    "version": ("version", "print version, build SHA, build date, tier and platform"),
    "signing-key": (
        "signing_key",
        "print the public key that signs plans and poll answers; `signing-key rotate`",
    ),
    "release": ("release", "sign a release offline: release sign --key PRIVATE.pem release.json"),
    "createsuperuser": ("createsuperuser", "create an admin user for /admin/"),
    "token": ("token", "create, list or revoke API bearer tokens"),
    "audit": ("audit", "export the audit log (audit export --since 24h) as JSON lines"),
    "webhook": ("webhook", "add, list, remove or test the webhook endpoints that receive events"),
    "agent": ("agent", "run the reference node agent: poll, verify, apply, ack (docs/agent.md)"),
}

# Sub-commands that are not Django management commands: run without starting Django.
_PLAIN_COMMANDS = {"agent"}

# Management commands whose database is the serving store chosen by --data-dir/--postgres-url.
_STORE_COMMANDS = {"serve", "signing_key", "signing-key", "createsuperuser", "changepassword"}
_STORE_COMMANDS |= {"token", "audit", "webhook"}
_STORE_FLAGS = {"--data-dir": "AUTONOMY_DATA_DIR", "--postgres-url": "AUTONOMY_POSTGRES_URL"}

USAGE = """\
usage: autonomy-orchestrator <command> [flags]

A self-hosted control plane for fleets of edge nodes.

commands:
{commands}

Run `autonomy-orchestrator <command> --help` for a command's flags and their defaults.
A flag that takes a value also reads the AUTONOMY_<FLAG> variable its help names
(e.g. AUTONOMY_LISTEN); the flag wins.
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


# Django's commands that take the store flags only through the shim.
_DJANGO_STORE_COMMANDS = {"createsuperuser", "changepassword"}

# Options every Django command has; they keep working, but `--help` does not list them.
DJANGO_INTERNAL_OPTIONS = {
    "--version",
    "--verbosity",
    "--settings",
    "--pythonpath",
    "--traceback",
    "--no-color",
    "--force-color",
    "--skip-checks",
    "--database",  # createsuperuser: there is one store, chosen by --data-dir / --postgres-url
}

_CREATESUPERUSER_HELP = {
    "description": "Create an admin user for /admin/ in the store that `serve` uses with the same "
    "--data-dir / --postgres-url (run `serve` once first: it creates the store). With --noinput "
    "the password comes from DJANGO_SUPERUSER_PASSWORD.",
    "username": "the admin's login name (asked for when not given)",
    "interactive": "ask nothing: needs --username and --email, and the password in "
    "DJANGO_SUPERUSER_PASSWORD",
    "email": "the admin's email address (asked for when not given)",
}


def public_parser(parser: argparse.ArgumentParser, name: str, command: str) -> None:
    """Name the parser as users type the command and hide Django's own options from `--help`."""
    parser.prog = f"autonomy-orchestrator {name}"
    for action in parser._actions:
        if set(action.option_strings) & DJANGO_INTERNAL_OPTIONS:
            action.help = argparse.SUPPRESS
    if command == "createsuperuser":
        parser.description = _CREATESUPERUSER_HELP["description"]
        for action in parser._actions:
            if action.dest in _CREATESUPERUSER_HELP:
                action.help = _CREATESUPERUSER_HELP[action.dest]
    if command in _DJANGO_STORE_COMMANDS:
        parser.add_argument(
            "--data-dir",
            metavar="DIR",
            help="the data dir of the SQLite store, as given to `serve --data-dir` "
            "(default $XDG_STATE_HOME/autonomyops/orchestrator; AUTONOMY_DATA_DIR)",
        )
        parser.add_argument(
            "--postgres-url",
            metavar="URL",
            help="the PostgreSQL store, as given to `serve --postgres-url` "
            "(default empty = SQLite; AUTONOMY_POSTGRES_URL)",
        )


def store_problem(name: str) -> str | None:
    """Why `name` (createsuperuser) cannot use the store yet, as one line; None when it can.

    A missing or unmigrated store is not created here (SQLite would create an empty file): the
    answer says to start `serve` once, which creates and migrates it.
    """
    from django.conf import settings
    from django.db import DatabaseError, connection
    from django.db.migrations.executor import MigrationExecutor

    from core import pgurl

    data_dir = shlex.quote(str(settings.DATA_DIR))
    if connection.vendor == "sqlite":
        database = Path(str(settings.DATABASES["default"]["NAME"]))
        where = str(database)
        serve = f"autonomy-orchestrator serve --data-dir {data_dir}"
        if not database.is_file():
            return (
                f"no store at {where}: start `{serve}` once (it creates and migrates the store), "
                f"then run `autonomy-orchestrator {name}` again"
            )
    else:
        url = str(settings.POSTGRES_URL or "")
        where = pgurl.redact(url) if url else "PostgreSQL"
        serve = "autonomy-orchestrator serve --postgres-url URL"
        if url:
            try:
                pgurl.probe(url)
            except pgurl.PostgresUrlError as exc:
                return str(exc)
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as exc:
        return f"cannot read the store at {where}: {pgurl.first_line(exc)}"
    finally:
        connection.close()
    if pending:
        return (
            f"the store at {where} is not migrated ({len(pending)} migrations to apply): start "
            f"`{serve}` once (it creates and migrates the store), then run "
            f"`autonomy-orchestrator {name}` again"
        )
    return None


def noinput_password_problem(options: dict[str, Any]) -> str | None:
    """`createsuperuser --noinput` takes DJANGO_SUPERUSER_PASSWORD without Django's password
    validators (the interactive prompt runs them): run them here, one line when refused."""
    password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
    if options.get("interactive", True) or password is None:
        return None
    from django.contrib.auth import get_user_model
    from django.contrib.auth.password_validation import validate_password
    from django.core.exceptions import ValidationError

    user_model = get_user_model()
    username = options.get(user_model.USERNAME_FIELD) or os.environ.get(
        "DJANGO_SUPERUSER_" + user_model.USERNAME_FIELD.upper(), ""
    )
    email = options.get("email") or os.environ.get("DJANGO_SUPERUSER_EMAIL", "")
    try:
        validate_password(
            password, user_model(**{user_model.USERNAME_FIELD: username}, email=email)
        )
    except ValidationError as exc:
        return "DJANGO_SUPERUSER_PASSWORD refused: " + " ".join(exc.messages)
    return None


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
    if command in _PLAIN_COMMANDS:
        from autonomy_agent.cli import main as agent_main

        return agent_main(rest)
    preconfigure_env(command, rest)
    if command in _STORE_COMMANDS:
        os.umask(0o077)  # the store's files (database, -wal, -shm, keys) are private: 0600
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
    import django
    from django.core.management import CommandError, ManagementUtility

    django.setup()
    # Not execute_from_command_line(): it answers `version` with Django's own version.
    argv_for_django = ["autonomy-orchestrator", command, *rest]
    handler = ManagementUtility(argv_for_django).fetch_command(command)
    create_parser = handler.create_parser

    def public_create_parser(prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        parser = create_parser(prog_name, subcommand, **kwargs)
        public_parser(parser, name, command)
        return parser

    # Django's commands (createsuperuser too) build their parser in create_parser(): wrapping it
    # on this one instance is the hook that works for all of them without subclassing each.
    handler.create_parser = public_create_parser  # type: ignore[method-assign]
    if command in _DJANGO_STORE_COMMANDS:
        execute = handler.execute

        def execute_on_a_ready_store(*args: Any, **options: Any) -> Any:
            problem = store_problem(name)  # after the flags parsed (and --help answered)
            if problem is None and command == "createsuperuser":
                problem = noinput_password_problem(options)
            if problem is not None:
                raise CommandError(problem)
            return execute(*args, **options)

        # Same hook (see above): createsuperuser is Django's command, not a subclass of ours.
        handler.execute = execute_on_a_ready_store  # type: ignore[method-assign]
    handler.run_from_argv(argv_for_django)
    return 0


if __name__ == "__main__":
    sys.exit(main())
