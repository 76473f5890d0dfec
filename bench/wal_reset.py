"""What the WAL's start-over costs the writers, with the WAL file cut back or kept.

    python bench/wal_reset.py [--seconds 30] [--commits-per-second 250] [--rows 40]
                              [--limits 4,64]

`serve` on SQLite turns SQLite's own checkpoints off and runs `core.walcheckpoint.Checkpointer`,
which resets the WAL in a write turn when it holds more than `RESET_BYTES` (docs/performance.md).
The next writer then starts the WAL from its beginning, and in that transaction's COMMIT SQLite
cuts the file back to `journal_size_limit` when it is larger: on a file system that discards
freed blocks at once, that truncation takes milliseconds, inside the writer's turn.

This runs, once per `--limits` value (MiB of `journal_size_limit`), a writer thread that commits
`--rows` rows of ~400 bytes with random keys (an index on them: random pages, as a fleet's
writes) at `--commits-per-second` (open loop: each commit has a scheduled time), each inside the
write turn (a lock shared with the checkpointer, as `core.dbthreads.write_turn`), the WAL
fsynced after the turn as under `serve`; and the real Checkpointer (interval 0.5 s, a reset past
16 MiB). Figures per limit: the time each commit held the turn (p50/p99/max, the commits that
held it over 5 ms, the total), its latency from its scheduled time (p99/max), the WAL resets and
the truncations of the WAL file seen (its size going down), and the file's largest size. The
first limit is the reference of the ratios. One JSON object per figure on stdout; a temporary
directory, removed at the end. Not a CI test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from _common import machine_summary

from core.walcheckpoint import Checkpointer


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def run(directory: Path, limit_mib: int, args: argparse.Namespace) -> dict[str, float]:
    path = str(directory / f"store-{limit_mib}.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(f"PRAGMA journal_size_limit={limit_mib * 1024 * 1024}")
    conn.execute("PRAGMA synchronous=NORMAL")  # the writer fsyncs the WAL after its turn
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT, v BLOB)")
    conn.execute("CREATE INDEX t_k ON t (k)")
    turn = threading.Lock()
    checkpointer = Checkpointer(path, turn=lambda: turn).start()
    wal = path + "-wal"
    held: list[float] = []
    late: list[float] = []
    sizes: list[int] = []
    rng = random.Random(7)
    payload = os.urandom(400)
    interval = 1.0 / args.commits_per_second
    start = time.monotonic()
    due = start
    fd: int | None = None
    while due - start < args.seconds:
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        rows = [(f"{rng.getrandbits(64):016x}", payload) for _ in range(args.rows)]
        with turn:
            began = time.monotonic()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (k, v) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
            held.append(time.monotonic() - began)
        if fd is None:
            fd = os.open(wal, os.O_RDONLY)
        os.fdatasync(fd)
        late.append(time.monotonic() - due)
        sizes.append(os.fstat(fd).st_size)
        due += interval
    checkpointer.stop()
    if fd is not None:
        os.close(fd)
    conn.close()
    truncations = sum(1 for a, b in itertools.pairwise(sizes) if b < a)
    return {
        "turn_p50_ms": _percentile(held, 0.5) * 1000,
        "turn_p99_ms": _percentile(held, 0.99) * 1000,
        "turn_max_ms": max(held) * 1000,
        "turns_over_5ms": float(sum(1 for h in held if h > 0.005)),
        "turn_total_s": sum(held),
        "latency_p99_ms": _percentile(late, 0.99) * 1000,
        "latency_max_ms": max(late) * 1000,
        "commits": float(len(held)),
        "resets": float(checkpointer.resets),
        "wal_truncations": float(truncations),
        "wal_file_max_mb": max(sizes) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--commits-per-second", type=float, default=250.0)
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--limits", default="4,64", help="journal_size_limit values, MiB")
    args = parser.parse_args()
    limits = [int(value) for value in args.limits.split(",")]
    print(machine_summary(), file=sys.stderr)
    directory = Path(tempfile.mkdtemp(prefix="bench-wal-reset-"))
    try:
        results = {limit: run(directory, limit, args) for limit in limits}
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    reference = results[limits[0]]
    for limit, figures in results.items():
        for name, value in figures.items():
            line = {"figure": name, "value": round(value, 2), "journal_size_limit_mib": limit}
            if name.startswith(("turn_", "latency_")) and reference[name]:
                line["ratio_to_first"] = round(value / reference[name], 2)
            print(json.dumps(line))
        print(
            f"journal_size_limit {limit} MiB: turn p50/p99/max "
            f"{figures['turn_p50_ms']:.2f}/{figures['turn_p99_ms']:.1f}/"
            f"{figures['turn_max_ms']:.1f} ms ({figures['turns_over_5ms']:.0f} over 5 ms; "
            f"{figures['turn_total_s']:.2f} s held), latency p99/max "
            f"{figures['latency_p99_ms']:.1f}/{figures['latency_max_ms']:.1f} ms, "
            f"{figures['resets']:.0f} resets, "
            f"{figures['wal_truncations']:.0f} truncations, WAL file up to "
            f"{figures['wal_file_max_mb']:.1f} MB",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
