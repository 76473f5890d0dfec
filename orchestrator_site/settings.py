"""Settings, driven by environment variables (django-environ).

`serve`, `signing-key` and `createsuperuser` take `--data-dir` / `--postgres-url` flags; the CLI
shim copies them into `AUTONOMY_DATA_DIR` / `AUTONOMY_POSTGRES_URL` before Django starts, so this
module only ever reads the environment.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ

from core.paths import data_dir_from_env, sqlite_path

env = environ.Env()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = data_dir_from_env()
POSTGRES_URL = env.str("AUTONOMY_POSTGRES_URL", default="").strip()
POSTGRES_URL_ERROR = ""  # set below when POSTGRES_URL is not a PostgreSQL URL

# The secret key only signs admin sessions and CSRF tokens. `serve` keeps one in the data dir
# (see core.datadir) so logins survive restarts; an explicit env var wins.
SECRET_KEY = env.str("AUTONOMY_SECRET_KEY", default="") or secrets.token_urlsafe(50)
DEBUG = env.bool("AUTONOMY_DEBUG", default=False)
ALLOWED_HOSTS = env.list("AUTONOMY_ALLOWED_HOSTS", default=["*"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "orchestrator_site",
    "events",
    "releases",
    "rollouts",
    "crl",
    "access",
    "notifications",
]

MIDDLEWARE = [
    # django-prometheus's request families (served on /metrics with --metrics-addr).
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "core.middleware.ObservabilityMiddleware",
    "core.middleware.ApiErrorMiddleware",
    "core.ha.SyncReplicaGate",  # serve --require-sync-replicas
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.middleware.PrincipalMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "core.hardening.AdminHeadersMiddleware",  # X-Frame-Options + CSP on /admin/
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "orchestrator_site.urls"
APPEND_SLASH = False  # the contract's paths are exact, with no trailing slash

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "orchestrator_site" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "orchestrator_site.asgi.application"

# SQLite: WAL, and synchronous=FULL so that a 200 from POST /v1/events means the inserted events
# are on disk (one fsync per commit; measured within noise of NORMAL at >= 100 events per commit,
# see docs/performance.md). IMMEDIATE takes the write lock at BEGIN, so a busy writer waits up to
# `timeout` seconds in BEGIN instead of failing mid-transaction.
SQLITE_BUSY_TIMEOUT_SECONDS = env.float("AUTONOMY_SQLITE_BUSY_TIMEOUT", default=5.0)

if POSTGRES_URL:
    # Every libpq option of the URL reaches psycopg, next to the pool's (core.pgconf). `serve`
    # validates --db-pool-size/--db-pool-timeout (AUTONOMY_DB_POOL_*) and applies them again.
    from core import pgconf

    try:
        _pool_size = pgconf.parse_pool_size(env.str("AUTONOMY_DB_POOL_SIZE", default="20"))
    except ValueError:
        _pool_size = pgconf.DEFAULT_POOL_SIZE
    try:
        _pool_timeout = pgconf.parse_pool_timeout(env.str("AUTONOMY_DB_POOL_TIMEOUT", default="3"))
    except ValueError:
        _pool_timeout = pgconf.DEFAULT_POOL_TIMEOUT_SECONDS
    try:
        DATABASES = {
            "default": pgconf.database_settings(
                POSTGRES_URL, pool_size=_pool_size, pool_timeout=_pool_timeout
            )
        }
    except pgconf.UrlError as _exc:
        # `serve` refuses to start with this reason (one line, no traceback).
        POSTGRES_URL_ERROR = str(_exc)
        DATABASES = {
            "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "", "OPTIONS": {}}
        }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(sqlite_path(DATA_DIR)),
            "CONN_MAX_AGE": 0,
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL;PRAGMA synchronous=FULL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
            },
        }
    }

# The API test suite on PostgreSQL (.ci/run's second pytest run, docs/postgres.md): tests use a
# database of their own per process on AUTONOMY_TEST_POSTGRES_URL's server.
if env.str("AUTONOMY_TEST_DATABASE", default="") == "postgres":
    _test_pg = env.db_url_config(
        env.str(
            "AUTONOMY_TEST_POSTGRES_URL", default="postgresql://postgres@127.0.0.1:5432/postgres"
        )
    )
    _test_pg.update(ENGINE="django.db.backends.postgresql", CONN_MAX_AGE=0)
    _test_pg["TEST"] = {"NAME": f"test_orch_{os.getpid()}"}
    DATABASES = {"default": _test_pg}

# Routes nothing; keeps Django's `migrate` off the read-only source alias of `migrate`.
DATABASE_ROUTERS = ["orchestrator_site.db_routers.MigrateRouter"]

ATOMIC_REQUESTS = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Also applied to `createsuperuser --noinput` (DJANGO_SUPERUSER_PASSWORD) by the console script.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# `serve` turns these on when it serves HTTPS (--tls-cert-file), with HSTS on every answer.
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"

# Request bodies larger than this get 413 (documented in docs/api.md).
MAX_REQUEST_BODY_BYTES = env.int("AUTONOMY_MAX_BODY_BYTES", default=8 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
# Slow and greedy clients (core.server.ClientLimits, docs/security.md "Hardening"): absolute
# deadlines for a request's headers and for its body, and open connections per client address.
CLIENT_HEADER_TIMEOUT_SECONDS = env.float("AUTONOMY_CLIENT_HEADER_TIMEOUT", default=10.0)
CLIENT_BODY_TIMEOUT_SECONDS = env.float("AUTONOMY_CLIENT_BODY_TIMEOUT", default=60.0)
MAX_CONNECTIONS_PER_CLIENT = env.int("AUTONOMY_MAX_CONNECTIONS_PER_CLIENT", default=64)
# How long the edge trusts a resolved bearer token without a revocation signal (core.revocation).
TOKEN_CACHE_TTL_SECONDS = env.float("AUTONOMY_TOKEN_CACHE_TTL", default=2.0)
# Signed desired state (docs/trust.md): the keyring file (empty = rollout-signing.key in DATA_DIR;
# `serve --signing-key-file`), how long a signed poll answer stays valid (`serve
# --desired-state-ttl`), and the offline release keys (`serve --release-trust-key`, set by serve:
# key id -> Ed25519 public key; empty = releases need no signature).
SIGNING_KEY_FILE = env.str("AUTONOMY_SIGNING_KEY_FILE", default="").strip()
DESIRED_STATE_TTL_SECONDS = 300.0
RELEASE_TRUST_KEYS: dict = {}
# A targeted node without an ack for the plan's release is `silent` this long after its stage
# opened (rollouts.progress; `serve --silent-after` sets it, default 10m).
ROLLOUT_SILENT_AFTER_SECONDS = 600.0
# A running plan's admin page reloads itself this often (rollouts/static/rollouts/rolloutplan.js).
ADMIN_REFRESH_SECONDS = env.int("AUTONOMY_ADMIN_REFRESH_SECONDS", default=10)
# Set by `serve` from --events-retention / --fleet-forget-after (validated there; 0 = off).
EVENTS_RETENTION_SECONDS = 0.0
FLEET_FORGET_AFTER_SECONDS = 0.0

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["core.parsers.JSONParser"],  # the JSON-values rule
    # The HTTP edge (core.edge.AuthGate) resolves and judges every request; DRF reads its answer.
    "DEFAULT_AUTHENTICATION_CLASSES": ["core.drfauth.EdgeAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["core.drfauth.RoutePolicyPermission"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "core.edge.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "autonomy-orchestrator API",
    "DESCRIPTION": "Fleet control plane: telemetry events, releases, node acks, staged rollouts.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs page's assets ship with drf-spectacular-sidecar: nothing is fetched from the web.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Each app's route annotations live in <app>/api/schema.py; the shared error body and this
    # hook in core/openapi.py (docs/api.md).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.openapi.postprocess_schema",
    ],
    # The models' own choices, so the schema's enums are what the server stores and accepts.
    "ENUM_NAME_OVERRIDES": {
        "AckStatusEnum": "releases.models.NodeAck.Status",
        "HealthStatusEnum": ["ok"],
        "PlanPhaseEnum": "rollouts.models.Phase",
        "StagePhaseEnum": "rollouts.models.StagePhase",
    },
}

# Logging is configured by `serve` from --log-format/--log-level (core.logging_setup).
