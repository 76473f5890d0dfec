"""Helpers shared by the benchmarks in bench/: start servers, drive HTTP load, report.

Loopback only. The load generator is asyncio raw sockets with keep-alive connections spread over
worker processes (forked), so the client costs little CPU next to the server; each run reports
the client's CPU use so a reader can tell whether the client was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import multiprocessing
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).with_name("autonomy-orchestrator")
DAPHNE = Path(sys.executable).with_name("daphne")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(
    url: str,
    timeout: float = 60.0,
    proc: subprocess.Popen[bytes] | None = None,
    context: ssl.SSLContext | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


class Server:
    """A server subprocess on 127.0.0.1:<port>, stopped by its pid (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        args: list[str],
        port: int,
        ready_path: str,
        env: dict[str, str],
        cwd: str | None = None,
        log: Path | None = None,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port
        self.context = context
        if context is not None:
            _TLS_PORTS[port] = context
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self._out = out
        self.proc = subprocess.Popen(
            args, env={**os.environ, **env}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
        scheme = "https" if context is not None else "http"
        wait_http(f"{scheme}://127.0.0.1:{port}{ready_path}", proc=self.proc, context=context)

    def cpu_seconds(self) -> float:
        """utime + stime of the server so far: the process and its descendants (with `serve
        --workers N`, the supervisor and every worker)."""
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._out is not subprocess.DEVNULL:
            self._out.close()  # type: ignore[union-attr]


def start_orchestrator(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Server:
    """`serve` on 127.0.0.1 with the bench's `--auth` mode (`use_auth`): for `token` a fresh
    token is created in `data_dir` first and sent on every request; for `mtls` the server gets
    the throwaway PKI and the clients present its certificate."""
    port = free_port()
    auth_args = AUTH.prepare(data_dir)
    args = [
        str(BIN),
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
        "--log-level",
        "warn",
        *auth_args,
        *extra,
    ]
    return Server(args, port, "/v1/health", env or {}, log=log, context=AUTH.client_context)


# --- auth enforced (--auth none|token|mtls) -------------------------------------------------

AUTH_MODES = ("none", "token", "mtls")
# The ports served over TLS and the client context for them (run_load connects with it).
_TLS_PORTS: dict[int, ssl.SSLContext] = {}


def add_auth_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--auth",
        choices=AUTH_MODES,
        default="none",
        help="none: open loopback mode; token: serve --auth required and an operator bearer "
        "token on every request; mtls: HTTPS with --tls-ca-file and an operator client "
        "certificate (O=autonomy:operators) made in the temporary directory",
    )


@dataclass
class AuthSetup:
    mode: str = "none"
    role: str = "operator"
    header: bytes = b""  # extra request header lines (the bearer token)
    client_context: ssl.SSLContext | None = None
    serve_args: list[str] = field(default_factory=list)

    def prepare(self, data_dir: Path) -> list[str]:
        """The serve arguments for a server on `data_dir` (token: creates its token now)."""
        if self.mode != "token":
            return list(self.serve_args)
        name = f"bench-{secrets.token_hex(4)}"
        result = subprocess.run(
            [str(BIN), "token", "create", "--name", name, "--role", self.role,
             "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"token create failed: {result.stderr.strip()}")
        token = result.stdout.strip().splitlines()[-1]
        self.header = f"Authorization: Bearer {token}\r\n".encode()
        return ["--auth", "required", *self.serve_args]

    def headers(self) -> dict[str, str]:
        """The header for urllib requests (publishing before a run)."""
        if not self.header:
            return {}
        name, _, value = self.header.decode().strip().partition(": ")
        return {name: value}

    def url(self, port: int, path: str) -> str:
        scheme = "https" if port in _TLS_PORTS else "http"
        return f"{scheme}://127.0.0.1:{port}{path}"

    def urlopen(self, request: urllib.request.Request | str, timeout: float = 10) -> Any:
        port = urllib.parse.urlsplit(
            request.full_url if isinstance(request, urllib.request.Request) else request
        ).port
        return urllib.request.urlopen(request, timeout=timeout, context=_TLS_PORTS.get(port or 0))


AUTH = AuthSetup()


def use_auth(mode: str, workdir: Path) -> AuthSetup:
    """Configure every later `start_orchestrator` and request of this run for `mode`."""
    AUTH.mode = mode
    if mode == "mtls":
        pki = Path(tempfile.mkdtemp(prefix="pki-", dir=workdir))
        AUTH.serve_args, AUTH.client_context = _throwaway_pki(pki)
    return AUTH


def _throwaway_pki(directory: Path) -> tuple[list[str], ssl.SSLContext]:
    """A CA, a server certificate for 127.0.0.1 and an operator client certificate, written to
    `directory` (private keys 0600; deleted with the bench's temporary directory)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
        return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def save(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path = directory / f"{stem}.key"
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("bench CA"))
        .issuer_name(name("bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    Leaf = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]

    def leaf(subject: x509.Name, server: bool) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    save("server", *leaf(name("127.0.0.1"), True))
    save("operator", *leaf(name("bench-operator", "autonomy:operators"), False))
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(directory / "operator.pem", directory / "operator.key")
    args = [
        "--tls-cert-file", str(directory / "server.pem"),
        "--tls-key-file", str(directory / "server.key"),
        "--tls-ca-file", str(directory / "ca.pem"),
    ]  # fmt: skip
    return args, context


HELLO_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"15")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
"""


def start_hello_daphne(workdir: Path) -> Server:
    """A bare ASGI hello-world app on daphne (no access log), the stack's ceiling."""
    (workdir / "bench_hello.py").write_text(HELLO_APP)
    port = free_port()
    args = [str(DAPHNE), "-v", "0", "-b", "127.0.0.1", "-p", str(port), "bench_hello:app"]
    return Server(args, port, "/", {"PYTHONPATH": str(workdir)}, cwd=str(workdir))


# --- load generator -------------------------------------------------------------------------

RequestFactory = Callable[[int, int], bytes]  # (worker index, sequence) -> raw HTTP request


@dataclass
class LoadResult:
    requests: int
    ok: int
    errors: int
    seconds: float
    client_cpu: float  # CPU seconds used by the load generator processes
    latencies_ms: list[float]
    server_cpu: float = 0.0  # CPU seconds the server used in the measured window (cpu_probe)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        data = sorted(self.latencies_ms)
        return data[min(len(data) - 1, int(p / 100 * len(data)))]


class _Conn(asyncio.Protocol):
    def __init__(self, worker: _Worker) -> None:
        self.w = worker
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.need: int | None = None
        self.status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send_next()

    def send_next(self) -> None:
        if time.monotonic() >= self.w.stop_at or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            self.w.closed += 1
            return
        self.w.seq += 1
        self.sent_at = time.perf_counter()
        self.transport.write(self.w.factory(self.w.index, self.w.seq))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                self.status = int(head[9:12])
                pos = head.find(b"content-length:")
                length = int(head[pos + 15 : head.find(b"\r\n", pos)]) if pos >= 0 else 0
                self.need = end + 4 + length
            if len(self.buf) < self.need:
                return
            self.buf = self.buf[self.need :]
            self.need = None
            now = time.perf_counter()
            if now >= self.w.measure_from:
                self.w.requests += 1
                if 200 <= self.status < 300:
                    self.w.ok += 1
                else:
                    self.w.errors += 1
                if len(self.w.latencies) < 200_000:
                    self.w.latencies.append((now - self.sent_at) * 1000)
            self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _Worker:
    def __init__(self, index: int, factory: RequestFactory, stop_at: float, measure_from: float):
        self.index = index
        self.factory = factory
        self.stop_at = stop_at
        self.measure_from = measure_from
        self.seq = 0
        self.requests = self.ok = self.errors = self.closed = 0
        self.latencies: list[float] = []


def _worker_main(
    index: int,
    port: int,
    conns: int,
    factory: RequestFactory,
    warmup: float,
    seconds: float,
    start_at: float,
    out: multiprocessing.Queue[tuple],
) -> None:
    async def run() -> None:
        while time.time() < start_at:
            await asyncio.sleep(0.005)
        perf_start = time.perf_counter()
        mono_start = time.monotonic()
        w = _Worker(index, factory, mono_start + warmup + seconds, perf_start + warmup)
        loop = asyncio.get_running_loop()
        for _ in range(conns):
            await loop.create_connection(
                lambda: _Conn(w), "127.0.0.1", port, ssl=_TLS_PORTS.get(port)
            )
        while w.closed < conns and time.monotonic() < w.stop_at + 30:
            await asyncio.sleep(0.01)
        t = os.times()
        out.put((w.requests, w.ok, w.errors, t.user + t.system, w.latencies))

    asyncio.run(run())


def run_load(
    port: int,
    factory: RequestFactory,
    *,
    connections: int,
    processes: int,
    seconds: float,
    warmup: float = 2.0,
    cpu_probe: Callable[[], float] | None = None,
) -> LoadResult:
    """Keep `connections` keep-alive connections busy for warmup + seconds; count the last part."""
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[tuple] = ctx.Queue()
    per = [
        connections // processes + (1 if i < connections % processes else 0)
        for i in range(processes)
    ]
    start_at = time.time() + 0.5
    procs = [
        ctx.Process(target=_worker_main, args=(i, port, n, factory, warmup, seconds, start_at, out))
        for i, n in enumerate(per)
        if n
    ]
    for p in procs:
        p.start()
    server_cpu = 0.0
    if cpu_probe is not None:
        time.sleep(max(0.0, start_at + warmup - time.time()))
        cpu_start = cpu_probe()
        time.sleep(max(0.0, start_at + warmup + seconds - time.time()))
        server_cpu = cpu_probe() - cpu_start
    results = [out.get(timeout=warmup + seconds + 90) for _ in procs]
    for p in procs:
        p.join(timeout=10)
    lat: list[float] = []
    for r in results:
        lat.extend(r[4])
    return LoadResult(
        requests=sum(r[0] for r in results),
        ok=sum(r[1] for r in results),
        errors=sum(r[2] for r in results),
        seconds=seconds,
        client_cpu=sum(r[3] for r in results),
        latencies_ms=lat,
        server_cpu=server_cpu,
    )


def get_request(path: str) -> bytes:
    return (
        (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n").encode()
        + AUTH.header
        + b"\r\n"
    )


def post_request(path: str, body: bytes) -> bytes:
    return (
        (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nContent-Length: {len(body)}\r\n"
        ).encode()
        + AUTH.header
        + b"\r\n"
        + body
    )


# --- reporting ------------------------------------------------------------------------------


def verdict(ratio: float, goal: float) -> str:
    return (
        f"{ratio * 100:.1f}% (goal >= {goal * 100:.0f}%: {'MET' if ratio >= goal else 'NOT MET'})"
    )


def machine_summary() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPU ({cpu}){mem}, Python {sys.version.split()[0]}, "
        f"calibration {python_loop_us():.1f} µs"
    )


def python_loop_us() -> float:
    """Best of five timings of `sum(range(1000))` in µs: how fast this machine runs Python right
    now. Machines of one kind differ from day to day (2026-11-30: 20-27 µs on a 2 vCPU AMD EPYC
    where the day before's figures were measured), so compare fleet figures only between runs
    with a similar calibration."""
    import timeit

    return min(timeit.repeat("sum(range(1000))", number=2000, repeat=5)) / 2000 * 1e6


def proc_tree(pid: int) -> list[int]:
    """`pid` and its descendants (serve --workers: the supervisor and its workers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo += [int(child) for child in task.read_text().split()]
            except (OSError, ValueError):
                continue
    return found


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds of the process and its descendants (each worker of serve --workers)."""
    total = 0
    for one in proc_tree(pid):
        try:
            with open(f"/proc/{one}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")
