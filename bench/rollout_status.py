"""Time `GET /v1/rollouts/{plan_id}/status` (node counts per stage) and a page of
`GET /v1/rollouts/{plan_id}/nodes` at fleet scale.

    python bench/rollout_status.py [--nodes 50000] [--repeat 5]

One real `autonomy-orchestrator serve` on 127.0.0.1 (SQLite, a fresh temporary data dir,
stopped by its pid). The fleet: `--nodes` nodes, each with one event (POST /v1/events, 1,000 a
batch); a four-stage plan (1 %, 10 %, 50 %, 100 %, stage 2 open); 80 % of the nodes acked the
release (mostly `active`, some `pending`, `failed`, `rejected`; inserted straight into the
store, as nodes acking over hours would). Reported:
- cold: the first status call after an ack (the one-pass count: known node ids, the release's
  acks, a bucket per node, hashed once per plan and process), while the ack's gate evaluation
  runs in the same process; and once after the cache's 10 s lifetime with nothing written;
- warm: the next calls within the cache's lifetime (one aggregate query + the answer);
- a page of 100 silent/waiting nodes of the last stage, and a `/metrics` scrape;
- an operator watching: `--watch` reads, one every `--watch-every` seconds on a new connection,
  each after a new ack, as a dashboard over a rollout in progress. With `--workers 2` the reads
  land on either worker, so a worker may go longer than the counts' 10 s lifetime without one
  (the warmer in `rollouts.progress` recounts before that; before it, such a read recounted
  the fleet in its request).
Figures go to docs/operating.md ("Cost at 50,000 nodes"). Not a CI test.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import free_port, machine_summary, start_orchestrator

from core.paths import sqlite_path

PLAN = "plan-status-bench"


def call(port: int, method: str, path: str, body: object | None = None) -> tuple[float, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "X-Autonomy-Operator": "bench"},
        method=method,
    )
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        data = resp.read()
    return time.perf_counter() - started, data


def fill(port: int, data_dir: Path, nodes: int) -> None:
    call(port, "POST", "/v1/releases", {"release_id": "rel-old", "channel": "stable"})
    call(port, "POST", "/v1/releases", {"release_id": "rel-new", "channel": "stable"})
    stages = [
        {"stage_id": f"s{i + 1}", "percent": percent} for i, percent in enumerate((1, 10, 50, 100))
    ]
    call(port, "POST", "/v1/rollouts", {"plan_id": PLAN, "release_id": "rel-new", "stages": stages})
    call(port, "POST", f"/v1/rollouts/{PLAN}/promote", {"reason": "bench"})
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for start in range(0, nodes, 1000):
        batch = [
            {
                "event_id": f"e-{n}",
                "event_type": "app.heartbeat",
                "node_id": f"node-{n:06d}",
                "timestamp": now,
            }
            for n in range(start, min(start + 1000, nodes))
        ]
        call(port, "POST", "/v1/events", {"events": batch})
    rng = random.Random(15)
    db = sqlite3.connect(sqlite_path(data_dir), timeout=30)
    release_pk = db.execute(
        "SELECT id FROM releases_release WHERE release_id = 'rel-new'"
    ).fetchone()[0]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    rows = []
    for n in range(nodes):
        if rng.random() < 0.8:
            status = rng.choices(["active", "pending", "failed", "rejected"], [90, 6, 3, 1])[0]
            rows.append((f"node-{n:06d}", release_pk, status, stamp, stamp))
    with db:
        db.executemany(
            "INSERT INTO releases_nodeack (node_id, release_id, status, acked_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="serve --workers")
    parser.add_argument("--watch", type=int, default=30, help="the operator's reads (0: none)")
    parser.add_argument("--watch-every", type=float, default=2.0, help="seconds between reads")
    args = parser.parse_args()
    print(machine_summary())
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        data_dir = Path(tmp) / "data"
        metrics_port = free_port()
        server = start_orchestrator(
            data_dir,
            "--metrics-addr",
            f"127.0.0.1:{metrics_port}",
            "--silent-after",
            "1s",
            "--workers",
            str(args.workers),
        )
        try:
            t0 = time.perf_counter()
            fill(server.port, data_dir, args.nodes)
            print(f"filled {args.nodes} nodes in {time.perf_counter() - t0:.1f} s")
            cold, warm = [], []
            for _ in range(args.repeat):
                # A new ack changes the release's ack fingerprint: the next status recomputes.
                call(
                    server.port,
                    "POST",
                    "/v1/nodes/node-extra/ack",
                    {"release_id": "rel-new", "status": "active"},
                )
                seconds, body = call(server.port, "GET", f"/v1/rollouts/{PLAN}/status")
                cold.append(seconds)
                for _ in range(3):
                    warm.append(call(server.port, "GET", f"/v1/rollouts/{PLAN}/status")[0])
            time.sleep(10.5)  # past the cache's lifetime, nothing written: the warmer recounted
            expired, _ = call(server.port, "GET", f"/v1/rollouts/{PLAN}/status")
            status = json.loads(body)
            print("plan nodes:", status["nodes"], "known:", status["known_nodes"])
            print("last stage:", status["stages"][-1]["nodes"])
            page_s, page = call(
                server.port, "GET", f"/v1/rollouts/{PLAN}/nodes?stage_id=s4&state=waiting"
            )
            scrape_s, _ = call(metrics_port, "GET", "/metrics")
            print(
                f"status cold (recount): median {statistics.median(cold) * 1000:.0f} ms, "
                f"max {max(cold) * 1000:.0f} ms over {len(cold)}"
            )
            print(f"status after 10.5 s without a read or a write: {expired * 1000:.0f} ms")
            print(
                f"status warm (cached):  median {statistics.median(warm) * 1000:.1f} ms, "
                f"max {max(warm) * 1000:.1f} ms over {len(warm)}"
            )
            print(
                f"nodes page of {json.loads(page)['count']}: {page_s * 1000:.1f} ms; "
                f"/metrics scrape: {scrape_s * 1000:.1f} ms"
            )
            if args.watch:
                watch(server.port, args.watch, args.watch_every, args.workers)
        finally:
            server.stop()


def watch(port: int, reads: int, every: float, workers: int) -> None:
    """An operator's dashboard: a status read every `every` s, each after one new ack."""
    took = []
    for n in range(reads):
        started = time.monotonic()
        call(
            port,
            "POST",
            f"/v1/nodes/node-watch-{n}/ack",
            {"release_id": "rel-new", "status": "active"},
        )
        took.append(call(port, "GET", f"/v1/rollouts/{PLAN}/status")[0] * 1000)
        time.sleep(max(0.0, every - (time.monotonic() - started)))
    took.sort()
    print(
        f"operator watching ({reads} reads every {every:g} s, {workers} worker(s)): median "
        f"{statistics.median(took):.0f} ms, p95 {took[int(len(took) * 0.95) - 1]:.0f} ms, max "
        f"{took[-1]:.0f} ms; {sum(1 for t in took if t >= 100)} over 100 ms"
    )


if __name__ == "__main__":
    main()
