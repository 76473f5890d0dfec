"""Simulate a fleet of edge nodes against a real `serve`, open loop, and report per-route latency.

    python bench/fleet.py [--nodes 50000] [--seconds 180] [--cadence 60] [--connections 256]
                          [--workers N] [--failed-share 0.01] [--postgres-url URL]
                          [--auth none|token]

`serve` runs with one worker per CPU on SQLite (`--workers`, docs/serve.md: one per core), one
on PostgreSQL.

N virtual nodes with distinct ids (`node-000000` ...). Each node has a random phase in the cadence
and, once per cadence, polls `GET /v1/releases/latest?channel=fleet&node_id=<id>` and (half a
cadence later) sends one batch of 10 events to `POST /v1/events`. When the answer names a release
other than the one the node runs, the node acks it `pending` at once and, after an install delay
(1-5 s), `active` (`--failed-share` of the nodes ack `failed` instead).

Open loop: every request has a scheduled time (the node's cadence) and its latency is measured
from that time, not from when a connection got round to sending it, so a slow server shows up as
latency instead of hiding behind fewer requests. Requests go over keep-alive HTTP/1.1
connections (asyncio protocols, no HTTP library), spread over `--client-processes` forked
workers; each worker owns a share of the nodes. A request sent just as serve closed its idle
connection (no byte of an answer came back) is sent again on another connection (up to
MAX_RESENDS times), as HTTP clients do for idempotent requests; the output counts these
("resent after a keep-alive close") and their latency counts from the first schedule.

An operator (this process) publishes the baseline release before the run and, `--plan-at`
seconds in, a new release with a staged plan (`--stages`, default 1/10/50/100 %): every stage
has a `time_soak` gate (`--soak`, default a quarter cadence), an `ack_success` gate (at least
half of the stage's expected nodes acked, `--min-ratio` of them `active`) and an `ack_failure`
gate (`--max-failed`); the server's evaluator promotes the plan as the nodes ack. The operator
reads the plan's status every 2 s (route `rollout_status`).

Output: a table on stderr and one JSON object per figure on stdout (`{"figure": ..., "value":
..., "unit": ...}` plus the run's parameters): per route the achieved rate, p50/p95/p99/max
latency and errors; the server's CPU (share of one core), the time its threads waited for a CPU
(other work on the machine), its peak RSS (VmHWM of its pid), the generator's CPU; how far the
plan got. Bounded: scheduling stops after `--seconds`, requests
still unanswered `--drain` seconds later count as errors. Not a CI test (tests/test_bench_fleet.py
runs a small one). Figures go to docs/performance.md ("A 50,000-node fleet").
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    AUTH,
    add_auth_argument,
    free_port,
    machine_summary,
    proc_cpu_seconds,
    proc_tree,
    start_orchestrator,
    use_auth,
)

# Names of this run (a PostgreSQL database may already hold an earlier run's).
RUN = time.strftime("%Y%m%d%H%M%S")
CHANNEL = f"fleet-{RUN}"
BASELINE = f"fleet-{RUN}-r1"
NEW_RELEASE = f"fleet-{RUN}-r2"
PLAN_ID = f"fleet-{RUN}-plan"
ROUTES = ("poll", "events", "ack")
EVENTS_PER_BATCH = 10
OPERATOR_ROUTES = ("rollout_status", "publish")


# --- one worker process: its nodes, its connections -------------------------------------------


@dataclass
class Job:
    route: int  # index into ROUTES
    scheduled: float  # perf_counter time the request was due
    request: bytes
    node: int = -1
    resent: int = 0  # times sent again after serve closed the idle connection it went out on


@dataclass
class Stats:
    latencies: list[list[float]] = field(default_factory=lambda: [[] for _ in ROUTES])
    # per route, parallel to `latencies`: seconds from the run's start to the request's due time
    due: list[list[float]] = field(default_factory=lambda: [[] for _ in ROUTES])
    errors: list[int] = field(default_factory=lambda: [0 for _ in ROUTES])
    statuses: dict[str, int] = field(default_factory=dict)


MAX_RESENDS = 3


def _request(method: str, path: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
    if body is None:
        return head.encode() + AUTH.header + b"\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + AUTH.header + b"\r\n" + body


class Conn(asyncio.Protocol):
    """One keep-alive connection; takes the next queued job whenever its answer is complete."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.need: int | None = None
        self.status = 0
        self.body_at = 0
        self.job: Job | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.fleet.conns.append(self)
        self.fleet.idle.append(self)
        self.fleet.kick()

    def send(self, job: Job) -> None:
        self.job = job
        assert self.transport is not None
        self.transport.write(job.request)

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
                self.body_at = end + 4
            if len(self.buf) < self.need:
                return
            body = self.buf[self.body_at : self.need]
            self.buf = self.buf[self.need :]
            self.need = None
            job, self.job = self.job, None
            if job is not None:
                self.fleet.answered(job, self.status, body)
            self.fleet.idle.append(self)
            self.fleet.kick()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.fleet.idle:
            self.fleet.idle.remove(self)
        job, self.job = self.job, None
        if job is not None:
            if not self.buf and self.need is None and job.resent < MAX_RESENDS:
                # serve closed this idle connection (its header deadline) as the request went
                # out, before any byte of an answer. As HTTP clients do for idempotent requests
                # (every request of a node is: events by event_id, acks are upserts), send it
                # again on another connection (a sweep may close several at once); its latency
                # still counts from its scheduled time, and the output counts these.
                self.fleet.resend(job)
            else:
                self.fleet.failed(job, "connection lost")
        self.fleet.lost += 1
        self.fleet.conns.remove(self)
        self.fleet.reconnect()


