"""The deployment artefacts, as operators use them (docs/deploy.md): the container image built from
the repository's Dockerfile and run with Docker, the compose file, the systemd unit.

The image test makes everything it needs on this machine, with no registry but PyPI and Debian's
mirror (read from this machine's apt configuration): a Debian bookworm base image from
`mmdebstrap` + `docker import`, a wheelhouse built on the host (`pip wheel`), then
`docker build --build-arg BASE_IMAGE=… --build-arg WHEELHOUSE=wheelhouse`. Containers run with
`--network host` and listen on 127.0.0.1 only. Every container, volume and image made here is
removed afterwards, the base image included; a `dockerd` started here is stopped again.

Without a container runtime (no docker CLI, no daemon and none can be started, no mmdebstrap)
the tests skip with the reason, except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests import pg
from tests.liveserver import BIN, free_port
from tests.pki import Pki, refused
from tests.pki import get as tls_get

pytestmark = [pytest.mark.e2e, pytest.mark.container]

REPO = Path(__file__).resolve().parent.parent
RUN_ID = f"{os.getpid()}-{int(time.time())}"
BASE_TAG = f"autonomy-orchestrator-test-base:{RUN_ID}"
IMAGE_TAG = f"autonomy-orchestrator-test:{RUN_ID}"
BUILD_TAG = f"autonomy-orchestrator-test-build:{RUN_ID}"
APP_UID = 10001  # the Dockerfile's default APP_UID
DATA = "/var/lib/autonomy-orchestrator"
TLS_DIR = "/etc/autonomy-orchestrator/tls"
STOP_TIMEOUT = 15  # `docker stop --time`: above serve's 10 s drain, SIGKILL (exit 137) after it
ONLINE_BACKUP = (
    "import sqlite3; sqlite3.connect('{}/orchestrator.sqlite3').backup(sqlite3.connect('{}'))"
)
SUITE = "bookworm"  # python3 is 3.11 there, as the wheels built by this interpreter need


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    if _ci():
        pytest.fail(f"{reason} (CI=true: the deployment tests must run)")
    pytest.skip(reason)


def run(
    *args: str, timeout: float = 120, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:6])} … exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run("docker", *args, timeout=timeout, check=check)


# --- the container runtime and the images -------------------------------------------------------


def _docker_answers() -> bool:
    try:
        return run("docker", "info", timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def docker_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker daemon to talk to: the running one, else `dockerd` started here (as root, for
    machines where systemd is not PID 1) and stopped at the end."""
    if shutil.which("docker") is None:
        unavailable("no docker CLI (Debian: apt-get install docker.io)")
    if _docker_answers():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        unavailable("no Docker daemon answers, and this user cannot start dockerd")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [dockerd], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while not _docker_answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=10)
            tail = log.read_text(errors="replace").splitlines()[-5:]
            unavailable(f"dockerd did not start: {' / '.join(tail)}")
        time.sleep(0.5)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def debian_sources() -> str | None:
    """One-line apt sources for SUITE on the Debian mirror this machine's apt uses (and its
    security mirror), read from apt's own configuration; None when it names no Debian mirror."""
    if shutil.which("apt-get") is None:
        return None
    out = run(
        "apt-get",
        "indextargets",
        "--format",
        "$(REPO_URI)\t$(ORIGIN)\t$(LABEL)\t$(RELEASE)",
        "Identifier: Packages",
        check=False,
    ).stdout
    mirror = security = None
    for line in out.splitlines():
        uri, origin, label, release = [*line.split("\t"), "", "", ""][:4]
        is_security = label == "Debian-Security" or release.endswith("-security")
        if origin not in ("Debian", "") or not uri.startswith(("http://", "https://")):
            continue
        if is_security:
            security = security or uri
        elif origin == "Debian" or uri.rstrip("/").endswith("/debian"):
            mirror = mirror or uri
    if mirror is None:
        return None
    lines = [f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main"]
    if security:
        lines.append(f"deb {security} {SUITE}-security main")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def base_image(docker_daemon: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian bookworm minbase + python3 + python3-venv, as a local image (no Docker Hub here).
    AUTONOMY_TEST_BASE_IMAGE=<image>: use that existing image instead, and leave it in place."""
    given = os.environ.get("AUTONOMY_TEST_BASE_IMAGE", "").strip()
    if given:
        docker("image", "inspect", given)
        yield given
        return
    if shutil.which("mmdebstrap") is None:
        unavailable("no mmdebstrap to make the base image (Debian: apt-get install mmdebstrap)")
    sources = debian_sources()
    if sources is None:
        unavailable("apt's configuration names no Debian mirror for mmdebstrap")
    tar = tmp_path_factory.mktemp("base") / "base.tar"
    run(
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        "--include=python3,python3-venv,ca-certificates",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        SUITE,
        str(tar),
        "-",
        input=sources,
        timeout=300,
    )
    docker("import", str(tar), BASE_TAG, timeout=120)
    tar.unlink()
    try:
        yield BASE_TAG
    finally:
        docker("rmi", "--force", BASE_TAG, check=False)


def _ignore(directory: str, names: list[str]) -> set[str]:
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}
    if Path(directory) == REPO:  # a wheelhouse of the checkout's own would mix with ours
        skip |= {"wheelhouse", "build", "dist", "data"}
    return {n for n in names if n in skip or n.endswith(".egg-info")}


@pytest.fixture(scope="module")
def image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The repository's Dockerfile built on `base_image` from a host-built wheelhouse: the source
    tree plus `wheelhouse/` (this project's wheel and every pinned dependency)."""
    context = tmp_path_factory.mktemp("context") / "src"
    shutil.copytree(REPO, context, ignore=_ignore)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--disable-pip-version-check",
        "--wheel-dir",
        str(context / "wheelhouse"),
        "-r",
        str(REPO / "requirements" / "base.txt"),
        str(REPO),
        timeout=300,
    )
    build = [
        "build",
        "--network",
        "host",
        "--quiet",
        "--build-arg",
        f"BASE_IMAGE={base_image}",
        "--build-arg",
        "WHEELHOUSE=wheelhouse",
    ]
    try:
        # The build stage gets a tag of its own, so that it can be removed afterwards (the legacy
        # builder would otherwise leave it as an untagged image).
        docker(*build, "--target", "build", "--tag", BUILD_TAG, str(context), timeout=600)
        docker(*build, "--tag", IMAGE_TAG, str(context), timeout=600)
        yield IMAGE_TAG
    finally:
        docker("rmi", "--force", IMAGE_TAG, BUILD_TAG, check=False)


# --- running containers -------------------------------------------------------------------------


class Container:
    """One `docker run -d --network host` of the image, removed at the end of the test."""

    def __init__(self, image: str, *args: str, env: dict[str, str], options: tuple[str, ...] = ()):
        self.port = free_port()
        self.name = f"autonomy-orchestrator-test-{RUN_ID}-{self.port}"
        self.image = image
        self.args = args
        self.env = {"AUTONOMY_LISTEN": f"127.0.0.1:{self.port}", **env}
        self.options = options

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def start(self, context: ssl.SSLContext | None = None) -> Container:
        flags = [f for k, v in self.env.items() for f in ("--env", f"{k}={v}")]
        docker(
            "run",
            "--detach",
            "--network",
            "host",
            "--name",
            self.name,
            "--health-interval",
            "1s",
            "--health-start-period",
            "60s",
            *flags,
            *self.options,
            self.image,
            *self.args,
        )
        self.wait_ready(context)
        return self

    def wait_ready(self, context: ssl.SSLContext | None = None, timeout: float = 90) -> None:
        scheme = "https" if context is not None else "http"
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.inspect()["State"]["Status"] != "running":
                raise AssertionError(f"container stopped before it was ready:\n{self.logs()}")
            try:
                status, _ = tls_get(self.url("/v1/health", scheme), context, timeout=3)
                if status == 200:
                    return
                last = status
            except (OSError, ssl.SSLError) as exc:
                last = exc
            time.sleep(0.3)
        raise AssertionError(f"not ready after {timeout}s ({last}):\n{self.logs()}")

    def inspect(self) -> dict[str, Any]:
        return json.loads(docker("inspect", self.name).stdout)[0]

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def wait_healthy(self, timeout: float = 60) -> None:
        """Docker's own verdict from the image's HEALTHCHECK."""
        deadline = time.monotonic() + timeout
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            health = self.inspect()["State"].get("Health") or {}
            if health.get("Status") == "healthy":
                return
            time.sleep(0.5)
        raise AssertionError(f"not healthy: {json.dumps(health, indent=1)}")

    def stop(self) -> int:
        """`docker stop` (the image's STOPSIGNAL, SIGKILL after STOP_TIMEOUT); the exit code."""
        docker("stop", "--time", str(STOP_TIMEOUT), self.name, timeout=STOP_TIMEOUT + 60)
        return int(self.inspect()["State"]["ExitCode"])

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check=False)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in made:
        c.remove()


