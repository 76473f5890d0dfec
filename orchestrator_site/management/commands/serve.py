"""`autonomy-orchestrator serve`: the HTTP API on daphne, in this process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections

from orchestrator_site import dberrors
from orchestrator_site.datadir import DataDirError, load_or_create_secret, prepare_data_dir
from orchestrator_site.flags import env_default
from orchestrator_site.logging_setup import FORMATS, LEVELS, configure_logging
from orchestrator_site.paths import default_data_dir
from orchestrator_site.server import Listener, ServeError, bind_socket, parse_listen, run_daphne

logger = logging.getLogger("orchestrator.serve")

DEFAULT_LISTEN = "127.0.0.1:8888"


class Command(BaseCommand):
    help = "Serve the HTTP API (daphne) on --listen, with SQLite in --data-dir."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen", default=env_default("listen", DEFAULT_LISTEN),
            help="TCP address host:port or [v6]:port (default 127.0.0.1:8888; AUTONOMY_LISTEN)",
        )
        parser.add_argument(
            "--data-dir", default=env_default("data-dir") or str(default_data_dir()),
            help="directory of the SQLite store, created 0700 if missing "
            "(default $XDG_CACHE_HOME/autonomyops/orchestrator; AUTONOMY_DATA_DIR)",
        )
        parser.add_argument(
            "--postgres-url", default=env_default("postgres-url", ""),
            help="serve from this PostgreSQL database instead of SQLite, after `migrate` "
            "(AUTONOMY_POSTGRES_URL)",
        )
        parser.add_argument(
            "--metrics-addr", default=env_default("metrics-addr", ""),
            help="second listener serving only GET /metrics; empty = metrics disabled "
            "(AUTONOMY_METRICS_ADDR)",
        )
        parser.add_argument(
            "--log-format", default=env_default("log-format", "text"),
            help="text or json (one JSON object per line) (AUTONOMY_LOG_FORMAT)",
        )
        parser.add_argument(
            "--log-level", default=env_default("log-level", "info"),
            help="debug, info, warn or error (AUTONOMY_LOG_LEVEL)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self._serve(options)
        except (ServeError, DataDirError) as exc:
            raise CommandError(str(exc)) from None

    def _serve(self, options: dict[str, Any]) -> None:
        log_format = str(options["log_format"]).strip().lower()
        log_level = str(options["log_level"]).strip().lower()
        if log_format not in FORMATS:
            raise ServeError(f"--log-format must be one of {', '.join(FORMATS)}, not {log_format!r}")
        if log_level not in LEVELS:
            raise ServeError(f"--log-level must be one of {', '.join(LEVELS)}, not {log_level!r}")
        configure_logging(log_format, log_level)

        listen = parse_listen(options["listen"])
        metrics_addr = str(options["metrics_addr"] or "").strip()
        metrics_listen = parse_listen(metrics_addr, "--metrics-addr") if metrics_addr else None

        using_postgres = bool(settings.POSTGRES_URL)
        data_dir = Path(options["data_dir"]).expanduser()
        if not using_postgres:
            prepare_data_dir(data_dir)
            settings.SECRET_KEY = load_or_create_secret(data_dir)

        listeners = [Listener("main", bind_socket(listen), listen.family)]
        if metrics_listen is not None:
            listeners.append(
                Listener("metrics", bind_socket(metrics_listen, "--metrics-addr"),
                         metrics_listen.family)
            )

        self._migrate(using_postgres)

        from orchestrator_site.asgi import application
        from rollouts.evaluator import start_background_evaluator

        store = "PostgreSQL" if using_postgres else f"SQLite in {data_dir}"

        def ready() -> None:
            for listener in listeners:
                logger.info(
                    "listening on %s://%s (%s)", listener.scheme, listener.bound(), listener.name,
                    extra={"listen": listener.bound(), "listener": listener.name},
                )
            logger.info("data store: %s", store, extra={"store": store})

        start_background_evaluator()
        run_daphne(application, listeners, on_ready=ready)

    def _migrate(self, using_postgres: bool) -> None:
        try:
            call_command("migrate", interactive=False, verbosity=0)
        except DatabaseError as exc:
            kind = dberrors.classify(exc)
            if kind == dberrors.CORRUPT:
                raise ServeError(
                    f"the SQLite store in {settings.DATABASES['default']['NAME']} is corrupt "
                    f"({exc}); refusing to serve from it"
                ) from None
            if kind == dberrors.FULL:
                raise ServeError(f"cannot prepare the store: the disk is full ({exc})") from None
            where = "PostgreSQL" if using_postgres else settings.DATABASES["default"]["NAME"]
            raise ServeError(f"cannot prepare the store at {where}: {exc}") from None
        finally:
            connections.close_all()
