"""Events retention against the real `autonomy-orchestrator serve` (SQLite): what an event
costs on disk, ingest latency while a large prune runs, and a store that stays flat.

    python bench/retention.py [--events 1000000] [--seconds 30] [--baseline-seconds S] [--clients 8]
                              [--short-retention 10s] [--size-seconds 60]

1. bytes per event: --bytes-events (50,000) events of ~400 bytes of JSON through
   `POST /v1/events` (100-event batches) into a fresh store; the store file's growth divided by
   the events, after the server stopped (WAL checkpointed into the file).
2. ingest during a prune: a store filled with --events events received two days ago (straight
   into the schema, as bench/ingest.py fills it); first --seconds of `POST /v1/events` load
   with retention off (the baseline), then the same load on a server started with
   `--events-retention 1d`, whose pruner starts deleting the backlog 5 s after start. Reports
   p50/p99/max of both, how many events the prune deleted and how long it took (the pruner's
   log line). The issue's figure is a prune of 10,000,000 events: `--events 10000000` (the
   fill alone takes minutes; the prune runs on at ~the rate printed).
3. a store that stops growing: `--events-retention <--short-retention>`, steady ingest at
   --size-rate events/s (one connection, on a schedule) for --size-seconds (longer than the
   retention), the store's size (file + WAL) sampled every second; reports the samples every
   5 s and the growth after the first two retention windows, of the sum and of the database
   file alone (the WAL file keeps the largest size its log reached, at most 64 MiB).

One JSON object per line. Loopback only; every server is a subprocess stopped by its pid.
Figures go to docs/performance.md ("Storage and capacity"). Not a CI test.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LoadResult, machine_summary, run_load, start_orchestrator
from ingest import BATCH, DB_NAME, fill_store, ingest_request

DELETED = re.compile(r"events retention: deleted (\d+) events")


def emit(**fields: object) -> None:
    print(orjson.dumps(fields).decode(), flush=True)


def store_bytes(data_dir: Path) -> int:
    return sum(
        p.stat().st_size for p in data_dir.glob(DB_NAME + "*") if not p.name.endswith("-shm")
    )


def file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def count_events(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / DB_NAME) as db:
        return int(db.execute("SELECT COUNT(*) FROM events_event").fetchone()[0])


def fresh_store(root: Path, name: str) -> Path:
    """A migrated, empty store (serve started once and stopped)."""
    data_dir = root / name
    server = start_orchestrator(data_dir, "--events-retention", "0")
    server.stop()
    return data_dir


def load_figures(result: LoadResult) -> dict[str, object]:
    return {
        "requests": result.requests,
        "errors": result.errors,
        "events_per_s": round(result.rate * BATCH),
        "p50_ms": round(result.pct(50), 1),
        "p99_ms": round(result.pct(99), 1),
        "max_ms": round(max(result.latencies_ms or [0.0]), 1),
    }


def bytes_per_event(root: Path, events: int) -> None:
    data_dir = fresh_store(root, "bytes")
    empty = (data_dir / DB_NAME).stat().st_size
    server = start_orchestrator(data_dir, "--events-retention", "0")
    try:
        while count_events(data_dir) < events:
            run_load(server.port, ingest_request, connections=4, processes=1, seconds=2, warmup=0)
    finally:
        server.stop()
    stored = count_events(data_dir)
    size = (data_dir / DB_NAME).stat().st_size
    emit(
        part="bytes_per_event",
        events=stored,
        store_bytes=size,
        bytes_per_event=round((size - empty) / stored),
    )


def prune_under_load(root: Path, args: argparse.Namespace) -> None:
    data_dir = fresh_store(root, "prune")
    started = time.monotonic()
    fill_store(data_dir / DB_NAME, args.events)
    emit(part="fill", events=args.events, seconds=round(time.monotonic() - started, 1))

    server = start_orchestrator(data_dir, "--events-retention", "0")
    try:
        base = run_load(
            server.port,
            ingest_request,
            connections=args.clients,
            processes=args.client_processes,
            seconds=args.baseline_seconds or args.seconds,
        )
    finally:
        server.stop()
    emit(part="ingest_baseline", retention="0", **load_figures(base))

    log = root / "prune.log"
    server = start_orchestrator(
        data_dir, "--events-retention", "1d", "--log-level", "info", log=log
    )
    t0 = time.monotonic()
    try:
        during = run_load(
            server.port,
            ingest_request,
            connections=args.clients,
            processes=args.client_processes,
            seconds=args.seconds,
        )
        emit(part="ingest_during_prune", retention="1d", **load_figures(during))
        deadline = time.monotonic() + args.prune_wait
        while time.monotonic() < deadline:
            found = DELETED.search(log.read_text(errors="replace"))
            if found:
                took = time.monotonic() - t0 - 5.0  # the first round starts 5 s after start
                deleted = int(found.group(1))
                emit(
                    part="prune",
                    deleted=deleted,
                    seconds=round(took, 1),
                    events_per_s=round(deleted / took) if took > 0 else None,
                    done_within_load_window=took < args.seconds,
                )
                break
            time.sleep(1)
        else:
            emit(part="prune", deleted=None, note=f"not finished after {args.prune_wait}s")
    finally:
        server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


def paced_ingest(port: int, rate: float, seconds: float) -> tuple[int, int, list[float]]:
    """POST 100-event batches at `rate` events/s for `seconds` on one keep-alive connection,
    on a fixed schedule (a late batch is sent at once, the schedule does not slip): (sent,
    errors, latencies in ms)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    interval = BATCH / rate
    start = time.monotonic()
    sent = errors = 0
    latencies: list[float] = []
    while True:
        due = start + sent * interval
        now = time.monotonic()
        if due - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        raw = ingest_request(0, sent)
        _head, body = raw.split(b"\r\n\r\n", 1)
        t0 = time.perf_counter()
        conn.request("POST", "/v1/events", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        latencies.append((time.perf_counter() - t0) * 1000)
        sent += 1
        if response.status != 200:
            errors += 1
    conn.close()
    return sent * BATCH, errors, latencies


def flat_store(root: Path, args: argparse.Namespace) -> None:
    data_dir = fresh_store(root, "flat")
    server = start_orchestrator(data_dir, "--events-retention", args.short_retention)
    samples: list[tuple[float, int]] = []
    wal: list[int] = []  # the WAL file's size at each sample (the rest is the database file)
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.wait(1.0):
            samples.append((time.monotonic() - t0, store_bytes(data_dir)))
            wal.append(file_bytes(data_dir / (DB_NAME + "-wal")))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        events, errors, latencies = paced_ingest(server.port, args.size_rate, args.size_seconds)
    finally:
        stop.set()
        sampler.join()
        server.stop()
    retention = float(args.short_retention.rstrip("s"))
    every5 = [(round(t), size) for t, size in samples if round(t) % 5 == 0]
    settled = [size for t, size in samples if t >= 2 * retention + 5]
    first = settled[0] if settled else None
    # The same for the database file alone: the WAL file keeps the largest size its log reached
    # (up to `core.walcheckpoint.JOURNAL_SIZE_LIMIT_BYTES`), so the sum steps up when a burst
    # takes the log further than before, while the events live in the database file.
    files = [(t, size - w, w) for (t, size), w in zip(samples, wal, strict=True)]
    db_every5 = [(round(t), db, w) for t, db, w in files if round(t) % 5 == 0]
    db_settled = [db for t, db, _ in files if t >= 2 * retention + 5]
    latencies.sort()
    emit(
        part="store_size",
        retention=args.short_retention,
        events=events,
        events_per_s=args.size_rate,
        errors=errors,
        ingest_p99_ms=round(latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        samples_every_5s=every5,
        size_after_two_windows=first,
        max_after=max(settled) if settled else None,
        growth_after=round(max(settled) / first - 1, 3) if first else None,
        database_and_wal_every_5s=db_every5,
        database_after_two_windows=db_settled[0] if db_settled else None,
        database_max_after=max(db_settled) if db_settled else None,
        database_growth_after=(
            round(max(db_settled) / db_settled[0] - 1, 3) if db_settled else None
        ),
        wal_max=max(wal) if wal else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="backlog to prune")
    parser.add_argument("--bytes-events", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=30.0, help="each ingest load window")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--prune-wait", type=float, default=3600.0)
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=0.0,
        help="the load window without retention (default: --seconds); a 10M-event prune needs "
        "a long window while the baseline does not",
    )
    parser.add_argument("--short-retention", default="10s", help="seconds, like 10s")
    parser.add_argument("--size-seconds", type=float, default=60.0)
    parser.add_argument("--size-rate", type=float, default=2000.0, help="events/s in part 3")
    parser.add_argument("--only", choices=("bytes", "prune", "flat"), default=None)
    args = parser.parse_args()
    if not re.fullmatch(r"\d+s", args.short_retention):
        parser.error("--short-retention takes whole seconds, like 10s")
    emit(bench="retention", machine=machine_summary(), args=vars(args))
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        root = Path(tmp)
        if args.only in (None, "bytes"):
            bytes_per_event(root, args.bytes_events)
        if args.only in (None, "prune"):
            prune_under_load(root, args)
        if args.only in (None, "flat"):
            flat_store(root, args)


if __name__ == "__main__":
    main()
