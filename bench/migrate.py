"""Benchmark `autonomy-orchestrator migrate`: a one-million-event SQLite store into PostgreSQL.

    python bench/migrate.py [--events 1000000] [--batch-size 1000 5000]
                            [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Builds a store with the schema the real `manage.py migrate` creates (serve's settings, WAL), fills
it with raw sqlite3 (events with realistic payloads, a few releases and acks), then times the real
CLI into a fresh PostgreSQL database per batch size, and a re-run over the complete copy (every
row compared, nothing inserted). Prints rows/s; drops its databases and files afterwards.
Record the figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).with_name("autonomy-orchestrator")


def build_store(data_dir: Path, events: int) -> Path:
    data_dir.mkdir(parents=True)
    env = {**os.environ, "AUTONOMY_DATA_DIR": str(data_dir)}
    env.pop("AUTONOMY_POSTGRES_URL", None)
    subprocess.run([sys.executable, str(REPO / "manage.py"), "migrate", "-v0"], env=env, check=True)
    db = data_dir / "orchestrator.sqlite3"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    for r in range(1, 21):
        conn.execute(
            "INSERT INTO releases_release (id, release_id, channel, sequence, metadata, created_at)"
            " VALUES (?, ?, 'stable', ?, '{}', '2026-11-27 08:00:00')",
            (r, f"rel-{r:03d}", r),
        )
    conn.executemany(
        "INSERT INTO releases_nodeack (node_id, release_id, status, acked_at, updated_at) "
        "VALUES (?, ?, 'active', '2026-11-27 08:00:00', '2026-11-27 08:00:00')",
        [(f"node-{n:04d}", 1 + n % 20) for n in range(2000)],
    )

    def rows():
        for k in range(events):
            event_id, node = f"evt-{k:010d}", f"node-{k % 2000:04d}"
            payload = json.dumps(
                {
                    "event_id": event_id,
                    "event_type": "app.heartbeat",
                    "node_id": node,
                    "timestamp": "2026-11-27T10:00:00Z",
                    "cpu": k % 100,
                    "mem_mb": 512 + k % 64,
                }
            )
            yield (
                k + 1,
                event_id,
                "app.heartbeat",
                node,
                "2026-11-27T10:00:00Z",
                None,
                "rel-001",
                payload,
                f"2026-11-27 09:{(k // 60) % 60:02d}:{k % 60:02d}.000000",
            )

    conn.executemany(
        "INSERT INTO events_event (id, event_id, event_type, node_id, timestamp, "
        "lock_fingerprint, release_id, payload, received_at) VALUES (?,?,?,?,?,?,?,?,?)",
        rows(),
    )
    conn.commit()
    conn.close()
    return db


def run_migrate(data_dir: Path, url: str, batch_size: int) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        [
            str(BIN),
            "migrate",
            "--sqlite-dir",
            str(data_dir),
            "--postgres-url",
            url,
            "--batch-size",
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "AUTONOMY_POSTGRES_URL": ""},
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"migrate failed:\n{result.stdout}\n{result.stderr}")
    for line in result.stdout.splitlines():
        if line.startswith("events_event:"):
            print(f"    {line}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "AUTONOMY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    created: list[str] = []
    admin = psycopg.connect(args.admin_url, autocommit=True)
    try:
        t0 = time.perf_counter()
        build_store(work / "data", args.events)
        size = (work / "data" / "orchestrator.sqlite3").stat().st_size
        print(
            f"store: {args.events} events, {size / 1e6:.0f} MB, "
            f"built in {time.perf_counter() - t0:.1f} s"
        )
        total_rows = args.events + 20 + 2000
        for batch in args.batch_size:
            name = f"bench_migrate_{os.getpid()}_{batch}"
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            created.append(name)
            url = args.admin_url.rsplit("/", 1)[0] + "/" + name
            print(f"batch size {batch}: fresh copy")
            fresh = run_migrate(work / "data", url, batch)
            print(
                f"  fresh copy: {total_rows} rows in {fresh:.1f} s = "
                f"{total_rows / fresh:,.0f} rows/s (whole command, schema and validation incl.)"
            )
            print(f"batch size {batch}: re-run over the complete copy")
            rerun = run_migrate(work / "data", url, batch)
            print(
                f"  re-run: {total_rows} rows compared in {rerun:.1f} s = "
                f"{total_rows / rerun:,.0f} rows/s, nothing inserted"
            )
    finally:
        for name in created:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