class Fleet:
    """The nodes of one worker: their schedule, their state, the connection pool."""

    def __init__(self, index: int, port: int, args: argparse.Namespace, t0: float) -> None:
        self.args = args
        self.index = index
        self.port = port
        self.closing = False
        self.t0 = t0
        self.stop_at = t0 + args.seconds
        self.rng = random.Random(1000 + index)
        self.nodes = list(range(index, args.nodes, args.client_processes))
        self.names = [f"node-{n:06d}".encode() for n in self.nodes]
        self.running: list[bytes] = [BASELINE.encode()] * len(self.nodes)  # release each node runs
        self.fails = [self.rng.random() < args.failed_share for _ in self.nodes]
        self.batch_no = [0] * len(self.nodes)
        cadence = args.cadence
        periodic: list[tuple[float, int, int]] = []
        for i in range(len(self.nodes)):
            offset = self.rng.uniform(0, cadence)
            periodic.append((offset, 0, i))  # poll
            periodic.append(((offset + cadence / 2) % cadence, 1, i))  # events
        periodic.sort()
        self.periodic = periodic
        self.later: list[tuple[float, int, int, bytes]] = []  # heap: (due, seq, node, status)
        self.later_seq = 0
        self.queue: deque[Job] = deque()
        self.idle: list[Conn] = []
        self.conns: list[Conn] = []
        self.stats = Stats()
        self.outstanding = 0
        self.lost = 0
        self.opened = 0  # connections opened so far (source addresses)

    def source(self) -> str:
        """The loopback address the next connection comes from: `--per-address` connections per
        address (127.<worker + 1>.<k>.1), as nodes behind many addresses would; serve caps the
        connections of one client address (64 by default)."""
        self.opened += 1
        k = (self.opened - 1) // self.args.per_address
        return f"127.{self.index + 1}.{k // 250}.{k % 250 + 1}"

    def reconnect(self) -> None:
        """Replace a connection the server closed (an idle keep-alive connection is closed after
        serve's header timeout)."""
        if self.closing:
            return

        async def connect() -> None:
            loop = asyncio.get_running_loop()
            try:
                await loop.create_connection(
                    lambda: Conn(self), "127.0.0.1", self.port, local_addr=(self.source(), 0)
                )
            except OSError:
                await asyncio.sleep(0.1)
                self.reconnect()

        asyncio.get_running_loop().create_task(connect())

    # scheduling ------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self.outstanding += 1
        self.queue.append(job)
        self.kick()

    def kick(self) -> None:
        while self.queue and self.idle:
            conn = self.idle.pop()
            if conn.transport is None:
                continue
            conn.send(self.queue.popleft())

    def poll_job(self, i: int, due: float) -> Job:
        path = f"/v1/releases/latest?channel={CHANNEL}&node_id={self.names[i].decode()}"
        return Job(0, due, _request("GET", path), i)

    def events_job(self, i: int, due: float) -> Job:
        self.batch_no[i] += 1
        name = self.names[i].decode()
        stamp = datetime.now(UTC).isoformat()
        prefix = f"{name}-{self.batch_no[i]}"
        events = ",".join(
            f'{{"event_id":"{prefix}-{k}","event_type":"{"heartbeat" if k else "metrics"}",'
            f'"node_id":"{name}","timestamp":"{stamp}","release_id":"'
            f'{self.running[i].decode()}","payload":{{"cpu":0.{k}1,"mem_mb":{800 + k},'
            f'"uptime_s":{self.batch_no[i] * 60}}}}}'
            for k in range(EVENTS_PER_BATCH)
        )
        return Job(1, due, _request("POST", "/v1/events", f'{{"events":[{events}]}}'.encode()), i)

    def ack_job(self, i: int, release: bytes, status: bytes, due: float) -> Job:
        body = b'{"release_id":"' + release + b'","status":"' + status + b'"}'
        path = f"/v1/nodes/{self.names[i].decode()}/ack"
        return Job(2, due, _request("POST", path, body), i)

    async def schedule(self) -> None:
        """Submit every request at its due time until the run's end."""
        cadence = self.args.cadence
        cycle = 0
        pos = 0
        periodic = self.periodic
        while True:
            now = time.perf_counter()
            if pos == len(periodic):
                pos, cycle = 0, cycle + 1
            next_periodic = self.t0 + cycle * cadence + periodic[pos][0] if periodic else 1e18
            next_later = self.later[0][0] if self.later else 1e18
            due = min(next_periodic, next_later)
            if due >= self.stop_at:
                return
            if due > now:
                await asyncio.sleep(min(due - now, 0.005))
                continue
            if next_later <= next_periodic:
                _, _, i, status = heapq.heappop(self.later)
                self.submit(self.ack_job(i, self.running[i], status, next_later))
            else:
                _, kind, i = periodic[pos]
                pos += 1
                job = self.poll_job(i, due) if kind == 0 else self.events_job(i, due)
                self.submit(job)

    # answers ----------------------------------------------------------------------------------

    def answered(self, job: Job, status: int, body: bytes) -> None:
        self.outstanding -= 1
        now = time.perf_counter()
        stats = self.stats
        key = f"{ROUTES[job.route]} {status}"
        stats.statuses[key] = stats.statuses.get(key, 0) + 1
        ok = status == 200 or (job.route == 2 and status == 201)
        if not ok:
            stats.errors[job.route] += 1
            return
        stats.latencies[job.route].append((now - job.scheduled) * 1000)
        stats.due[job.route].append(job.scheduled - self.t0)
        if job.route == 0:
            start = body.find(b'"release_id":"')
            if start < 0:
                stats.errors[0] += 1
                return
            start += 14
            release = body[start : body.find(b'"', start)]
            i = job.node
            if release != self.running[i]:
                # The desired release changed: ack `pending` now, `active`/`failed` after the
                # install; the node runs the new release from now on (no repeated acks).
                self.running[i] = release
                self.submit(self.ack_job(i, release, b"pending", now))
                delay = self.rng.uniform(1.0, 5.0)
                self.later_seq += 1
                final = b"failed" if self.fails[i] else b"active"
                heapq.heappush(self.later, (now + delay, self.later_seq, i, final))

    def resend(self, job: Job) -> None:
        job.resent += 1
        key = f"{ROUTES[job.route]} resent after a keep-alive close"
        self.stats.statuses[key] = self.stats.statuses.get(key, 0) + 1
        self.queue.appendleft(job)
        self.kick()

    def failed(self, job: Job, reason: str) -> None:
        self.outstanding -= 1
        self.stats.errors[job.route] += 1
        key = f"{ROUTES[job.route]} {reason}"
        self.stats.statuses[key] = self.stats.statuses.get(key, 0) + 1


