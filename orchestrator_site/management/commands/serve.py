"""`autonomy-orchestrator serve`: the HTTP API on daphne, in this process."""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
from pathlib import Path
from typing import Any, cast

from django.apps import apps as django_apps
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError, connections
from django.urls import get_resolver

from access.services import Denial, DenialRecorder, edge_token_resolver
from core import (
    dberrors,
    dbpool_metrics,
    ha,
    leader,
    metrics,
    pgconf,
    pglock,
    pgurl,
    revocation,
    sharedstate,
    store_metrics,
    tls,
    workers,
)
from core.auth import AuthMode, Enforcement, Kind, Principal, auth_mode, startup_refusal
from core.datadir import (
    DataDirError,
    load_or_create_secret,
    prepare_data_dir,
    prepare_workers_dir,
    private_umask,
)
from core.dbthreads import sync_after_turn, write_turn
from core.edge import configure_auth
from core.flags import env_default, env_list, parse_duration
from core.hardening import with_hsts
from core.logging_setup import FORMATS, LEVELS, configure_logging
from core.paths import (
    default_data_dir,
    legacy_data_dir,
    legacy_data_dir_notice,
    state_data_dir,
)
from core.requestid import with_request_id
from core.server import (
    SCOPE_HOOKS,
    ClientLimits,
    ListenAddress,
    Listener,
    ServeError,
    bind_socket,
    parse_listen,
    run_daphne,
)
from core.supervisor import exec_supervisor, worker_spec
from core.tls import ServerTls, TlsConfig, TlsError, make_scope_hook
from core.walcheckpoint import Checkpointer, disable_autocheckpoint
from crl.apps import CrlConfig
from crl.services import CrlSyncConfig, CrlSyncThread
from crl.shared import CrlShareThread
from crl.store import CrlStore
from events.writer import carry as carry_along_events
from releases.release_signing import ReleaseSignatureError, load_public_keys
from releases.writer import ride_on as ride_acks_on
from rollouts.selectors import signing_key_refusal
from rollouts.signing import SigningKeyError, current_key, key_path

MAX_WORKERS = sharedstate.MAX_WORKERS

logger = logging.getLogger("orchestrator.serve")

DEFAULT_LISTEN = "127.0.0.1:8888"
DEFAULT_EVENTS_RETENTION = "30d"
# An existing SQLite store up to this size is converted to incremental auto-vacuum at start.
AUTO_VACUUM_CONVERT_MAX_BYTES = 1 << 30
CRL_CHECK_SECONDS = 60.0


