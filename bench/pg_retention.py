"""Events retention on PostgreSQL: a day dropped as a partition against the same day deleted row
by row, while ingest runs.

    python bench/pg_retention.py [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]
                                 [--events-per-day 1000000] [--days 30] [--rate 100]
                                 [--seconds 20]

For each layout, in a database of its own (created here, dropped after):
- `rows`: the events table as before migration 0005 (one table; retention deletes in batches of
  ~25 ms by the received_at index, events.retention.delete_batch);
- `days`: the table partitioned by day (events/partitions.py; retention detaches and drops the
  days wholly out of the window).
Both hold --days past days of --events-per-day events each (~400 bytes of JSON), filled in SQL.
`--layout convert` instead times migration 0005 on a plain table holding those events (the
first start of an upgraded PostgreSQL store).
An ingest load (--rate groups of 10 events a second, open loop: each group is scheduled, the
writer's own INSERT of events.services) runs in a separate process, first alone for --seconds
(the baseline), then while retention removes the oldest day. Reports, per layout: how long the
removal took, the WAL it wrote, the `VACUUM` it leaves to do (autovacuum's work after it), the
ingest group's p50/p99/max in both windows (with --days partitions to look in, the key is checked
in each, events/partitions.py), and the read of a node's or a type's 100 newest events.

One JSON object per line. Loopback only. Not a CI test; figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

REPO = Path(__file__).resolve().parent.parent


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def url_for(admin: str, name: str) -> str:
    return urlunsplit(urlsplit(admin)._replace(path="/" + name))


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


# --- the ingest load (a process of its own) ----------------------------------------------------


def load_main(rate: float) -> None:
    """Store groups of 10 new events at `rate` a second until stdin closes; then print the
    latencies (from each group's scheduled time) as one JSON list."""
    import django

    django.setup()
    from events.services import events_store
    from events.validation import validate_events

    done = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    latencies: list[float] = []
    start = time.monotonic()
    n = 0
    while not done.is_set():
        due = start + n / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        rows = validate_events(
            [
                {
                    "event_id": f"load-{os.getpid()}-{n}-{i}",
                    "event_type": "app.heartbeat",
                    "node_id": f"node-{(n * 10 + i) % 5000}",
                    "timestamp": "2026-11-30T10:00:00Z",
                    "pad": "x" * 300,
                }
                for i in range(10)
            ]
        )
        events_store(batches=[rows])
        latencies.append(time.monotonic() - due)
        n += 1
    print(json.dumps(latencies), flush=True)


class Load:
    def __init__(self, url: str, rate: float) -> None:
        env = {**os.environ, "AUTONOMY_POSTGRES_URL": url}
        env.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--load", "--rate", str(rate)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> list[float]:
        out, _ = self.proc.communicate("", timeout=120)
        return json.loads(out.strip().splitlines()[-1])


# --- one layout (a process of its own: Django set up on that layout's database) ----------------


def wal_bytes(cursor: object) -> int:
    cursor.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")  # type: ignore[attr-defined]
    return int(cursor.fetchone()[0])  # type: ignore[attr-defined]


def layout_main(
    layout: str, url: str, per_day: int, days: int, rate: float, seconds: float
) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from events import partitions
    from events.retention import events_prune

    call_command("migrate", verbosity=0)
    today = datetime.now(UTC).date()
    first = today - timedelta(days=days)
    with connection.cursor() as cursor:
        if layout in ("rows", "convert"):
            call_command("migrate", "events", "0004", verbosity=0)
        else:  # day partitions for the past days (the empty legacy one would cover them)
            cursor.execute(f'ALTER TABLE events_event DETACH PARTITION "{partitions.LEGACY}"')
            cursor.execute(f'DROP TABLE "{partitions.LEGACY}"')
            for offset in range(days + partitions.DAYS_AHEAD + 1):
                partitions.create_day(first + timedelta(days=offset))
    started = time.monotonic()
    with connection.cursor() as cursor:
        for offset in range(days):
            day = datetime.combine(first + timedelta(days=offset), datetime.min.time(), UTC)
            cursor.execute(
                "INSERT INTO events_event (event_id, event_type, node_id, timestamp, payload, "
                "received_at) SELECT 'fill-' || %s || '-' || g, 'app.heartbeat', "
                "'node-' || (g %% 5000), '2026-11-01T00:00:00Z', "
                '\'{"event_id":"fill","pad":"\' || repeat(\'x\', 330) || \'"}\', '
                "%s + (g * interval '1 second' * 86399 / %s) FROM generate_series(1, %s) g",
                [offset, day, per_day, per_day],
            )
        cursor.execute("VACUUM ANALYZE events_event")
        cursor.execute("CHECKPOINT")  # both layouts start their windows with the fill written
        cursor.execute("SELECT pg_total_relation_size('events_event'), count(*) FROM events_event")
        size, count = cursor.fetchone()
        if layout == "days":
            cursor.execute(
                "SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i "
                "WHERE i.inhparent = 'events_event'::regclass"
            )
            size = cursor.fetchone()[0]
    emit(
        layout=layout,
        filled=count,
        bytes=int(size),
        fill_seconds=round(time.monotonic() - started, 1),
    )
    if layout == "convert":  # the upgrade of a store that holds these events (migration 0005)
        started = time.monotonic()
        call_command("migrate", "events", verbosity=0)
        emit(layout=layout, converted_rows=count, seconds=round(time.monotonic() - started, 1))
        return

    # reads: a node's newest 100 events, and the newest 100 of a type (as GET /v1/events)
    from events.retention import configure_visibility
    from events.selectors import event_list

    configure_visibility(days * 86400.0)
    for name, query in (
        ("node", {"node_id": "node-7", "event_type": None}),
        ("type", {"node_id": None, "event_type": "app.heartbeat"}),
    ):
        reads: list[float] = []
        for _ in range(200):
            began = time.monotonic()
            event_list(limit=100, before=None, **query)
            reads.append(time.monotonic() - began)
        emit(layout=layout, window=f"read: 100 newest events of a {name}", **percentiles(reads))
    configure_visibility(0)

    load = Load(url, rate)
    time.sleep(seconds)
    baseline = load.stop()
    emit(layout=layout, window="ingest alone", rate=rate, **percentiles(baseline[5:]))

    # exactly the oldest day leaves the window: the cutoff is its end
    now = datetime.now(UTC)
    boundary = datetime.combine(first + timedelta(days=1), datetime.min.time(), UTC)
    retention = (now - boundary).total_seconds()
    with connection.cursor() as cursor:
        wal_before = wal_bytes(cursor)
    load = Load(url, rate)
    time.sleep(2)
    began = time.monotonic()
    result = events_prune(retention_seconds=retention, now=now, run=lambda task: task())
    took = time.monotonic() - began
    time.sleep(1)
    during = load.stop()
    with connection.cursor() as cursor:
        wal_after = wal_bytes(cursor)
        cursor.execute("SELECT count(*) FROM events_event WHERE received_at < %s", [result.cutoff])
        left = cursor.fetchone()[0]
        # what autovacuum will do after it: rows deleted one by one leave dead tuples in the
        # heap and in every index; a dropped day leaves nothing
        began = time.monotonic()
        cursor.execute("VACUUM events_event")
        vacuum = time.monotonic() - began
        wal_vacuum = wal_bytes(cursor) - wal_after
    emit(
        layout=layout,
        window="ingest while the oldest day goes",
        removed_in_seconds=round(took, 2),
        deleted_rows=result.deleted,
        dropped=list(result.dropped),
        rows_left_before_cutoff=left,
        wal_mb=round((wal_after - wal_before) / 2**20, 1),
        vacuum_after_seconds=round(vacuum, 2),
        vacuum_wal_mb=round(wal_vacuum / 2**20, 1),
        **percentiles(during[int(2 * rate) :]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "AUTONOMY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a server where this may create and drop databases",
    )
    parser.add_argument("--events-per-day", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rate", type=float, default=100.0, help="groups of 10 events a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="the baseline window")
    parser.add_argument("--layout", choices=("rows", "days", "convert"), action="append")
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.load:
        load_main(args.rate)
        return
    if args.url:
        layout_main(
            args.layout[0], args.url, args.events_per_day, args.days, args.rate, args.seconds
        )
        return
    from _common import machine_summary

    emit(machine=machine_summary(), date=datetime.now(UTC).isoformat(timespec="seconds"))
    for layout in args.layout or ["rows", "days", "convert"]:
        name = f"bench_pgret_{layout}_{os.getpid()}"
        with psycopg.connect(args.postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            url = url_for(args.postgres_url, name)
            env = {**os.environ, "AUTONOMY_POSTGRES_URL": url}
            env.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
            subprocess.run(
                [
                    *(sys.executable, __file__, "--layout", layout, "--url", url),
                    *(f"--events-per-day={args.events_per_day}", f"--days={args.days}"),
                    *(f"--rate={args.rate}", f"--seconds={args.seconds}"),
                ],
                cwd=REPO,
                env=env,
                check=True,
            )
        finally:
            with psycopg.connect(args.postgres_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