def _worker_main(
    index: int, port: int, args: argparse.Namespace, start_at: float, out: Any
) -> None:
    async def run() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter() + max(0.0, start_at - time.time())
        fleet = Fleet(index, port, args, t0)
        per = args.connections // args.client_processes + (
            1 if index < args.connections % args.client_processes else 0
        )
        for _ in range(max(1, per)):
            await loop.create_connection(
                lambda: Conn(fleet), "127.0.0.1", port, local_addr=(fleet.source(), 0)
            )
        await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
        await fleet.schedule()
        drain_until = time.perf_counter() + args.drain
        while fleet.outstanding > 0 and time.perf_counter() < drain_until:
            await asyncio.sleep(0.01)
        fleet.closing = True
        unanswered = list(fleet.queue) + [c.job for c in fleet.conns if c.job is not None]
        for job in unanswered:
            fleet.failed(job, "unanswered after the drain")
        timed_out = len(unanswered)
        t = os.times()
        return {
            "latencies": fleet.stats.latencies,
            "due": fleet.stats.due,
            "errors": fleet.stats.errors,
            "statuses": fleet.stats.statuses,
            "timed_out": timed_out,
            "cpu": t.user + t.system,
        }

    try:
        out.put(asyncio.run(run()))
    except BaseException as exc:  # report, do not hang the parent
        out.put({"crash": repr(exc)})


