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
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    get_request,
    machine_summary,
    post_request,
    run_load,
    start_hello_daphne,
    start_orchestrator,
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
    'ON CONFLICT("event_id") DO NOTHING'
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
ROW_TEMPLATE = [
    (
        e["event_id"],
        e["event_type"],
        e["node_id"],
        e["timestamp"],
        e["lock_fingerprint"],
        e["release_id"],
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


def ceiling_ingest(db: Path, warmup: float, seconds: float) -> float:
    """Plain sqlite3 executemany, one BEGIN IMMEDIATE per 100 rows; events/s over `seconds`."""
    conn = connect_like_server(db)
    received_at = "2026-11-27 07:00:00.000000"
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    counted = 0
    while True:
        rows = batch_rows(received_at)
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.executemany(INSERT, rows)
        inserted = cur.rowcount
        conn.execute("COMMIT")
        now = time.perf_counter()
        if now >= stop_at:
            break
        if now >= measure_from:
            counted += inserted
    conn.close()
    return counted / seconds


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


def ceiling_query(db: Path, warmup: float, seconds: float) -> float:
    conn = connect_like_server(db)
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
            counted += 1
    conn.close()
    return counted / seconds


def list_request(_worker: int, seq: int) -> bytes:
    return get_request(f"/v1/events?node_id=node-{(seq * 7919 + _worker) % NODES:05d}&limit=100")


def server_cpu(server, fn):  # type: ignore[no-untyped-def]
    before = server.cpu_seconds()
    result = fn()
    return result, server.cpu_seconds() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=8, help="concurrent ingest connections")
    parser.add_argument("--get-connections", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--store-events", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    print(f"machine: {machine_summary()}; sqlite {sqlite3.sqlite_version}")
    print(f"work dir: {work}")
    lines: list[str] = []
    try:
        # A migrated, empty store to copy: the server creates the schema.
        template_dir = work / "template"
        srv = start_orchestrator(template_dir)
        srv.stop()
        template_db = template_dir / DB_NAME

        def fresh(name: str) -> Path:
            d = work / name
            d.mkdir(mode=0o700)
            shutil.copy(template_db, d / DB_NAME)
            return d

        # 1. ingest
        ingest_dir = fresh("ingest")
        srv = start_orchestrator(ingest_dir, log=work / "ingest.log")
        try:
            res, cpu = server_cpu(
                srv,
                lambda: run_load(
                    srv.port,
                    ingest_request,
                    connections=args.clients,
                    processes=args.client_processes,
                    seconds=args.seconds,
                    warmup=args.warmup,
                ),
            )
        finally:
            srv.stop()
        http_evs = res.rate * BATCH
        stored = (
            sqlite3.connect(ingest_dir / DB_NAME)
            .execute(f'SELECT count(*) FROM "{TABLE}"')
            .fetchone()[0]
        )
        ceiling_dir = fresh("ceiling")
        ceil_evs = ceiling_ingest(ceiling_dir / DB_NAME, args.warmup, args.seconds)
        lines.append(
            f"ingest  HTTP {http_evs:,.0f} events/s ({res.rate:,.1f} req/s, {res.errors} errors, "
            f"p50 {res.pct(50):.1f} ms, p99 {res.pct(99):.1f} ms, server CPU "
            f"{cpu / (args.seconds + args.warmup) * 100:.0f}%, client CPU "
            f"{res.client_cpu / (args.seconds + args.warmup) * 100:.0f}%, {stored:,} rows stored)"
        )
        lines.append(f"ingest  ceiling sqlite3 executemany {ceil_evs:,.0f} events/s")
        lines.append(f"ingest  ratio {verdict(http_evs / ceil_evs, 0.60)}")
        print(*lines[-3:], sep="\n", flush=True)

        # 2. health vs bare hello on daphne
        hello = start_hello_daphne(work)
        try:
            hres, hcpu = server_cpu(
                hello,
                lambda: run_load(
                    hello.port,
                    lambda w, s: get_request("/"),
                    connections=args.get_connections,
                    processes=args.client_processes,
                    seconds=args.seconds,
                    warmup=args.warmup,
                ),
            )
        finally:
            hello.stop()
        srv = start_orchestrator(fresh("health"))
        try:
            sres, scpu = server_cpu(
                srv,
                lambda: run_load(
                    srv.port,
                    lambda w, s: get_request("/v1/health"),
                    connections=args.get_connections,
                    processes=args.client_processes,
                    seconds=args.seconds,
                    warmup=args.warmup,
                ),
            )
        finally:
            srv.stop()
        total = args.seconds + args.warmup
        lines.append(
            f"health  GET /v1/health {sres.rate:,.0f} req/s (p50 {sres.pct(50):.1f} ms, p99 "
            f"{sres.pct(99):.1f} ms, server CPU {scpu / total * 100:.0f}%, client CPU "
            f"{sres.client_cpu / total * 100:.0f}%, {sres.errors} errors)"
        )
        lines.append(
            f"health  bare ASGI hello on daphne {hres.rate:,.0f} req/s (p50 {hres.pct(50):.1f} ms,"
            f" server CPU {hcpu / total * 100:.0f}%, client CPU "
            f"{hres.client_cpu / total * 100:.0f}%)"
        )
        lines.append(f"health  ratio {verdict(sres.rate / hres.rate, 0.25)}")
        print(*lines[-3:], sep="\n", flush=True)

        # 3. list over a big store
        store_dir = fresh("store")
        took = fill_store(store_dir / DB_NAME, args.store_events)
        print(f"(filled {args.store_events:,} events in {took:.0f} s)", flush=True)
        q_ceiling = ceiling_query(store_dir / DB_NAME, 1.0, args.seconds)
        srv = start_orchestrator(store_dir)
        try:
            lres, lcpu = server_cpu(
                srv,
                lambda: run_load(
                    srv.port,
                    list_request,
                    connections=args.get_connections,
                    processes=args.client_processes,
                    seconds=args.seconds,
                    warmup=args.warmup,
                ),
            )
        finally:
            srv.stop()
        lines.append(
            f"list    GET /v1/events?node_id=..&limit=100 over {args.store_events:,} events: "
            f"{lres.rate:,.0f} req/s (p50 {lres.pct(50):.1f} ms, p99 {lres.pct(99):.1f} ms, "
            f"server CPU {lcpu / total * 100:.0f}%, client CPU "
            f"{lres.client_cpu / total * 100:.0f}%, {lres.errors} errors)"
        )
        lines.append(f"list    same query, plain sqlite3 (one thread) {q_ceiling:,.0f} queries/s")
        lines.append(f"list    ratio {verdict(lres.rate / q_ceiling, 0.30)}")
        print(*lines[-3:], sep="\n", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\nsummary")
    print(*lines, sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