class Command(BaseCommand):
    help = "Serve the HTTP API (daphne) on --listen, with SQLite in --data-dir."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--listen",
            metavar="HOST:PORT",
            default=env_default("listen", DEFAULT_LISTEN),
            help="TCP address host:port, [v6]:port or :port (default 127.0.0.1:8888; "
            "AUTONOMY_LISTEN)",
        )
        parser.add_argument(
            "--workers",
            metavar="N",
            default=env_default("workers", "1"),
            help="serving processes sharing --listen (SO_REUSEPORT), 1 to "
            f"{MAX_WORKERS}; SQLite only: on PostgreSQL run more replicas (docs/serve.md#workers) "
            "(default 1; AUTONOMY_WORKERS)",
        )
        parser.add_argument(
            "--data-dir",
            metavar="DIR",
            default=env_default("data-dir") or str(default_data_dir()),
            help="directory of the SQLite store, the rollout signing key and the session secret, "
            "created 0700 if missing (default $XDG_STATE_HOME/autonomyops/orchestrator; "
            "AUTONOMY_DATA_DIR)",
        )
        parser.add_argument(
            "--postgres-url",
            metavar="URL",
            default=env_default("postgres-url", ""),
            help="serve from this PostgreSQL database instead of SQLite, "
            "postgresql://user:pass@host:port/db?libpq-options (default empty = SQLite; "
            "AUTONOMY_POSTGRES_URL)",
        )
        parser.add_argument(
            "--db-pool-timeout",
            default=env_default("db-pool-timeout", "3"),
            help="PostgreSQL: seconds a request waits for a pooled connection before it is "
            "answered 503 with Retry-After (default 3; AUTONOMY_DB_POOL_TIMEOUT)",
        )
        parser.add_argument(
            "--db-pool-size",
            default=env_default("db-pool-size", "20"),
            help="PostgreSQL: most connections this replica opens (default 20; "
            "AUTONOMY_DB_POOL_SIZE)",
        )
        parser.add_argument(
            "--node-name",
            metavar="NAME",
            default=env_default("node-name", ""),
            help="this replica's name among the replicas of one database (leader, "
            "GET /v1/ha/status) (default the host:port it listens on; AUTONOMY_NODE_NAME)",
        )
        parser.add_argument(
            "--require-sync-replicas",
            metavar="N",
            default=env_default("require-sync-replicas", "0"),
            help="PostgreSQL: operator writes answer 503 with Retry-After while fewer than N "
            "synchronous standbys are streaming (default 0 = no check; "
            "AUTONOMY_REQUIRE_SYNC_REPLICAS)",
        )
        parser.add_argument(
            "--events-retention",
            metavar="DURATION",
            default=env_default("events-retention", DEFAULT_EVENTS_RETENTION),
            help="delete events received longer ago than this (by arrival time, in small "
            "batches in the background; never events a running rollout's event_threshold gate "
            "reads), e.g. 30d, 12h; 0 keeps everything (default 30d; AUTONOMY_EVENTS_RETENTION)",
        )
        parser.add_argument(
            "--fleet-forget-after",
            metavar="DURATION",
            default=env_default("fleet-forget-after", "0"),
            help="GET /v1/fleet leaves out nodes not heard from (no event, no ack) for this "
            "long; their acks are kept (default 0 = never; AUTONOMY_FLEET_FORGET_AFTER)",
        )
        parser.add_argument(
            "--metrics-addr",
            metavar="HOST:PORT",
            default=env_default("metrics-addr", ""),
            help="second listener serving only GET /metrics (default empty = metrics disabled; "
            "AUTONOMY_METRICS_ADDR)",
        )
        parser.add_argument(
            "--tls-cert-file",
            metavar="FILE",
            default=env_default("tls-cert-file", ""),
            help="PEM server certificate (chain): serve HTTPS; needs --tls-key-file "
            "(default empty = plain HTTP; AUTONOMY_TLS_CERT_FILE)",
        )
        parser.add_argument(
            "--tls-key-file",
            metavar="FILE",
            default=env_default("tls-key-file", ""),
            help="PEM private key of --tls-cert-file (default empty; AUTONOMY_TLS_KEY_FILE)",
        )
        parser.add_argument(
            "--tls-ca-file",
            metavar="FILE",
            default=env_default("tls-ca-file", ""),
            help="PEM CA: require client certificates signed by it (mTLS) "
            "(default empty = no client certificates; AUTONOMY_TLS_CA_FILE)",
        )
        parser.add_argument(
            "--tls-crl-file",
            metavar="FILE",
            default=env_default("tls-crl-file", ""),
            help="PEM CRL signed by --tls-ca-file: refuse the client certificates it lists; "
            "reloaded when it changes; served at GET /v1/crl (default empty; "
            "AUTONOMY_TLS_CRL_FILE)",
        )
        parser.add_argument(
            "--tls-crl-sync-url",
            metavar="URL",
            action="append",
            default=None,
            help="repeatable: another control plane's GET /v1/crl to pull newer CRLs from "
            "(default none; AUTONOMY_TLS_CRL_SYNC_URL, comma-separated)",
        )
        parser.add_argument(
            "--tls-crl-sync-min-sources",
            metavar="N",
            default=env_default("tls-crl-sync-min-sources", "1"),
            help="accept a pulled CRL only when at least this many sources return it "
            "(default 1; AUTONOMY_TLS_CRL_SYNC_MIN_SOURCES)",
        )
        parser.add_argument(
            "--tls-crl-sync-interval",
            metavar="DURATION",
            default=env_default("tls-crl-sync-interval", "5m"),
            help="pull period, Go-style (30s, 5m, 1h); 0 = once at start "
            "(default 5m; AUTONOMY_TLS_CRL_SYNC_INTERVAL)",
        )
        parser.add_argument(
            "--tls-crl-sync-server-name",
            metavar="NAME",
            default=env_default("tls-crl-sync-server-name", ""),
            help="TLS server name (SNI, hostname check) for the sync URLs "
            "(default empty = each URL's host; AUTONOMY_TLS_CRL_SYNC_SERVER_NAME)",
        )
        parser.add_argument(
            "--stuck-after",
            metavar="DURATION",
            default=env_default("stuck-after", "1h"),
            help="a published or active plan with no transition for this long is stuck: the "
            "rollout.stuck webhook event, once per episode (default 1h; AUTONOMY_STUCK_AFTER)",
        )
        parser.add_argument(
            "--auth",
            metavar="MODE",
            default=env_default("auth", "auto"),
            help="auto, required or off: auto enforces credentials when the listener is not "
            "loopback, --tls-ca-file is set or any token exists, else serves loopback clients "
            "without them (docs/security.md) (default auto; AUTONOMY_AUTH)",
        )
        parser.add_argument(
            "--signing-key-file",
            metavar="FILE",
            default=env_default("signing-key-file", ""),
            help="the Ed25519 keyring that signs rollout plans and poll answers; replicas of "
            "one database share it (default rollout-signing.key in --data-dir; "
            "AUTONOMY_SIGNING_KEY_FILE)",
        )
        parser.add_argument(
            "--desired-state-ttl",
            metavar="DURATION",
            default=env_default("desired-state-ttl", "5m"),
            help="how long a signed GET /v1/releases/latest answer stays valid (expires_at), "
            "Go-style, 10s to 7 days (default 5m; AUTONOMY_DESIRED_STATE_TTL)",
        )
        parser.add_argument(
            "--release-trust-key",
            metavar="FILE",
            action="append",
            default=None,
            help="repeatable: PEM Ed25519 public key(s) of the offline release key; when set, "
            "POST /v1/releases accepts only releases signed by one of them (`release sign`) "
            "(default none; AUTONOMY_RELEASE_TRUST_KEY, comma-separated)",
        )
        parser.add_argument(
            "--log-format",
            metavar="FORMAT",
            default=env_default("log-format", "text"),
            help="text or json (one JSON object per line) (default text; AUTONOMY_LOG_FORMAT)",
        )
        parser.add_argument(
            "--log-level",
            metavar="LEVEL",
            default=env_default("log-level", "info"),
            help="debug, info, warn or error (default info; AUTONOMY_LOG_LEVEL)",
        )
        parser.add_argument(
            "--silent-after",
            metavar="DURATION",
            default=env_default("silent-after", "10m"),
            help="a node of an open rollout stage with no ack for the release this long after "
            "the stage opened counts as silent, Go-style (30s, 10m, 1h) "
            "(default 10m; AUTONOMY_SILENT_AFTER)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        # A worker of `serve --workers N`, started by the supervisor: the serve's own flags.
        worker = worker_spec()
        if worker is not None:
            options = {**options, **worker["options"]}
        try:
            self._serve(options, worker)
        except (ServeError, DataDirError, TlsError) as exc:
            raise CommandError(str(exc)) from None
        except Exception as exc:
            # Never a traceback for the operator; the details are there with --log-level debug.
            logger.debug("serve failed", exc_info=True)
            raise CommandError(f"serve stopped on an unexpected error: {exc!r}") from None

    def _serve(self, options: dict[str, Any], worker: dict[str, Any] | None = None) -> None:
        """Set up and serve. `worker`: this process is worker `worker["index"]` of a `serve
        --workers N` (core.supervisor): its sockets are already bound and the store migrated,
        and the lines the setup logs were already logged by the serve (silenced until it
        serves)."""
        if worker is not None:
            workers.configure(
                index=int(worker["index"]),
                count=int(worker["count"]),
                directory=Path(worker["directory"]),
            )
            logging.disable(logging.WARNING)
        log_format = str(options["log_format"]).strip().lower()
        log_level = str(options["log_level"]).strip().lower()
        if log_format not in FORMATS:
            raise ServeError(
                f"--log-format must be one of {', '.join(FORMATS)}, not {log_format!r}"
            )
        if log_level not in LEVELS:
            raise ServeError(f"--log-level must be one of {', '.join(LEVELS)}, not {log_level!r}")
        configure_logging(log_format, log_level)

        listen = parse_listen(options["listen"])
        auth_flag = str(options["auth"] or "").strip().lower()
        if auth_flag not in {m.value for m in AuthMode}:
            raise ServeError(
                f"--auth must be one of {', '.join(m.value for m in AuthMode)}, not {auth_flag!r}"
            )
        postgres_url = str(settings.POSTGRES_URL or "").strip()
        if postgres_url:
            try:
                pgurl.check(postgres_url)  # mysql://… or a bad port: refused before anything
            except pgurl.PostgresUrlError as exc:
                raise ServeError(str(exc)) from None
        metrics_addr = str(options["metrics_addr"] or "").strip()
        metrics_listen = parse_listen(metrics_addr, "--metrics-addr") if metrics_addr else None
        if settings.POSTGRES_URL_ERROR:
            raise ServeError(f"--postgres-url is not usable: {settings.POSTGRES_URL_ERROR}")
        pool_size, pool_timeout = self._pool(options)
        try:
            require_sync = ha.parse_sync_replicas(str(options["require_sync_replicas"]))
        except ValueError as exc:
            raise ServeError(f"--require-sync-replicas {exc}") from None
        if require_sync and not postgres_url:
            raise ServeError(
                "--require-sync-replicas needs --postgres-url (SQLite has no standbys)"
            )
        settings.ROLLOUT_SILENT_AFTER_SECONDS = self._silent_after(options)
        retention = _duration_flag(options, "events_retention")
        forget_after = _duration_flag(options, "fleet_forget_after")
        settings.EVENTS_RETENTION_SECONDS = retention
        settings.FLEET_FORGET_AFTER_SECONDS = forget_after
        node_name = str(options["node_name"] or "").strip()
        if len(node_name) > 200:
            raise ServeError("--node-name must be at most 200 characters")
        try:
            stuck_after = parse_duration(str(options["stuck_after"]))
        except ValueError as exc:
            raise ServeError(f"--stuck-after {exc}") from None
        if stuck_after < 1:
            raise ServeError("--stuck-after must be at least 1s")
        server_tls, crl_store = self._tls(options)
        sync_config = self._crl_sync(options, server_tls, crl_store)
        settings.DESIRED_STATE_TTL_SECONDS = self._desired_state_ttl(options)
        settings.RELEASE_TRUST_KEYS = self._release_trust_keys(options)
        signing_key_file = str(options["signing_key_file"] or "").strip()

        worker_count = self._workers(options, using_postgres=bool(postgres_url))
        # Bind first: a port in use is reported before the data dir is touched. With --workers,
        # one SO_REUSEPORT socket per worker on the same port (the kernel spreads connections);
        # a worker gets its own from the supervisor (the metrics listener: worker 0 only).
        inherited = [socket.socket(fileno=fd) for fd in worker["sockets"]] if worker else []
        if inherited:
            main = Listener("main", inherited[0], listen.family)
        else:
            main = Listener("main", bind_socket(listen, reuse_port=worker_count > 1), listen.family)
        worker_socks = [main.sock]
        if worker_count > 1 and worker is None:
            same_port = ListenAddress(
                host=listen.host, port=main.sock.getsockname()[1], family=listen.family
            )
            worker_socks += [
                bind_socket(same_port, reuse_port=True) for _ in range(worker_count - 1)
            ]
        listeners = [main]
        if server_tls is not None:
            main.scheme = "https"
            main.wrap_factory = server_tls.wrap
        if metrics_listen is not None and (worker is None or len(inherited) > 1):
            listeners.append(
                Listener(
                    "metrics",
                    inherited[1] if worker else bind_socket(metrics_listen, "--metrics-addr"),
                    metrics_listen.family,
                    application=with_request_id(metrics.metrics_only),
                )
            )

        using_postgres = bool(postgres_url)
        if using_postgres:
            try:
                # One plain connection first: a refused port, role or database is one line now,
                # not the pool's retries for 10 s.
                pgurl.probe(postgres_url)
            except pgurl.PostgresUrlError as exc:
                raise ServeError(str(exc)) from None
        data_dir = Path(options["data_dir"]).expanduser()
        # The data dir is used on PostgreSQL too: it keeps the rollout signing key and the secret
        # that signs admin sessions (AUTONOMY_SECRET_KEY, when set, wins).
        private_umask()  # the database, its -wal/-shm and every other new file: 0600
        for warning in prepare_data_dir(data_dir):
            logger.warning(warning)
        notice = legacy_data_dir_notice(data_dir)
        if notice is not None:
            logger.warning(notice)
        if not os.environ.get("AUTONOMY_SECRET_KEY"):
            settings.SECRET_KEY = load_or_create_secret(data_dir)

        if using_postgres:
            pgconf.configure_pool(size=pool_size, timeout=pool_timeout)
        if worker is None:  # a worker's serve did these
            if not using_postgres:
                self._incremental_vacuum(new_store=True)
            self._migrate(using_postgres)
            if not using_postgres and retention:
                self._incremental_vacuum()
        signing_key = self._signing_key(signing_key_file, data_dir, using_postgres)
        node_name = node_name or main.bound()
        if using_postgres:
            self._check_shared_keys(node_name, signing_key.public_pem.encode(), data_dir)
        ha.configure(require_sync_replicas=require_sync)

        enforcement = self._auth(AuthMode(auth_flag), main, server_tls)

        from orchestrator_site.asgi import application as site_application

        application: Any = site_application  # wrapped below (metrics)
        from events.partitions import ensure_partitions
        from events.retention import configure_visibility
        from notifications.dispatcher import start_dispatcher, stop_dispatcher
        from rollouts.evaluator import configure as configure_evaluator
        from rollouts.evaluator import start_background_evaluator
        from rollouts.progress import start_warmer as start_rollout_counts_warmer

        # asgi.py runs django.setup() again, whose dictConfig resets the loggers we tuned
        # (django.request "Not Found" lines would duplicate the access log): apply ours again.
        configure_logging(log_format, log_level)

        if metrics_listen is not None:
            import crl.metrics
            import events.metrics
            import notifications.metrics
            import releases.metrics
            import rollouts.metrics

            metrics.install()
            events.metrics.install()
            rollouts.metrics.install()
            releases.metrics.install()
            crl.metrics.install()
            store_metrics.install()
            notifications.metrics.install()
            dbpool_metrics.install()
            ha.install_metrics()
            application = with_request_id(metrics.with_metrics(application))

        periodic = []
        if server_tls is not None:
            # HTTPS: admin cookies never travel in clear, browsers keep to HTTPS (HSTS).
            settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
            application = with_hsts(application)
            SCOPE_HOOKS.append(make_scope_hook(server_tls))
            if crl_store is not None:
                # GET /v1/crl serves the CRL that the handshakes enforce.
                cast(CrlConfig, django_apps.get_app_config("crl")).use_store(crl_store)

                def check_crl() -> None:
                    # Reloads and nextUpdate warnings even when no client connects.
                    crl_store.refresh()
                    crl_store.check_expiry()

                periodic.append((CRL_CHECK_SECONDS, check_crl))

        store = "PostgreSQL" if using_postgres else f"SQLite in {data_dir}"

        def ready() -> None:
            for listener in listeners:
                logger.info(
                    "listening on %s://%s (%s)",
                    listener.scheme,
                    listener.bound(),
                    listener.name,
                    extra={"listen": listener.bound(), "listener": listener.name},
                )
            if server_tls is not None:
                logger.info(
                    "TLS: certificate %s; client certificates %s; CRL %s",
                    server_tls.config.cert_file,
                    f"required (CA {server_tls.config.ca_file})"
                    if server_tls.mutual
                    else "not requested",
                    server_tls.config.crl_file or "none",
                )
            logger.info("data store: %s", store, extra={"store": store})

        def serve_here(listeners: list[Listener], index: int) -> None:
            """One serving process: background work (the primary only), then the listeners."""
            primary = index == 0
            recorder = DenialRecorder()

            def on_denied(**denial: Any) -> None:
                recorder.record(Denial(**denial))

            def on_revoked_certificate(subject: str, serial: str, client: str | None) -> None:
                recorder.record(
                    Denial(
                        principal=Principal(Kind.CERT, subject, rejected="certificate revoked"),
                        route=None,
                        reason="certificate_revoked",
                        status=0,  # refused in the TLS handshake: no HTTP answer
                        source_ip=client,
                        target=f"serial={serial}",
                        event_name="cert.revocation.rejected",
                    )
                )

            tls.REVOKED_CLIENT_HOOKS[:] = [on_revoked_certificate]

            watch = revocation.RevocationWatch(revocation.stamp_path(settings.DATA_DIR))
            revocation_listener = None
            if postgres_url:  # revocations by other hosts arrive as NOTIFY
                revocation_listener = revocation.NotifyListener(
                    watch, pglock.connect_kwargs(settings.DATABASES["default"])
                )
                revocation_listener.start()
            configure_auth(
                enforcement,
                resolve_token=edge_token_resolver,
                on_denied=on_denied,
                token_ttl=settings.TOKEN_CACHE_TTL_SECONDS,
                revocations=watch,
            )
            recorder.start()
            if not using_postgres:
                # SQLite: acks ride the events writer's thread and write turns (one turn for
                # both). PostgreSQL: each its own thread, writing concurrently.
                ride_acks_on(carry_along_events)
                # Writers fsync the WAL after their write turn, not inside it (the next writer
                # writes meanwhile); they answer after that fsync.
                sync_after_turn()
            # Background work a store has once: in the primary worker only (--workers).
            configure_evaluator(stuck_after=stuck_after)
            # Every worker: a large fleet's rollout counts made ahead of the operator's reads.
            start_rollout_counts_warmer()
            # Every worker: no event out of the retention window is shown; on PostgreSQL the
            # events table's partitions of today and the days ahead exist.
            configure_visibility(retention)
            if using_postgres:
                try:
                    ensure_partitions()
                except DatabaseError as exc:  # a lock not granted in time: made later
                    logger.warning(
                        "events: could not make the day partitions ahead now (%s); the "
                        "leader's next retention round or a day's first event will",
                        str(exc).strip().splitlines()[0],
                    )
            pruner = syncer = snapshots = checkpointer = None
            if primary and not using_postgres:
                checkpointer = Checkpointer(
                    str(settings.DATABASES["default"]["NAME"]), turn=write_turn
                ).start()
            if primary:
                leader.elector.hooks.append(ha.refresh_replication)
                leader.elector.start(node_name)
                start_background_evaluator()
                on_outcome = None
                if metrics_listen is not None:
                    import notifications.metrics

                    on_outcome = notifications.metrics.record_outcome
                start_dispatcher(replica=node_name, on_outcome=on_outcome)
                from events.retention import start_pruner

                pruner = start_pruner(retention_seconds=retention)
            else:
                leader.elector.leads_with_primary = True
            shared = workers.directory()
            if shared is not None and metrics_listen is not None:
                from core import metricsmerge

                snapshots = metricsmerge.start_snapshots(shared, index)
            if primary and sync_config is not None and crl_store is not None:
                syncer = CrlSyncThread(config=sync_config, store=crl_store)
                syncer.start()
            sharer = None
            if using_postgres and crl_store is not None:
                # Every replica enforces the newest CRL the leader adopted (docs/ha.md).
                sharer = CrlShareThread(crl_store)
                sharer.start()
            try:
                limits = ClientLimits(
                    header_timeout=settings.CLIENT_HEADER_TIMEOUT_SECONDS,
                    body_timeout=settings.CLIENT_BODY_TIMEOUT_SECONDS,
                    max_connections_per_client=settings.MAX_CONNECTIONS_PER_CLIENT,
                    max_body_bytes=settings.MAX_REQUEST_BODY_BYTES,
                )
                run_daphne(
                    application,
                    listeners,
                    on_ready=ready if primary else lambda: None,
                    periodic=periodic,
                    limits=limits,
                )
            finally:
                if snapshots is not None:
                    snapshots.stop()
                if checkpointer is not None:
                    checkpointer.stop()
                stop_dispatcher()
                if pruner is not None:
                    pruner.stop()
                if syncer is not None:
                    syncer.stop()
                if sharer is not None:
                    sharer.stop()
                recorder.stop()
                if revocation_listener is not None:
                    revocation_listener.stop()
                leader.elector.stop()

        if not using_postgres:
            # Checkpoints run in the primary's own thread, not inside a writer's COMMIT.
            disable_autocheckpoint(settings.DATABASES["default"]["OPTIONS"])
            connections.close_all()

        if worker is not None:
            index = workers.index()
            sharedstate.attach(workers.directory(), index)
            # The URLconf's views, serializers and schema imported before the first request.
            get_resolver().url_patterns  # noqa: B018 - the lookup imports the URLconf
            logging.disable(logging.NOTSET)
            serve_here(listeners, index)
            return
        if worker_count > 1:
            shared_dir = prepare_workers_dir(data_dir)
            sharedstate.SharedState.create(shared_dir)
            from core import metricsmerge

            metricsmerge.remove_snapshots(shared_dir)  # an earlier run's counts are not ours
            connections.close_all()
            logger.info(
                "starting %d workers on %s (SQLite in %s)",
                worker_count,
                main.bound(),
                data_dir,
                extra={"workers": worker_count},
            )
            sockets = [[sock.fileno()] for sock in worker_socks]
            sockets[0] += [listener.sock.fileno() for listener in listeners[1:]]
            exec_supervisor(
                count=worker_count,
                sockets=sockets,
                directory=str(shared_dir),
                options=options,
                log_format=log_format,
                log_level=log_level,
            )
        serve_here(listeners, 0)

    def _auth(self, mode: AuthMode, main: Listener, server_tls: ServerTls | None) -> Enforcement:
        """§6 `--auth`: refuse an exposed listener nobody could authenticate to; log the mode."""
        from access.selectors import any_token_exists

        listen_addresses = [main.bound()]
        tls_ca_set = bool(server_tls is not None and server_tls.mutual)
        any_token = any_token_exists()
        connections.close_all()
        refusal = startup_refusal(
            mode, listen_addresses=listen_addresses, tls_ca_set=tls_ca_set, any_token=any_token
        )
        if refusal is not None:
            raise ServeError(refusal)
        enforcement = auth_mode(
            mode, listen_addresses=listen_addresses, tls_ca_set=tls_ca_set, any_token=any_token
        )
        if enforcement is Enforcement.OFF:
            logger.warning(
                "--auth off: every request is served without credentials; use it only on a "
                "sealed network"
            )
        elif enforcement is Enforcement.OPEN:
            logger.info(
                "auth: open loopback mode (no credentials; loopback clients and Host only, no "
                "cross-site requests); create a token to enforce credentials"
            )
        else:
            logger.info(
                "auth: enforced (bearer tokens%s)", ", client certificates" if tls_ca_set else ""
            )
        return enforcement

    def _desired_state_ttl(self, options: dict[str, Any]) -> float:
        try:
            ttl = parse_duration(str(options["desired_state_ttl"]))
        except ValueError as exc:
            raise ServeError(f"--desired-state-ttl {exc}") from None
        if not 10 <= ttl <= 7 * 86400:
            raise ServeError("--desired-state-ttl must be between 10s and 168h (7 days)")
        return ttl

    def _release_trust_keys(self, options: dict[str, Any]) -> dict[str, Any]:
        files = options["release_trust_key"]
        if files is None:
            files = env_list("release-trust-key")
        keys: dict[str, Any] = {}
        for name in dict.fromkeys(f.strip() for f in files if f and f.strip()):
            path = Path(name).expanduser()
            try:
                keys.update(load_public_keys(path.read_bytes(), f"--release-trust-key {path}"))
            except OSError as exc:
                raise ServeError(
                    f"--release-trust-key {path}: cannot read it: {exc.strerror or exc}"
                ) from None
            except ReleaseSignatureError as exc:
                raise ServeError(str(exc)) from None
        if keys:
            logger.info(
                "releases: only those signed by release key %s are accepted", ", ".join(keys)
            )
        return keys

    def _signing_key(self, key_file: str, data_dir: Path, using_postgres: bool) -> Any:
        """The keyring's active key (docs/trust.md "Keys"): --signing-key-file, else the data
        dir's; the old default location when only it has a key; never a new key when signed
        plans exist, or (PostgreSQL) when other replicas already registered one."""
        if key_file:
            path = Path(key_file).expanduser()
            if not path.is_file():
                raise ServeError(
                    f"--signing-key-file {path}: no such file (create it with "
                    f"`autonomy-orchestrator signing-key --create --signing-key-file {path}`)"
                )
        else:
            path = key_path(data_dir)
            legacy = key_path(legacy_data_dir())
            if not path.exists() and data_dir == state_data_dir() and legacy.is_file():
                path = legacy
                logger.warning(
                    "signing key: using %s, the default location of earlier versions; "
                    "move it to %s or pass --signing-key-file",
                    legacy,
                    key_path(data_dir),
                )
        settings.SIGNING_KEY_FILE = str(path)
        if not path.exists():
            refusal = signing_key_refusal(path, using_postgres)
            if refusal is not None:
                raise ServeError(refusal)
        try:
            return current_key()  # created on the first start, checked after
        except SigningKeyError as exc:
            raise ServeError(str(exc)) from None

    def _check_shared_keys(self, node_name: str, signing_pem: bytes, data_dir: Path) -> None:
        """Every replica of one database signs with one key and one session secret."""
        keys = {
            "rollout signing key": signing_pem,
            "session secret": str(settings.SECRET_KEY).encode(),
        }
        fixes = {
            "rollout signing key": f"copy the other replicas' rollout-signing.key into {data_dir} "
            "(or give every replica the same --signing-key-file)",
            "session secret": "give every replica the same AUTONOMY_SECRET_KEY (or copy "
            f"django-secret.key into {data_dir})",
        }
        try:
            ha.check_shared_keys(node_name, keys, fixes)
        except ha.SharedKeyMismatch as exc:
            raise ServeError(f"refusing to start: {exc}") from None
        except DatabaseError as exc:
            raise ServeError(f"cannot check the shared keys: {pgurl.first_line(exc)}") from None
        finally:
            connections.close_all()

    def _workers(self, options: dict[str, Any], *, using_postgres: bool) -> int:
        text = str(options["workers"]).strip()
        try:
            count = int(text)
        except ValueError:
            raise ServeError(f"--workers must be a whole number, not {text!r}") from None
        if not 1 <= count <= MAX_WORKERS:
            raise ServeError(f"--workers must be 1 to {MAX_WORKERS}, not {count}")
        if count > 1 and using_postgres:
            raise ServeError(
                "--workers is for SQLite; on PostgreSQL run more replicas of serve instead "
                "(docs/ha.md)"
            )
        return count

    def _pool(self, options: dict[str, Any]) -> tuple[int, float]:
        try:
            timeout = pgconf.parse_pool_timeout(str(options["db_pool_timeout"]))
        except ValueError as exc:
            raise ServeError(f"--db-pool-timeout {exc}") from None
        try:
            size = pgconf.parse_pool_size(str(options["db_pool_size"]))
        except ValueError as exc:
            raise ServeError(f"--db-pool-size {exc}") from None
        return size, timeout

    def _tls(self, options: dict[str, Any]) -> tuple[ServerTls | None, CrlStore | None]:
        """The TLS context factory and, with --tls-crl-file, the CRL store it enforces."""
        config = TlsConfig.from_flags(
            cert_file=str(options["tls_cert_file"] or "").strip(),
            key_file=str(options["tls_key_file"] or "").strip(),
            ca_file=str(options["tls_ca_file"] or "").strip(),
            crl_file=str(options["tls_crl_file"] or "").strip(),
        )
        if config is None:
            return None, None
        server_tls = ServerTls(config)
        if not config.crl_file:
            return server_tls, None
        crl_store = CrlStore(config.crl_file, server_tls.cas)
        server_tls.enforce_revocation(crl_store)
        return server_tls, crl_store

    def _silent_after(self, options: dict[str, Any]) -> float:
        try:
            seconds = parse_duration(str(options["silent_after"]))
        except ValueError as exc:
            raise ServeError(f"--silent-after {exc}") from None
        if not 1 <= seconds <= 365 * 86400:
            raise ServeError("--silent-after must be between 1s and 8760h (a year)")
        return seconds

    def _crl_sync(
        self,
        options: dict[str, Any],
        server_tls: ServerTls | None,
        crl_store: CrlStore | None,
    ) -> CrlSyncConfig | None:
        urls = options["tls_crl_sync_url"]
        if urls is None:
            urls = env_list("tls-crl-sync-url")
        urls = list(dict.fromkeys(u.strip() for u in urls if u and u.strip()))
        min_text = str(options["tls_crl_sync_min_sources"]).strip()
        if not min_text.isdigit() or int(min_text) < 1:
            raise ServeError(
                f"--tls-crl-sync-min-sources must be a whole number of at least 1, not {min_text!r}"
            )
        try:
            interval = parse_duration(str(options["tls_crl_sync_interval"]))
        except ValueError as exc:
            raise ServeError(f"--tls-crl-sync-interval {exc}") from None
        if 0 < interval < 1:
            raise ServeError("--tls-crl-sync-interval must be 0 (once at start) or at least 1s")
        if not urls:
            return None
        if server_tls is None or crl_store is None:
            raise ServeError(
                "--tls-crl-sync-url needs --tls-crl-file (and --tls-ca-file), "
                "the CRL it keeps up to date"
            )
        for url in urls:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ServeError(f"--tls-crl-sync-url {url!r} is not an http:// or https:// URL")
        if int(min_text) > len(urls):
            raise ServeError(
                f"--tls-crl-sync-min-sources {min_text} is more than the {len(urls)} "
                "--tls-crl-sync-url sources given; no CRL could ever be accepted"
            )
        return CrlSyncConfig(
            urls=tuple(urls),
            min_sources=int(min_text),
            interval=interval,
            server_name=str(options["tls_crl_sync_server_name"] or "").strip(),
            ca_file=server_tls.config.ca_file,
            cert_file=server_tls.config.cert_file,
            key_file=server_tls.config.key_file,
        )

    def _incremental_vacuum(self, new_store: bool = False) -> None:
        """SQLite: incremental auto-vacuum for a new store (before `migrate`), or the one
        conversion of an existing store (after it); docs/serve.md "Events retention"."""
        from events.retention import ensure_incremental_vacuum, prepare_new_store

        line = None
        try:
            if new_store:
                prepare_new_store()
            else:
                line = ensure_incremental_vacuum(max_bytes=AUTO_VACUUM_CONVERT_MAX_BYTES)
        except DatabaseError as exc:
            if new_store:
                return  # `migrate` reports what is wrong with the store, in its words
            raise ServeError(f"cannot prepare the store for retention: {exc}") from None
        finally:
            connections.close_all()
        if line is not None:
            logger.warning(line)

    def _migrate(self, using_postgres: bool) -> None:
        try:
            if using_postgres:
                # Replicas started together on an empty database: one migrates, the others
                # wait for it and then find nothing left to do.
                with pglock.advisory_lock(pglock.MIGRATE_LOCK_KEY, settings.DATABASES["default"]):
                    call_command("migrate", interactive=False, verbosity=0)
            else:
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


def _duration_flag(options: dict[str, Any], name: str) -> float:
    """A duration flag: 0 (off) or at least 1 s, else a one-line ServeError naming it."""
    flag = "--" + name.replace("_", "-")
    try:
        seconds = parse_duration(str(options[name]))
    except ValueError as exc:
        raise ServeError(f"{flag} {exc}") from None
    if 0 < seconds < 1:
        raise ServeError(f"{flag} must be 0 (off) or at least 1s")
    return seconds