@pytest.fixture
def volume(docker_daemon: None) -> Iterator[str]:
    name = f"autonomy-orchestrator-test-{RUN_ID}-{free_port()}"
    docker("volume", "create", name)
    try:
        yield name
    finally:
        docker("volume", "rm", "--force", name, check=False)


def http(method: str, url: str, body: object = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ev(event_id: str, node: str = "node-a") -> dict[str, str]:
    return {
        "event_id": event_id,
        "event_type": "app.heartbeat",
        "node_id": node,
        "timestamp": "2026-11-29T10:00:00+01:00",
    }


def event_ids(c: Container) -> list[str]:
    status, body = http("GET", c.url("/v1/events"))
    assert status == 200, body
    return [e["event_id"] for e in body["events"]]


# --- the image ----------------------------------------------------------------------------------


def test_image_on_sqlite_keeps_events_in_its_volume_and_stops_cleanly(
    image, volume, containers, tmp_path
):
    metrics_port = free_port()
    env = {"AUTONOMY_METRICS_ADDR": f"127.0.0.1:{metrics_port}"}
    mount = ("--volume", f"{volume}:{DATA}")
    first = Container(image, env=env, options=mount)
    containers.append(first)
    first.start()

    config = first.inspect()["Config"]
    assert config["StopSignal"] == "SIGTERM"
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert size < 400_000_000, f"image is {size / 1e6:.0f} MB; docs/deploy.md says ~310 MB"
    assert docker("exec", first.name, "id", "-u").stdout.strip() == str(APP_UID)  # not root
    status, body = http("POST", first.url("/v1/events"), {"events": [ev("e-1"), ev("e-2", "b")]})
    assert (status, body) == (200, {"received": 2, "inserted": 2, "deduped": 0})
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        assert b'cp_events_ingested_total{result="inserted"} 2.0' in resp.read()
    first.wait_healthy()
    stored = docker("exec", first.name, "ls", DATA).stdout.split()
    assert "orchestrator.sqlite3" in stored and "django-secret.key" in stored

    # The online backup of docs/deploy.md, while the server runs.
    backup = f"{DATA}/backup.sqlite3"
    docker("exec", first.name, "python3", "-c", ONLINE_BACKUP.format(DATA, backup))
    docker("cp", f"{first.name}:{backup}", str(tmp_path / "backup.sqlite3"))
    with contextlib.closing(sqlite3.connect(tmp_path / "backup.sqlite3")) as db:
        rows = db.execute("SELECT event_id FROM events_event ORDER BY id").fetchall()
    assert rows == [("e-1",), ("e-2",)]
    docker("exec", first.name, "rm", backup)

    # The same container again: SIGTERM, a clean exit, start, the events are there.
    docker("restart", "--time", str(STOP_TIMEOUT), first.name, timeout=STOP_TIMEOUT + 60)
    first.wait_ready()
    assert event_ids(first) == ["e-2", "e-1"]
    assert first.stop() == 0  # serve drained and exited on SIGTERM, not SIGKILLed (137)
    assert '"message":"stopped"' in first.logs().replace(" ", "")
    first.remove()

    # A new container (an upgrade: same volume, new container) finds the same data.
    second = Container(image, env=env, options=mount)
    containers.append(second)
    second.start()
    assert event_ids(second) == ["e-2", "e-1"]
    status, body = http("POST", second.url("/v1/events"), {"events": [ev("e-2", "b"), ev("e-3")]})
    assert body == {"received": 2, "inserted": 1, "deduped": 1}
    assert second.stop() == 0


@pytest.mark.postgres
def test_image_serves_from_the_hosts_postgresql(image, containers):
    with pg.temp_database("test_deploy") as url:
        # The compose file's one-shot `migrate` service, as it runs it.
        migrate = docker(
            "run",
            "--rm",
            "--network",
            "host",
            "--entrypoint",
            "django-admin",
            "--env",
            "DJANGO_SETTINGS_MODULE=orchestrator_site.settings",
            "--env",
            f"AUTONOMY_POSTGRES_URL={url}",
            image,
            "migrate",
            "--noinput",
            timeout=180,
        )
        assert "events_event" in pg.table_names(url), migrate.stdout

        c = Container(image, "serve", "--postgres-url", url, env={})
        containers.append(c)
        c.start()
        status, body = http("POST", c.url("/v1/events"), {"events": [ev("p-1"), ev("p-2")]})
        assert (status, body["inserted"]) == (200, 2)
        assert event_ids(c) == ["p-2", "p-1"]
        assert pg.count(url, "events_event") == 2  # in PostgreSQL, not in a SQLite file
        assert "data store: PostgreSQL" in c.logs()
        assert c.stop() == 0
        c.remove()  # before the database is dropped


def _tls_files(pki: Pki, root: Path) -> Path:
    """Copies of the test PKI's server files that the image's user (APP_UID) can read: the key
    stays 0600 (0400 here), owned by that uid when we are root."""
    tls = root / "tls"
    tls.mkdir(parents=True)
    for src, name in (
        (pki.ca, "ca.pem"),
        (pki.server_cert, "server.pem"),
        (pki.server_key, "server.key"),
        (pki.crl_empty, "crl.pem"),
    ):
        dst = tls / name
        shutil.copyfile(src, dst)
        if os.geteuid() == 0:
            os.chown(dst, APP_UID, APP_UID)
            dst.chmod(0o400 if name.endswith(".key") else 0o444)
        else:  # a throw-away test key; the container's user is not ours
            dst.chmod(0o444)
    tls.chmod(0o755)
    return tls


def test_image_starts_with_mtls_from_read_only_mounted_files(image, containers, pki, tmp_path):
    tls = _tls_files(pki, tmp_path)
    env = {
        "AUTONOMY_TLS_CERT_FILE": f"{TLS_DIR}/server.pem",
        "AUTONOMY_TLS_KEY_FILE": f"{TLS_DIR}/server.key",
        "AUTONOMY_TLS_CA_FILE": f"{TLS_DIR}/ca.pem",
        "AUTONOMY_TLS_CRL_FILE": f"{TLS_DIR}/crl.pem",
    }
    c = Container(image, env=env, options=("--volume", f"{tls}:{TLS_DIR}:ro"))
    containers.append(c)
    c.start(pki.context("node-b"))

    status, _ = tls_get(c.url("/v1/health", "https"), pki.context("node-b"))
    assert status == 200
    assert refused(c.url("/v1/health", "https"), pki.context())  # no client certificate
    status, body = tls_get(c.url("/v1/crl", "https"), pki.context("node-b"))
    assert (status, body) == (200, pki.crl_empty.read_bytes())
    c.wait_healthy()  # the HEALTHCHECK speaks mTLS with the server's own certificate
    write = docker("exec", c.name, "touch", f"{TLS_DIR}/x", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    assert c.stop() == 0


# --- compose and systemd (no daemon needed) -----------------------------------------------------


def test_compose_file_is_valid_and_needs_a_database_password():
    if shutil.which("docker-compose") is None:
        unavailable("no docker-compose (Debian: apt-get install docker-compose)")
    compose = ("docker-compose", "--file", str(REPO / "docker-compose.yml"), "config")
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    with_password = {**env, "POSTGRES_PASSWORD": "not-a-real-password"}
    run(*compose, "--quiet", env=with_password)
    services = run(*compose, "--services", env=with_password).stdout.split()
    assert sorted(services) == ["migrate", "orchestrator", "postgres"]
    volumes = run(*compose, "--volumes", env=with_password).stdout.split()
    assert sorted(volumes) == ["orchestrator-data", "postgres-data"]
    rendered = run(*compose, env=with_password).stdout
    assert "condition: service_completed_successfully" in rendered  # serve waits for migrate
    assert "not-a-real-password@postgres:5432/orchestrator" in rendered
    missing = run(*compose, "--quiet", env=env, check=False)
    assert missing.returncode != 0
    assert "set POSTGRES_PASSWORD" in missing.stderr


def test_systemd_unit_verifies_and_outlasts_the_drain(tmp_path):
    if shutil.which("systemd-analyze") is None:
        unavailable("no systemd-analyze (Debian: apt-get install systemd)")
    unit = REPO / "deploy" / "systemd" / "autonomy-orchestrator.service"
    text = unit.read_text()
    installed = "ExecStart=/opt/autonomy-orchestrator/bin/autonomy-orchestrator serve"
    assert installed in text
    # `verify` needs ExecStart's binary to exist: the same unit, pointing at this venv's.
    copy = tmp_path / unit.name
    copy.write_text(text.replace(installed, f"ExecStart={BIN} serve"))
    result = run("systemd-analyze", "verify", str(copy), check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep the keys case as written
    parser.read_string(text)
    service = parser["Service"]
    assert service["User"] == "autonomy-orchestrator"
    assert service["StateDirectory"] == "autonomy-orchestrator"
    assert (service["ProtectSystem"], service["NoNewPrivileges"]) == ("strict", "yes")
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > 10  # serve's drain time
    sysusers = (unit.parent / "autonomy-orchestrator.sysusers").read_text()
    assert "\nu autonomy-orchestrator " in sysusers
