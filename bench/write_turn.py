"""What one stored event and one stored ack cost of SQLite's single write turn at fleet scale.

    python bench/write_turn.py [--nodes 50000] [--events-per-node 20] [--group 20]
                               [--event-ids node|uuid] [--rounds 300]
                               [--busy-threads 0] [--switch-interval SECONDS]

At fleet scale every `serve` worker's writers take turns on one SQLite write lock, so the time a
group of events or acks holds it decides how many a second the store takes (docs/performance.md,
"Where the write turn goes"). This measures that time in-process, without HTTP, on a store the
size of a fleet:

1. events: a store holding --nodes x --events-per-node events (received two days ago) and every
   node's fleet row; then --rounds groups of --group batches, each batch 10 events of one node
   (nodes in random order, as a fleet's heartbeats arrive), through the events writer's own
   function (`events.services.events_store`: one transaction, the fleet rows, the commit);
   ceiling: the same rows through plain sqlite3 `executemany` into the same schema, one
   transaction per group, no fleet rows. `--event-ids node` names events `<node>-<batch>-<k>`
   (what bench/fleet.py sends), `uuid` random UUIDs: the idempotency key's index starts with
   the event id, so random ids touch a page per event instead of one per batch.
2. acks: a store with --nodes nodes that acked three releases; then --rounds groups of --group
   acks of a new release (half first acks of new nodes, half `active` updates of the previous
   group's nodes) through the ack writer's function (`releases.services.node_acks_store`: the
   upsert, the fleet view's rows, the commit); ceiling: the same rows as one plain sqlite3
   multi-row upsert per group, without the fleet view.

`--busy-threads 1` runs a Python thread that never blocks beside the writers, as a busy event
loop beside `serve`'s writer threads: sqlite3 lets go of the GIL at every statement step, and the
writer then waits for it back (up to `--switch-interval`, Python's default 5 ms; `serve` sets
0.1 ms), so this shows what each statement of a turn costs under load.

Figures: µs of write turn per event / per ack (wall time of the transaction, commit included;
the WAL checkpoints run elsewhere in `serve` and are not counted), and the ratio to the ceiling.
One JSON object per line. A temporary data dir, removed at the end. Not a CI test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import machine_summary, start_orchestrator
from ingest import DB_NAME
from ingest import INSERT as INSERT_EVENT

PAYLOAD = '{"cpu": 0.51, "mem_mb": 812, "uptime_s": 3600}'
OLD = "2026-01-01 00:00:00.000000"


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;"
    )
    return conn


def fill(template: Path, target: Path, args: argparse.Namespace) -> list[str]:
    """The fleet's store: every node's old events, fleet row and three acked releases."""
    shutil.copy(template, target)
    nodes = [f"node-{n:06d}" for n in range(args.nodes)]
    conn = connect(target)
    conn.execute("BEGIN")
    conn.executemany(
        INSERT_EVENT,
        (
            (uuid.uuid4().hex, "heartbeat", node, OLD, None, None, PAYLOAD, OLD)
            for _ in range(args.events_per_node)
            for node in nodes
        ),
    )
    conn.executemany(
        "INSERT INTO releases_fleetnode (node_id, last_seen, last_heard) VALUES (?, ?, ?)",
        ((node, OLD, OLD) for node in nodes),
    )
    for r in range(1, 4):
        conn.execute(
            "INSERT INTO releases_release (release_id, channel, sequence, metadata, created_at) "
            "VALUES (?, 'stable', ?, '{}', ?)",
            (f"rel-{r}", r, OLD),
        )
        conn.executemany(
            "INSERT INTO releases_nodeack (node_id, status, acked_at, updated_at, release_id) "
            "VALUES (?, 'active', ?, ?, ?)",
            ((node, OLD, OLD, r) for node in nodes),
        )
    conn.execute(
        "INSERT INTO releases_release (release_id, channel, sequence, metadata, created_at) "
        "VALUES ('rel-new', 'stable', 4, '{}', ?)",
        (OLD,),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return nodes


def event_batches(nodes: list[str], args: argparse.Namespace, rng: random.Random) -> list:
    order = nodes[:]
    rng.shuffle(order)
    groups = []
    for r in range(args.rounds):
        group = []
        for n in range(args.group):
            node = order[(r * args.group + n) % len(order)]
            group.append(
                [
                    (
                        f"{node}-{r}-{k}" if args.event_ids == "node" else uuid.uuid4().hex,
                        "heartbeat" if k else "metrics",
                        node,
                        "2026-11-30T00:00:00Z",
                        None,
                        None,
                        PAYLOAD,
                    )
                    for k in range(10)
                ]
            )
        groups.append(group)
    return groups


def ceiling_events(db: Path, groups: list) -> float:
    conn = connect(db)
    took = 0.0
    for r, group in enumerate(groups):
        received = f"2026-11-30 00:00:00.{r:06d}"
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for rows in group:
            conn.executemany(INSERT_EVENT, [(*row, received) for row in rows])
        conn.execute("COMMIT")
        took += time.perf_counter() - started
        if r % 50 == 49:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # serve's checkpointer, untimed
    conn.close()
    return took


def timed_in_server(items: list, store: Any) -> float:
    """Seconds `store(item)` took over all items, with serve's checkpointer (a PASSIVE checkpoint
    every 50 transactions) untimed."""
    from django.db import connection

    took = 0.0
    for r, item in enumerate(items):
        started = time.perf_counter()
        store(item)
        took += time.perf_counter() - started
        if r % 50 == 49:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return took


def server_events(groups: list) -> float:
    from events.services import events_store

    return timed_in_server(groups, lambda group: events_store(batches=group))


def ack_groups(nodes: list[str], args: argparse.Namespace, rng: random.Random) -> list:
    order = nodes[:]
    rng.shuffle(order)
    half = args.group // 2
    groups = []
    for r in range(args.rounds):
        first = [(node, "pending") for node in order[r * half : (r + 1) * half]]
        again = [(node, "active") for node in order[(r - 1) * half : r * half]] if r else []
        groups.append(first + again)
    return groups


def ceiling_acks(db: Path, groups: list) -> float:
    conn = connect(db)
    (release_pk,) = conn.execute(
        "SELECT id FROM releases_release WHERE release_id = 'rel-new'"
    ).fetchone()
    took = 0.0
    for r, group in enumerate(groups):
        now = f"2026-11-30 00:00:00.{r:06d}"
        rows = [(node, release_pk, status, None, None, now, now) for node, status in group]
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO releases_nodeack (node_id, release_id, status, lock_fingerprint, "
            "message, acked_at, updated_at) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows))
            + " ON CONFLICT (node_id, release_id) DO UPDATE SET status = excluded.status, "
            "lock_fingerprint = excluded.lock_fingerprint, message = excluded.message, "
            "acked_at = excluded.acked_at, updated_at = excluded.updated_at",
            [value for row in rows for value in row],
        )
        conn.execute("COMMIT")
        took += time.perf_counter() - started
        if r % 50 == 49:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    conn.close()
    return took


def server_acks(groups: list) -> float:
    from django.utils import timezone

    from releases.services import AckWrite, node_acks_store

    def store(group: list) -> None:
        now = timezone.now()
        values = {"lock_fingerprint": None, "message": None, "acked_at": now, "updated_at": now}
        node_acks_store(
            writes=[
                AckWrite(node, "rel-new", {**values, "status": status}) for node, status in group
            ]
        )

    return timed_in_server(groups, store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--events-per-node", type=int, default=20)
    parser.add_argument("--group", type=int, default=20, help="batches (or acks) per transaction")
    parser.add_argument("--event-ids", choices=("node", "uuid"), default="node")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument(
        "--busy-threads",
        type=int,
        default=0,
        help="Python threads spinning meanwhile, as a busy event loop (they contend for the GIL)",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        default=None,
        help="sys.setswitchinterval seconds for the run (Python's default 0.005)",
    )
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.nodes < args.group * args.rounds:
        parser.error("--nodes must be at least --group x --rounds (each node acks once)")

    print(machine_summary(), file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="bench-write-turn-"))
    try:
        start_orchestrator(root / "template").stop()  # a migrated, empty store
        template = root / "template" / DB_NAME
        started = time.monotonic()
        filled = root / "filled.sqlite3"
        nodes = fill(template, filled, args)
        print(f"filled in {time.monotonic() - started:.0f} s", file=sys.stderr)

        def fresh(name: str) -> Path:
            (root / name).mkdir()
            shutil.copy(filled, root / name / DB_NAME)
            return root / name / DB_NAME

        spinning = threading.Event()

        def spin() -> None:  # pure Python, never blocks: holds the GIL until forced to drop it
            x = 0
            while not spinning.is_set():
                for i in range(1000):
                    x += i

        spinners = [threading.Thread(target=spin, daemon=True) for _ in range(args.busy_threads)]
        for thread in spinners:
            thread.start()
        events = event_batches(nodes, args, random.Random(1))
        acks = ack_groups(nodes, args, random.Random(2))
        n_events = args.rounds * args.group * 10
        n_acks = sum(len(group) for group in acks)
        ceiling_e = ceiling_events(fresh("ceiling-events"), events) / n_events
        ceiling_a = ceiling_acks(fresh("ceiling-acks"), acks) / n_acks

        os.environ["AUTONOMY_DATA_DIR"] = str(root / "server")
        fresh("server")
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "orchestrator_site.settings")
        import django

        django.setup()
        from django.db import connection

        with connection.cursor() as cursor:  # as serve runs it: checkpoints elsewhere
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        server_e = server_events(events) / n_events
        server_a = server_acks(acks) / n_acks
        spinning.set()
        common = {
            "nodes": args.nodes,
            "group": args.group,
            "event_ids": args.event_ids,
            "busy_threads": args.busy_threads,
            "switch_interval": sys.getswitchinterval(),
        }
        emit(
            figure="event_turn_us",
            value=round(server_e * 1e6, 1),
            ceiling_us=round(ceiling_e * 1e6, 1),
            ceiling_over_server=round(ceiling_e / server_e, 2),
            **common,
        )
        emit(
            figure="ack_turn_us",
            value=round(server_a * 1e6, 1),
            ceiling_us=round(ceiling_a * 1e6, 1),
            ceiling_over_server=round(ceiling_a / server_a, 2),
            **common,
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
