"""Benchmark node acks, `POST /v1/nodes/{node_id}/ack`, against this run's ceilings.

    python bench/acks.py [--seconds 10] [--connections 32] [--nodes 50000] [--rounds 3]
                         [--workers 1]

What a fleet does when a release reaches it: every node acks `pending`, then `active`. Measured
in one run, in interleaved rounds (median of each), every server a fresh subprocess on
127.0.0.1:
1. a bare ASGI hello-world app on daphne: the stack's ceiling;
2. acks on the real `autonomy-orchestrator serve`, closed loop on keep-alive connections: each
   request acks the next of `--nodes` node ids, first `pending` (a new row, 201) and, on the
   second pass over the ids, `active` (an update, 200); every answer must be 2xx;
3. the same rows written through plain sqlite3 in one transaction per 64 acks (the group commit's
   shape), for scale: the store's own ceiling.
Goal (issue 13): acks sustain at least 2,000/s on SQLite. Figures go to docs/performance.md.
Not a CI test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LoadResult,
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
from latest import publish  # the same release publish as the poll bench

RELEASE = "rel-ack-bench"
GOAL_ACKS_PER_SECOND = 2000.0


def ack_factory(nodes: int, workers: int, offset: int):
    """Request n of worker w acks node id ((offset + n) * workers + w) mod nodes: the workers
    share the ids without overlap; the first pass over the ids acks `pending`, later ones
    `active`."""

    def make(worker: int, seq: int) -> bytes:
        n = (offset + seq) * workers + worker
        node = n % nodes
        status = "pending" if n < nodes else "active"
        body = json.dumps(
            {"release_id": RELEASE, "status": status, "message": "bench"},
            separators=(",", ":"),
        ).encode()
        return post_request(f"/v1/nodes/node-{node:06d}/ack", body)

    return make


def sql_ceiling(db: Path, seconds: float) -> float:
    """Ack upserts through plain sqlite3, 64 per transaction, on a copy of the store."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    (release_pk,) = conn.execute(
        'SELECT id FROM "releases_release" WHERE release_id = ?', (RELEASE,)
    ).fetchone()
    sql = (
        'INSERT INTO "releases_nodeack" (node_id, release_id, status, lock_fingerprint, '
        "message, acked_at, updated_at) VALUES (?, ?, ?, NULL, 'bench', ?, ?) "
        "ON CONFLICT (node_id, release_id) DO UPDATE SET status = excluded.status, "
        "updated_at = excluded.updated_at"
    )
    done = 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        conn.execute("BEGIN")
        for _ in range(64):
            conn.execute(sql, (f"sql-{done:07d}", release_pk, "pending", now, now))
            done += 1
        conn.execute("COMMIT")
    conn.close()
    return done / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=50_000, help="distinct node ids")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    add_auth_argument(parser)
    args = parser.parse_args()
    if args.nodes < 1 or args.connections < 1 or args.client_processes < 1:
        parser.error("--nodes, --connections and --client-processes must be at least 1")

    work = Path(tempfile.mkdtemp(prefix="bench-acks-"))
    use_auth(args.auth, work)
    print(f"auth: {args.auth}")
    print(f"machine: {machine_summary()}; sqlite {sqlite3.sqlite_version}")
    print(f"work dir: {work}")
    span = args.seconds + args.warmup

    def line(name: str, res: LoadResult, cpu: float) -> str:
        return (
            f"{name:<28} {res.rate:>8,.0f} req/s  ({res.errors} non-2xx, p50 {res.pct(50):.1f} ms, "
            f"p99 {res.pct(99):.1f} ms, server CPU {cpu / span * 100:.0f}%, "
            f"client CPU {res.client_cpu / span * 100:.0f}%)"
        )

    rates: dict[str, list[float]] = {}
    errors = 0
    try:
        hello = start_hello_daphne(work)
        data = work / "data"
        extra = ["--workers", str(args.workers)] if args.workers != 1 else []
        srv = start_orchestrator(data, *extra, log=work / "serve.log")
        try:
            publish(srv.port, RELEASE)
            sent = 0  # requests so far: the next round continues with the next node ids
            for round_no in range(1, args.rounds + 1):
                print(f"round {round_no}/{args.rounds}", flush=True)
                before = hello.cpu_seconds()
                res = run_load(
                    hello.port,
                    lambda w, s: get_request("/"),
                    connections=args.connections,
                    processes=args.client_processes,
                    seconds=args.seconds,
                    warmup=args.warmup,
                )
                print("  " + line("bare ASGI hello on daphne", res, hello.cpu_seconds() - before))
                rates.setdefault("hello", []).append(res.rate)

                per_worker = sent // args.connections + 1
                before = srv.cpu_seconds()
                res = run_load(
                    srv.port,
                    ack_factory(args.nodes, args.connections, per_worker),
                    connections=args.connections,
                    processes=args.client_processes,
                    seconds=args.seconds,
                    warmup=args.warmup,
                )
                sent += int(res.requests * span / args.seconds) + args.connections
                errors += res.errors
                print("  " + line("POST /v1/nodes/{id}/ack", res, srv.cpu_seconds() - before))
                rates.setdefault("acks", []).append(res.rate)
        finally:
            srv.stop()
            hello.stop()
        copy = work / "copy.sqlite3"
        shutil.copy(data / "orchestrator.sqlite3", copy)
        sql = sql_ceiling(copy, min(args.seconds, 3.0))
        print(f"{'SQL (plain sqlite3, 64/txn)':<28} {sql:>8,.0f} acks/s")

        hello_rate = statistics.median(rates["hello"])
        acks = statistics.median(rates["acks"])
        print(f"\nmedians over {args.rounds} rounds:")
        print(f"acks {acks:,.0f}/s; hello {hello_rate:,.0f}/s; SQL {sql:,.0f}/s")
        print(f"acks / hello: {acks / hello_rate * 100:.1f}%")
        print(f"acks / SQL:   {acks / sql * 100:.1f}%")
        print(
            f"acks vs the goal of {GOAL_ACKS_PER_SECOND:,.0f}/s: "
            f"{verdict(acks / GOAL_ACKS_PER_SECOND, 1.0)}; non-2xx answers: {errors}"
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
