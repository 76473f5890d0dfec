"""Benchmark the hot paths against their ceilings, measured in the same run on this machine.

    python bench/ingest.py [--seconds 10] [--clients 8]

1. POST /v1/events, 100-event batches from --clients keep-alive connections, against the real
   `autonomy-orchestrator serve` on a temporary data dir; ceiling: plain sqlite3 `executemany` of
   the same rows into the same schema (copied from a freshly migrated store) with the same
   PRAGMAs (WAL, synchronous=FULL), one `BEGIN IMMEDIATE ... COMMIT` per 100 events.
   Goal: >= 60 % of the ceiling.
2. GET /v1/health against a bare ASGI hello-world app on daphne. Goal: >= 25 %.
3. GET /v1/events?node_id=...&limit=100 over a store of --store-events (1,000,000) events against
   the same SQL through plain sqlite3. Goal: >= 30 %.

Loopback only; every server is a subprocess stopped by its pid. Figures go to
docs/performance.md. Not a CI test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    add_auth_argument,
    get_request,
    machine_summary,
    post_request,
    run_load,
    start_hello_daphne,
    start_orchestrator,
    use_auth,
    verdict,
)

DB_NAME = "orchestrator.sqlite3"
TABLE = "events_event"
COLUMNS = (
    "event_id",
    "event_type",
    "node_id",
    "timestamp",
    "lock_fingerprint",
    "release_id",
    "payload",
    "received_at",
)
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
INSERT = (
    f'INSERT INTO "{TABLE}" ({_QUOTED}) VALUES ({", ".join("?" * len(COLUMNS))}) '
    'ON CONFLICT("node_id", "event_id") DO NOTHING'
)
SELECT = f'SELECT "id", "payload" FROM "{TABLE}" WHERE "node_id" = ? ORDER BY "id" DESC LIMIT ?'
BATCH = 100
NODES = 1000
MARK = "@@@@@@@@@@@@"  # replaced by 12 random hex characters per batch: unique event ids


def make_event(n: int, prefix: str, node: int) -> dict[str, object]:
    """About 400 bytes, like the events in reference/perf-baselines.md."""
    return {
        "event_id": f"{prefix}-{n:03d}",
        "event_type": f"type_{n % 10}",
        "node_id": f"node-{node:05d}",
        "timestamp": "2026-05-01T12:00:00.123456+00:00",
        "lock_fingerprint": "sha256:" + "ab12" * 16,
        "release_id": "rel-2026.05.01",
        "payload": {
            "cpu": 0.42,
            "mem_mb": 812,
            "disk_free_gb": 12.5,
            "uptime_s": 86400,
            "app": "edge-agent",
            "tags": ["a", "b"],
        },
    }


BATCH_TEMPLATE = orjson.dumps(
    {"events": [make_event(n, MARK, (n * 37) % NODES) for n in range(BATCH)]}
)
ROW_TEMPLATE: list[tuple[str, ...]] = [
    (
        str(e["event_id"]),
        str(e["event_type"]),
        str(e["node_id"]),
        str(e["timestamp"]),
        str(e["lock_fingerprint"]),
        str(e["release_id"]),
        orjson.dumps(e).decode(),
    )
    for e in (make_event(n, MARK, (n * 37) % NODES) for n in range(BATCH))
]


def ingest_request(_worker: int, _seq: int) -> bytes:
    body = BATCH_TEMPLATE.replace(MARK.encode(), os.urandom(6).hex().encode())
    return post_request("/v1/events", body)


def batch_rows(received_at: str) -> list[tuple[object, ...]]:
    prefix = os.urandom(6).hex()
    return [
        (
            r[0].replace(MARK, prefix),
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6].replace(MARK, prefix),
            received_at,
        )
        for r in ROW_TEMPLATE
    ]


def connect_like_server(path: Path) -> sqlite3.Connection:
    """The server's PRAGMAs (orchestrator_site/settings.py): WAL, synchronous=FULL."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def ceiling_ingest(
    db: Path, warmup: float, seconds: float, batches_per_commit: int = 1
) -> tuple[float, float]:
    """Plain sqlite3 executemany, one BEGIN IMMEDIATE per 100 rows: (events/s, CPU seconds) over
    the measured `seconds`. `batches_per_commit` > 1 models a group commit."""
    conn = connect_like_server(db)
    received_at = "2026-11-27 07:00:00.000000"
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    counted = 0
    cpu_start: float | None = None
    while True:
        conn.execute("BEGIN IMMEDIATE")
        inserted = 0
        for _ in range(batches_per_commit):
            inserted += conn.executemany(INSERT, batch_rows(received_at)).rowcount
        conn.execute("COMMIT")
        now = time.perf_counter()
        if now >= stop_at:
            break
        if now >= measure_from:
            if cpu_start is None:
                cpu_start = time.process_time()
            counted += inserted
    conn.close()
    return counted / seconds, time.process_time() - (cpu_start or 0.0)


