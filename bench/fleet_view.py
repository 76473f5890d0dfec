"""The fleet view at fleet size: `GET /v1/fleet?summary=true`, one page, and a walk over every
page, with N nodes known to the real `autonomy-orchestrator serve` (SQLite).

    python bench/fleet_view.py [--nodes 50000] [--repeat 30]

1. Fill: one event per node through `POST /v1/events` (1,000-event batches: the events writer
   keeps the fleet view's node table), two releases through `POST /v1/releases`, then one ack per
   node written straight into the store (a mix of pending/active/failed over both releases,
   95 % of the nodes) and the fleet view's ack table rebuilt from them with the ack-side hook
   (`releases.services.fleet_acks_refresh`), with the server stopped: 50,000 acks through the
   API take minutes and are bench/fleet.py's business.
2. Measure, sequentially from one keep-alive client: `summary=true` (plain and filtered),
   a default page (limit 1000), a 10,000-node page, and the walk over every page; latency
   p50/p99/max in ms. Then the server's peak RSS (VmHWM); then six clients walking every page
   at once (the issue's six parallel reads of the unpaged view) and the peak RSS after.

One JSON object per line on stdout. Loopback only; the server is a subprocess stopped by its
pid. Figures go to docs/performance.md ("Storage and capacity"). Not a CI test.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_summary, start_orchestrator

REPO = Path(__file__).resolve().parent.parent
DB_NAME = "orchestrator.sqlite3"


def emit(**fields: object) -> None:
    print(orjson.dumps(fields).decode(), flush=True)


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def call(self, method: str, path: str, body: object = None) -> tuple[int, bytes, float]:
        data = orjson.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        start = time.perf_counter()
        self.conn.request(method, path, body=data, headers=headers)
        response = self.conn.getresponse()
        raw = response.read()
        return response.status, raw, (time.perf_counter() - start) * 1000


def fill(data_dir: Path, nodes: int) -> None:
    server = start_orchestrator(data_dir, "--events-retention", "0")
    try:
        client = Client(server.port)
        for rel in ("fv-1", "fv-2"):
            status, raw, _ = client.call("POST", "/v1/releases", {"release_id": rel})
            assert status in (200, 201), raw
        for start in range(0, nodes, 1000):
            events = [
                {
                    "event_id": f"fv-{i}",
                    "event_type": "app.heartbeat",
                    "node_id": f"node-{i:06d}",
                    "timestamp": "2026-04-07T10:00:00Z",
                }
                for i in range(start, min(nodes, start + 1000))
            ]
            status, raw, _ = client.call("POST", "/v1/events", {"events": events})
            assert status == 200, raw
    finally:
        server.stop()
    db = sqlite3.connect(data_dir / DB_NAME)
    with db:
        ids = dict(db.execute("SELECT release_id, id FROM releases_release"))
        now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        statuses = ("active", "active", "pending", "failed")
        rows = [
            (
                f"node-{i:06d}",
                ids["fv-2" if i % 3 else "fv-1"],
                statuses[i % 4],
                now,
                now,
            )
            for i in range(nodes)
            if i % 20  # 5 % never acked
        ]
        db.executemany(
            "INSERT INTO releases_nodeack (node_id, release_id, status, acked_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )
    db.close()
    env = {**os.environ, "AUTONOMY_DATA_DIR": str(data_dir)}
    subprocess.run(
        [
            sys.executable,
            str(REPO / "manage.py"),
            "shell",
            "-c",
            "from releases.services import fleet_acks_refresh; fleet_acks_refresh(node_ids=None)",
        ],
        check=True,
        env=env,
    )


def timed(client: Client, path: str, repeat: int) -> dict[str, object]:
    latencies, size = [], 0
    for _ in range(repeat):
        status, raw, ms = client.call("GET", path)
        assert status == 200, raw[:200]
        latencies.append(ms)
        size = len(raw)
    latencies.sort()
    return {
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
        "max_ms": round(latencies[-1], 1),
        "bytes": size,
        "requests": repeat,
    }


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    emit(bench="fleet_view", machine=machine_summary(), nodes=args.nodes)
    with tempfile.TemporaryDirectory(prefix="bench-fleet-view-") as tmp:
        data_dir = Path(tmp) / "data"
        started = time.monotonic()
        fill(data_dir, args.nodes)
        emit(step="fill", seconds=round(time.monotonic() - started, 1))
        server = start_orchestrator(data_dir, "--events-retention", "0")
        try:
            client = Client(server.port)
            emit(step="rss_idle", peak_rss_mb=round(peak_rss_mb(server.proc.pid), 1))
            for name, path in (
                ("summary", "/v1/fleet?summary=true"),
                ("summary_filtered", "/v1/fleet?summary=true&ack_status=active&node_status=up"),
                ("summary_release", "/v1/fleet?summary=true&release_id=fv-2"),
                ("page_1000", "/v1/fleet"),
                ("page_1000_filtered", "/v1/fleet?ack_status=failed"),
                ("page_10000", "/v1/fleet?limit=10000"),
                ("release_acks_page", "/v1/releases/fv-2/acks"),
            ):
                repeat = args.repeat if "10000" not in name else max(3, args.repeat // 5)
                emit(route=name, path=path, **timed(client, path, repeat))
            cursor, pages, walk_start, seen = None, 0, time.perf_counter(), 0
            while True:
                path = "/v1/fleet?limit=10000" + (f"&cursor={cursor}" if cursor else "")
                status, raw, _ = client.call("GET", path)
                assert status == 200, raw[:200]
                body = orjson.loads(raw)
                seen += len(body["nodes"])
                pages += 1
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            emit(
                route="walk_all_pages",
                pages=pages,
                nodes=seen,
                seconds=round(time.perf_counter() - walk_start, 2),
            )
            assert seen == args.nodes, (seen, args.nodes)
            emit(step="rss_after", peak_rss_mb=round(peak_rss_mb(server.proc.pid), 1))
            # The worst case: six clients reading the whole fleet at once.
            walks: list[float] = []

            def walk() -> None:
                own, cursor, start = Client(server.port), None, time.perf_counter()
                while True:
                    path = "/v1/fleet?limit=10000" + (f"&cursor={cursor}" if cursor else "")
                    status, raw, _ = own.call("GET", path)
                    assert status == 200, raw[:200]
                    cursor = orjson.loads(raw)["next_cursor"]
                    if cursor is None:
                        break
                walks.append(time.perf_counter() - start)

            threads = [threading.Thread(target=walk) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            emit(
                route="six_parallel_walks",
                seconds_each=[round(w, 2) for w in sorted(walks)],
                peak_rss_mb=round(peak_rss_mb(server.proc.pid), 1),
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