# --- the operator --------------------------------------------------------------------------------


class Operator:
    """Publishes releases and the plan, then watches the plan (blocking HTTP, its own thread)."""

    def __init__(self, port: int, args: argparse.Namespace) -> None:
        self.port = port
        self.args = args
        self.latencies: dict[str, list[float]] = {route: [] for route in OPERATOR_ROUTES}
        self.errors: dict[str, int] = {route: 0 for route in OPERATOR_ROUTES}
        self.stages_reached: list[str] = []
        self.phase = ""
        self.transitions: list[dict[str, Any]] = []

    def call(self, route: str, method: str, path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            AUTH.url(self.port, path),
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Content-Type": "application/json",
                "X-Autonomy-Operator": "bench-fleet",
                **AUTH.headers(),
            },
            method=method,
        )
        started = time.perf_counter()
        try:
            with AUTH.urlopen(req, timeout=30) as resp:
                data = json.loads(resp.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.errors[route] += 1
            print(f"operator: {method} {path} failed: {exc}", file=sys.stderr)
            return None
        self.latencies[route].append((time.perf_counter() - started) * 1000)
        return data

    def publish(self, release_id: str) -> None:
        self.call(
            "publish",
            "POST",
            "/v1/releases",
            {"release_id": release_id, "channel": CHANNEL, "artifact_ref": f"oci://r/{release_id}"},
        )

    def plan_spec(self) -> dict[str, Any]:
        stages = []
        for n, percent in enumerate(self.args.stages):
            expected = self.args.nodes * percent / 100
            stages.append(
                {
                    "stage_id": f"s{n + 1}-{percent:g}pct",
                    "percent": percent,
                    "gates": [
                        {"kind": "time_soak", "seconds": self.args.soak},
                        {
                            "kind": "ack_success",
                            "min_ratio": self.args.min_ratio,
                            "min_acks": max(1, int(expected * 0.5)),
                        },
                        {"kind": "ack_failure", "max_ratio": self.args.max_failed},
                    ],
                }
            )
        return {
            "plan_id": PLAN_ID,
            "release_id": NEW_RELEASE,
            "description": "bench/fleet.py staged rollout",
            "stages": stages,
        }

    def run(self, t0_wall: float, stop: threading.Event) -> None:
        time.sleep(max(0.0, t0_wall + self.args.plan_at - time.time()))
        if stop.is_set():
            return
        self.publish(NEW_RELEASE)
        self.call("publish", "POST", "/v1/rollouts", self.plan_spec())
        while not stop.wait(2.0):
            status = self.call("rollout_status", "GET", f"/v1/rollouts/{PLAN_ID}/status")
            if status is not None:
                self.observe(status)
        status = self.call("rollout_status", "GET", f"/v1/rollouts/{PLAN_ID}/status")
        if status is not None:
            self.observe(status)

    def observe(self, status: dict[str, Any]) -> None:
        self.phase = status["phase"]
        self.stages_reached = [
            stage["stage_id"]
            for stage in status["stages"]
            if stage["phase"] in ("open", "promoted", "halted")
        ]
        self.transitions = status["history"]


# --- the run --------------------------------------------------------------------------------------


def _pct(data: list[float], p: float) -> float:
    if not data:
        return 0.0
    return data[min(len(data) - 1, int(p / 100 * len(data)))]


def write_turn_seconds(port: int) -> tuple[float, float, float, float, float]:
    """(wait, held) seconds of SQLite's write turn so far, the turns taken, and the seconds and
    count of the writers' WAL fsyncs after their turns, summed over the server's workers, from
    its `/metrics` (`cp_store_write_turn_seconds_total`, `cp_store_write_turns_total`,
    `cp_store_wal_sync_seconds_total`, `cp_store_wal_syncs_total`); zeros on PostgreSQL or when
    unread."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    except OSError:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    found = {"wait": 0.0, "held": 0.0, "turns": 0.0, "sync": 0.0, "syncs": 0.0}
    totals = {
        "cp_store_write_turns_total ": "turns",
        "cp_store_wal_sync_seconds_total ": "sync",
        "cp_store_wal_syncs_total ": "syncs",
    }
    for line in text.splitlines():
        if line.startswith("cp_store_write_turn_seconds_total{"):
            phase = line.split('phase="', 1)[1].split('"', 1)[0]
            found[phase] = float(line.rsplit(" ", 1)[1])
        for prefix, key in totals.items():
            if line.startswith(prefix):
                found[key] = float(line.rsplit(" ", 1)[1])
    return found["wait"], found["held"], found["turns"], found["sync"], found["syncs"]


def proc_runqueue_wait_seconds(pid: int) -> float:
    """Seconds the process tree's threads spent runnable but waiting for a CPU (schedstat;
    threads that already ended are not counted): how much other work on the machine held it
    back."""
    total = 0
    for one in proc_tree(pid):
        for task in Path(f"/proc/{one}/task").glob("*/schedstat"):
            try:
                total += int(task.read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9


def proc_peak_rss_mb(pid: int) -> float:
    """The sum of each process's peak RSS (VmHWM) over the tree (the supervisor and each
    worker): an upper bound, since pages the processes share (the interpreter's and the
    libraries' code) count once per process."""
    total = 0
    for one in proc_tree(pid):
        try:
            with open(f"/proc/{one}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def proc_pss_mb(pid: int) -> float:
    """The tree's proportional set size now (shared pages split between the processes)."""
    total = 0
    for one in proc_tree(pid):
        try:
            with open(f"/proc/{one}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=180.0, help="scheduled seconds")
    parser.add_argument("--cadence", type=float, default=60.0, help="seconds between polls")
    parser.add_argument(
        "--connections",
        type=int,
        default=256,
        help="keep-alive connections in all (serve allows 64 per client address by default)",
    )
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument(
        "--per-address",
        type=int,
        default=32,
        help="connections per loopback source address (serve allows 64 per client address)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="serve --workers N (serving processes, SQLite; default: one per CPU, as "
        "docs/serve.md advises; PostgreSQL: 1)",
    )
    parser.add_argument("--failed-share", type=float, default=0.01)
    parser.add_argument(
        "--stages",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[1.0, 10.0, 50.0, 100.0],
        help="stage percents, comma separated",
    )
    parser.add_argument("--soak", type=float, default=None, help="time_soak seconds per stage")
    parser.add_argument("--min-ratio", type=float, default=0.9)
    parser.add_argument("--max-failed", type=float, default=0.2)
    parser.add_argument("--plan-at", type=float, default=None, help="seconds into the run")
    parser.add_argument("--drain", type=float, default=15.0)
    parser.add_argument("--postgres-url", default=None, help="run serve on this PostgreSQL db")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--timeline",
        type=float,
        default=0.0,
        help="also print p99 per node route per window of this many seconds (by due time)",
    )
    parser.add_argument("--serve-arg", action="append", default=[], help="extra serve argument")
    add_auth_argument(parser)
    args = parser.parse_args(argv)
    if args.soak is None:
        args.soak = args.cadence / 4
    if args.plan_at is None:
        args.plan_at = min(10.0, args.seconds / 10)
    if args.auth == "mtls":
        parser.error("--auth mtls is not supported by this bench (use none or token)")
    if args.nodes < 1 or args.seconds <= 0 or args.cadence <= 0:
        parser.error("--nodes, --seconds and --cadence must be positive")
    return args


def run(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    use_auth(args.auth, work)
    store = "postgresql" if args.postgres_url else "sqlite"
    if args.workers is None:
        args.workers = 1 if args.postgres_url else (os.cpu_count() or 1)
    print(f"machine: {machine_summary()}; store {store}; work dir {work}", file=sys.stderr)
    extra = list(args.serve_arg)
    if args.workers != 1:
        extra += ["--workers", str(args.workers)]
    if args.postgres_url:
        extra += ["--postgres-url", args.postgres_url]
    metrics_port = free_port()
    extra += ["--metrics-addr", f"127.0.0.1:{metrics_port}"]
    srv = start_orchestrator(work / "data", *extra, log=work / "serve.log")
    summary: dict[str, Any] = {}
    try:
        operator = Operator(srv.port, args)
        operator.publish(BASELINE)
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        start_at = time.time() + 1.0 + args.nodes / 100_000  # time to build the schedules
        procs = [
            ctx.Process(target=_worker_main, args=(i, srv.port, args, start_at, out))
            for i in range(args.client_processes)
        ]
        for proc in procs:
            proc.start()
        stop = threading.Event()
        op_thread = threading.Thread(target=operator.run, args=(start_at, stop), daemon=True)
        op_thread.start()
        time.sleep(max(0.0, start_at - time.time()))
        cpu_before = proc_cpu_seconds(srv.proc.pid)
        wait_before = proc_runqueue_wait_seconds(srv.proc.pid)
        began = time.time()
        turn_before = turn = write_turn_seconds(metrics_port)
        turn_busy: list[tuple[float, float]] = []  # (seconds into the run, held share of 5 s)
        peak_pss = proc_pss_mb(srv.proc.pid)
        processes = len(proc_tree(srv.proc.pid))
        while time.time() < start_at + args.seconds:  # sample the tree's PSS every 5 s
            t = time.time()
            time.sleep(max(0.0, min(5.0, start_at + args.seconds - t)))
            peak_pss = max(peak_pss, proc_pss_mb(srv.proc.pid))
            now_turn = write_turn_seconds(metrics_port)
            turn_busy.append((t - start_at, (now_turn[1] - turn[1]) / max(1e-3, time.time() - t)))
            turn = now_turn
        cpu_window = proc_cpu_seconds(srv.proc.pid) - cpu_before
        wait_window = proc_runqueue_wait_seconds(srv.proc.pid) - wait_before
        window = time.time() - began
        turn_wait = turn[0] - turn_before[0]
        turn_held = turn[1] - turn_before[1]
        turns = turn[2] - turn_before[2]
        wal_sync, wal_syncs = turn[3] - turn_before[3], turn[4] - turn_before[4]
        stop.set()
        results = [out.get(timeout=args.drain + 120) for _ in procs]
        for proc in procs:
            proc.join(timeout=10)
        op_thread.join(timeout=40)
        crashes = [r["crash"] for r in results if "crash" in r]
        if crashes:
            raise RuntimeError(f"a generator process failed: {crashes}")
        peak_rss = proc_peak_rss_mb(srv.proc.pid)
        base = {"nodes": args.nodes, "cadence_s": args.cadence, "seconds": args.seconds,
                "workers": args.workers,
                "store": store, "auth": args.auth}  # fmt: skip
        statuses: dict[str, int] = {}
        for r in results:
            for key, n in r["statuses"].items():
                statuses[key] = statuses.get(key, 0) + n
        total_errors = 0
        print(f"{'route':<16}{'req/s':>9}{'answers':>9}{'errors':>8}"
              f"{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  (ms, from scheduled time)",
              file=sys.stderr)  # fmt: skip
        per_route: dict[str, dict[str, float]] = {}
        for n, route in enumerate(ROUTES):
            lat = sorted(x for r in results for x in r["latencies"][n])
            errors = sum(r["errors"][n] for r in results)
            per_route[route] = _route_figures(route, lat, errors, args.seconds, base, emit)
            total_errors += errors
        for route in OPERATOR_ROUTES:
            lat = sorted(operator.latencies[route])
            per_route[route] = _route_figures(
                route, lat, operator.errors[route], args.seconds, base, emit
            )
            total_errors += operator.errors[route]
        if args.timeline > 0:
            _timeline(results, args.timeline, base, emit)
            print(
                "write turn held, % of each 5 s: "
                + " ".join(f"{at:.0f}s:{b * 100:.0f}" for at, b in turn_busy),
                file=sys.stderr,
            )
        generator_cpu = sum(r["cpu"] for r in results)
        figures = {
            "server_cpu_percent": (cpu_window / window * 100, "% of one core"),
            "server_runqueue_wait_percent": (wait_window / window * 100, "% of wall time"),
            "server_peak_rss_mb": (peak_rss, "MiB"),
            "server_peak_pss_mb": (peak_pss, "MiB"),
            "server_processes": (processes, "processes"),
            "generator_cpu_percent": (generator_cpu / window * 100, "% of one core"),
            # SQLite: the share of the window the one write lock was held, and the writers'
            # summed wait for it (several writer threads may wait at once)
            "write_turn_held_percent": (turn_held / window * 100, "% of wall time"),
            "write_turn_peak_held_percent": (
                max((b for _, b in turn_busy), default=0.0) * 100,
                "% of a 5 s window",
            ),
            "write_turn_wait_percent": (turn_wait / window * 100, "% of wall time, summed"),
            "write_turns_per_second": (turns / window, "turns/s"),
            "write_turn_mean_held_ms": (turn_held / max(turns, 1) * 1000, "ms"),
            # the writers' fsyncs of the WAL after their turns (outside them)
            "wal_syncs_per_second": (wal_syncs / window, "fsyncs/s"),
            "wal_sync_mean_ms": (wal_sync / max(wal_syncs, 1) * 1000, "ms"),
            "errors_total": (total_errors, "requests"),
            "plan_stages_reached": (len(operator.stages_reached), "stages"),
        }
        for name, (value, unit) in figures.items():
            emit({"figure": name, "value": round(value, 1), "unit": unit, **base})
            print(f"{name:<24} {value:10.1f} {unit}", file=sys.stderr)
        print(f"plan {PLAN_ID}: phase {operator.phase}, stages reached "
              f"{operator.stages_reached}", file=sys.stderr)  # fmt: skip
        print(f"answers by route and status: {json.dumps(statuses, sort_keys=True)}",
              file=sys.stderr)  # fmt: skip
        summary = {
            "routes": per_route,
            "errors_total": total_errors,
            "plan_phase": operator.phase,
            "plan_stages_reached": operator.stages_reached,
            "plan_history": [entry["action"] for entry in operator.transitions],
            "statuses": statuses,
            "server_peak_rss_mb": peak_rss,
            "server_peak_pss_mb": peak_pss,
        }
        emit({"figure": "plan_phase", "value": operator.phase, "unit": "", **base})
    finally:
        srv.stop()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return summary


def _route_figures(
    route: str,
    lat: list[float],
    errors: int,
    seconds: float,
    base: dict[str, Any],
    emit: Callable[[dict[str, Any]], None],
) -> dict[str, float]:
    figures = {
        "rate": len(lat) / seconds,
        "answers": float(len(lat)),
        "errors": float(errors),
        "p50_ms": _pct(lat, 50),
        "p95_ms": _pct(lat, 95),
        "p99_ms": _pct(lat, 99),
        "max_ms": lat[-1] if lat else 0.0,
    }
    units = {"rate": "req/s", "answers": "requests", "errors": "requests"}
    for name, value in figures.items():
        emit({"figure": f"{route}.{name}", "value": round(value, 2),
              "unit": units.get(name, "ms"), **base})  # fmt: skip
    print(f"{route:<16}{figures['rate']:>9.1f}{len(lat):>9}{errors:>8}"
          f"{figures['p50_ms']:>9.1f}{figures['p95_ms']:>9.1f}{figures['p99_ms']:>9.1f}"
          f"{figures['max_ms']:>9.1f}", file=sys.stderr)  # fmt: skip
    return figures


def _timeline(
    results: list[dict[str, Any]],
    window: float,
    base: dict[str, Any],
    emit: Callable[[dict[str, Any]], None],
) -> None:
    """p99 per node route per window of due time: where in the run a backlog builds (a stage
    opening shows as a burst of acks)."""
    buckets: dict[tuple[int, int], list[float]] = {}
    for r in results:
        for n in range(len(ROUTES)):
            for due, ms in zip(r["due"][n], r["latencies"][n], strict=True):
                buckets.setdefault((int(due // window), n), []).append(ms)
    print(f"{'from s':>7}" + "".join(f"{route + ' n/p99':>22}" for route in ROUTES),
          file=sys.stderr)  # fmt: skip
    for w in sorted({w for w, _ in buckets}):
        cells = []
        for n, route in enumerate(ROUTES):
            lat = sorted(buckets.get((w, n), []))
            p99 = _pct(lat, 99)
            cells.append(f"{len(lat):>10} {p99:>10.0f}ms")
            emit({"figure": f"timeline.{route}.p99_ms", "from_s": w * window,
                  "value": round(p99, 1), "answers": len(lat), "unit": "ms", **base})  # fmt: skip
        print(f"{w * window:>7.0f}" + "".join(cells), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def emit(line: dict[str, Any]) -> None:
        print(json.dumps(line), flush=True)

    summary = run(args, emit)
    return 0 if summary.get("errors_total") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