def fill_store(db: Path, total: int) -> float:
    """Fill the migrated schema with `total` events fast (indexes rebuilt afterwards)."""
    started = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    indexes = [
        row[0]
        for row in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type='index' AND tbl_name=? AND sql IS NOT NULL",
            (TABLE,),
        )
    ]
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=? AND sql IS NOT NULL",
            (TABLE,),
        )
    ]
    conn.execute("PRAGMA synchronous=OFF")
    for name in names:
        conn.execute(f'DROP INDEX "{name}"')
    template = ROW_TEMPLATE
    received_at = "2026-11-27 07:00:00.000000"
    chunk = 50_000
    conn.execute("BEGIN")
    for base in range(0, total, chunk):
        rows = []
        for i in range(base, min(total, base + chunk)):
            r = template[i % BATCH]
            prefix = f"f{i // BATCH:011d}"
            node = f"node-{i % NODES:05d}"
            rows.append(
                (
                    r[0].replace(MARK, prefix),
                    r[1],
                    node,
                    r[3],
                    r[4],
                    r[5],
                    r[6].replace(MARK, prefix).replace(r[2], node),
                    received_at,
                )
            )
        conn.executemany(INSERT, rows)
    conn.execute("COMMIT")
    for sql in indexes:
        conn.execute(sql)
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


def ceiling_query(
    db: Path, warmup: float, seconds: float, cache_kib: int = 0
) -> tuple[float, float]:
    """The list query through plain sqlite3, one thread: (queries/s, CPU seconds). With
    `cache_kib`, the page cache the server's read connection uses (dbthreads.INLINE_CACHE_KIB)."""
    conn = connect_like_server(db)
    if cache_kib:
        conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    cpu_start: float | None = None
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    n = counted = 0
    while True:
        conn.execute(SELECT, (f"node-{(n * 7919) % NODES:05d}", 100)).fetchall()
        n += 1
        now = time.perf_counter()
        if now >= stop_at:
            break
        if now >= measure_from:
            if cpu_start is None:
                cpu_start = time.process_time()
            counted += 1
    conn.close()
    return counted / seconds, time.process_time() - (cpu_start or 0.0)


def list_request(_worker: int, seq: int) -> bytes:
    return get_request(f"/v1/events?node_id=node-{(seq * 7919 + _worker) % NODES:05d}&limit=100")


def server_cpu(server, fn):
    before = server.cpu_seconds()
    result = fn()
    return result, server.cpu_seconds() - before


def _load(srv, factory, connections: int, args: argparse.Namespace):
    return run_load(
        srv.port,
        factory,
        connections=connections,
        processes=args.client_processes,
        seconds=args.seconds,
        warmup=args.warmup,
        cpu_probe=srv.cpu_seconds,
    )


