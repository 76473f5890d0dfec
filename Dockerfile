# The autonomy-orchestrator image: `docker build -t autonomy-orchestrator .` (docs/deploy.md).
#
# Build arguments:
#   BASE_IMAGE  the Python 3.11 base of both stages (default python:3.11-slim). Any Debian-like
#               image with python3 (3.11), its venv module and useradd works.
#   WHEELHOUSE  empty (default): the wheels are built here, from this source tree and PyPI.
#               A directory of the build context instead: it already holds every wheel (this
#               project's and all of requirements/base.txt), and nothing is downloaded (offline
#               and CI builds: `pip wheel -r requirements/base.txt . -w wheelhouse`).
#   APP_UID     uid/gid of the non-root user the server runs as (default 10001).
ARG BASE_IMAGE=python:3.11-slim

# --- build: a virtualenv with the project and its pinned dependencies -------------------------
FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=
WORKDIR /src
COPY . .
RUN set -eu; \
    python3 -m venv /opt/autonomy-orchestrator; \
    pip=/opt/autonomy-orchestrator/bin/pip; \
    if [ -n "$WHEELHOUSE" ]; then \
        cp -r "$WHEELHOUSE" /wheels; \
    else \
        "$pip" wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels \
            -r requirements/base.txt .; \
    fi; \
    "$pip" install --no-cache-dir --disable-pip-version-check --no-index --find-links /wheels \
        -r requirements/base.txt autonomy-orchestrator; \
    "$pip" check; \
    /opt/autonomy-orchestrator/bin/autonomy-orchestrator --help >/dev/null; \
    "$pip" uninstall --quiet --yes pip setuptools

# --- runtime ------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG APP_UID=10001
RUN set -eu; \
    groupadd --system --gid "$APP_UID" autonomy; \
    useradd --system --uid "$APP_UID" --gid autonomy --no-create-home \
        --home-dir /var/lib/autonomy-orchestrator --shell /usr/sbin/nologin autonomy; \
    install -d -o autonomy -g autonomy -m 0700 /var/lib/autonomy-orchestrator
COPY --from=build /opt/autonomy-orchestrator /opt/autonomy-orchestrator
COPY deploy/healthcheck.py /opt/autonomy-orchestrator/healthcheck.py

# Configuration is the AUTONOMY_* environment (every `serve` flag, docs/serve.md). Inside a
# container the API listens on all interfaces; publish the ports you want to expose.
ENV PATH=/opt/autonomy-orchestrator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AUTONOMY_LISTEN=0.0.0.0:8888 \
    AUTONOMY_METRICS_ADDR=0.0.0.0:9100 \
    AUTONOMY_DATA_DIR=/var/lib/autonomy-orchestrator \
    AUTONOMY_LOG_FORMAT=json

# SQLite store, rollout signing key and session secret (also on PostgreSQL: docs/postgres.md).
VOLUME ["/var/lib/autonomy-orchestrator"]
EXPOSE 8888 9100
USER autonomy
WORKDIR /var/lib/autonomy-orchestrator

# `serve` drains in-flight requests for up to 10 s on SIGTERM, then exits 0: give
# `docker stop` more than that (`--time 20`, compose's stop_grace_period).
STOPSIGNAL SIGTERM
# GET /v1/health/read-ready on AUTONOMY_LISTEN (HTTPS when TLS is on): healthy only while the
# store answers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "/opt/autonomy-orchestrator/healthcheck.py"]

ENTRYPOINT ["autonomy-orchestrator"]
CMD ["serve"]