def _detail(res, seconds: float) -> str:
    return (
        f"p50 {res.pct(50):.1f} ms, p99 {res.pct(99):.1f} ms, server CPU "
        f"{res.server_cpu / seconds * 100:.0f}%, client CPU "
        f"{res.client_cpu / seconds * 100:.0f}%, {res.errors} errors"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; median ratio")
    parser.add_argument("--clients", type=int, default=8, help="concurrent ingest connections")
    parser.add_argument("--get-connections", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--store-events", type=int, default=1_000_000)
    parser.add_argument("--only", choices=["ingest", "health", "list"], action="append")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    add_auth_argument(parser)
    args = parser.parse_args()
    only = set(args.only or ["ingest", "health", "list"])

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    use_auth(args.auth, work)
    print(f"auth: {args.auth}")
    print(f"machine: {machine_summary()}; sqlite {sqlite3.sqlite_version}")
    print(f"work dir: {work}")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} (other processes share the CPUs)")
    summary: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)

    def conclude(name: str, ratios: list[float], goal: float, per_cpu: list[float]) -> None:
        rounds = ", ".join(f"{r * 100:.0f}%" for r in ratios)
        line = (
            f"{name:7} median ratio {verdict(statistics.median(ratios), goal)}; rounds: {rounds}; "
            f"per CPU-second: {statistics.median(per_cpu) * 100:.0f}%"
        )
        say(line)
        summary.append(line)

    try:
        # A migrated, empty store to copy: the server creates the schema.
        template_dir = work / "template"
        start_orchestrator(template_dir).stop()
        template_db = template_dir / DB_NAME
        made = [0]

        def fresh() -> Path:
            made[0] += 1
            d = work / f"store-{made[0]}"
            d.mkdir(mode=0o700)
            shutil.copy(template_db, d / DB_NAME)
            return d

        if "ingest" in only:
            ratios, per_cpu, grouped_ratios = [], [], []
            for n in range(args.rounds):
                data = fresh()
                srv = start_orchestrator(data)
                try:
                    res = _load(srv, ingest_request, args.clients, args)
                finally:
                    srv.stop()
                stored = (
                    sqlite3.connect(data / DB_NAME)
                    .execute(f'SELECT count(*) FROM "{TABLE}"')
                    .fetchone()[0]
                )
                shutil.rmtree(data)
                data = fresh()
                ceiling, ceiling_cpu = ceiling_ingest(data / DB_NAME, args.warmup, args.seconds)
                shutil.rmtree(data)
                data = fresh()
                grouped, _ = ceiling_ingest(data / DB_NAME, args.warmup, args.seconds, 10)
                shutil.rmtree(data)
                grouped_ratios.append(res.rate * BATCH / grouped)
                ratios.append(res.rate * BATCH / ceiling)
                per_cpu.append(
                    (res.ok * BATCH / res.server_cpu) / (ceiling * args.seconds / ceiling_cpu)
                )
                say(
                    f"ingest  round {n + 1}: HTTP {res.rate * BATCH:,.0f} events/s "
                    f"({res.rate:,.1f} req/s; {_detail(res, args.seconds)}; {stored:,} rows stored)"
                    f" | ceiling sqlite3 executemany {ceiling:,.0f} events/s"
                    f" (CPU {ceiling_cpu / args.seconds * 100:.0f}%); with 10 batches per commit "
                    f"(like the server's group commit) {grouped:,.0f} events/s"
                )
            conclude("ingest", ratios, 0.60, per_cpu)
            line = (
                "ingest  against the 10-batches-per-commit ceiling: median "
                f"{statistics.median(grouped_ratios) * 100:.0f}% (information, not the goal)"
            )
            say(line)
            summary.append(line)

        if "health" in only:
            ratios, per_cpu = [], []
            for n in range(args.rounds):
                hello = start_hello_daphne(work)
                try:
                    hres = _load(hello, lambda w, s: get_request("/"), args.get_connections, args)
                finally:
                    hello.stop()
                data = fresh()
                srv = start_orchestrator(data)
                try:
                    sres = _load(
                        srv, lambda w, s: get_request("/v1/health"), args.get_connections, args
                    )
                finally:
                    srv.stop()
                shutil.rmtree(data)
                ratios.append(sres.rate / hres.rate)
                per_cpu.append((sres.ok / sres.server_cpu) / (hres.ok / hres.server_cpu))
                say(
                    f"health  round {n + 1}: GET /v1/health {sres.rate:,.0f} req/s "
                    f"({_detail(sres, args.seconds)}) | bare ASGI hello on daphne "
                    f"{hres.rate:,.0f} req/s ({_detail(hres, args.seconds)})"
                )
            conclude("health", ratios, 0.25, per_cpu)

        if "list" in only:
            store = fresh()
            took = fill_store(store / DB_NAME, args.store_events)
            say(f"list    filled {args.store_events:,} events in {took:.0f} s")
            ratios, per_cpu, cached_ratios = [], [], []
            for n in range(args.rounds):
                q_ceiling, q_cpu = ceiling_query(store / DB_NAME, 1.0, args.seconds)
                q_cached, _ = ceiling_query(store / DB_NAME, 1.0, args.seconds, 64 * 1024)
                srv = start_orchestrator(store)
                try:
                    lres = _load(srv, list_request, args.get_connections, args)
                finally:
                    srv.stop()
                ratios.append(lres.rate / q_ceiling)
                cached_ratios.append(lres.rate / q_cached)
                per_cpu.append((lres.ok / lres.server_cpu) / (q_ceiling * args.seconds / q_cpu))
                say(
                    f"list    round {n + 1}: GET /v1/events?node_id=..&limit=100 "
                    f"{lres.rate:,.0f} req/s ({_detail(lres, args.seconds)}) | same query, plain "
                    f"sqlite3, one thread {q_ceiling:,.0f} queries/s "
                    f"(CPU {q_cpu / args.seconds * 100:.0f}%); with the server's 64 MiB page "
                    f"cache {q_cached:,.0f} queries/s"
                )
            conclude("list", ratios, 0.30, per_cpu)
            line = (
                "list    against plain sqlite3 with the server's 64 MiB page cache: median "
                f"{statistics.median(cached_ratios) * 100:.0f}% (information, not the goal)"
            )
            say(line)
            summary.append(line)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\nsummary")
    print(*summary, sep="\n")
    print(f"load average after the run: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
