"""The HA fault harness shared by tests/test_ha_failover.py and bench/ha.py: `serve` replicas on
a throwaway primary (and streaming standby) of tests/pgcluster.py, a bounded ingest load that
remembers every acknowledged event, and the faults: leader kill -9, leader SIGSTOP, primary
crash + standby promotion (asynchronous or synchronous replication), database stop/start,
`pg_ctl restart -m fast` and connection exhaustion.

Each scenario returns a dict of what clients got (answers by status), the longest gap between
two acknowledged writes, the acknowledged events missing from the database afterwards, and the
scenario's own timings. Loopback only.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.liveserver import ServeProcess, call
from tests.pgcluster import PgCluster

_ids = itertools.count()


def wait_for(predicate: Any, limit: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def replica(root: Path, url: str, name: str, *extra: str, keys_from: Path | None = None):
    data = root / name / "data"
    if keys_from is not None:
        data.mkdir(parents=True, mode=0o700)
        for key in ("rollout-signing.key", "django-secret.key"):
            shutil.copy2(keys_from / key, data / key)
    return ServeProcess(
        data,
        "--postgres-url",
        url,
        "--node-name",
        name,
        "--db-pool-size",
        "4",
        "--db-pool-timeout",
        "1",
        *extra,
    )


def start_replicas(root: Path, url: str, count: int = 3, *extra: str) -> list[ServeProcess]:
    first = replica(root, url, "r1", *extra).start()
    return [first] + [
        replica(root, url, f"r{i}", *extra, keys_from=first.data_dir).start()
        for i in range(2, count + 1)
    ]


def stop_all(replicas: list[ServeProcess]) -> None:
    for srv in replicas:
        if srv.proc is not None and srv.proc.poll() is None:
            os.kill(srv.proc.pid, signal.SIGCONT)
        srv.stop()


def leader_view(srv: ServeProcess) -> dict[str, Any] | None:
    try:
        status, _, body = call(srv, "GET", "/v1/health/leader", timeout=3)
    except (urllib.error.URLError, OSError):
        return None
    return body if status == 200 else None


def leaders(replicas: list[ServeProcess]) -> list[ServeProcess]:
    return [s for s in replicas if (leader_view(s) or {}).get("session_lock_held")]


@dataclass
class Load:
    """Ingest batches of 5 events round-robin over the replicas, from `clients` threads."""

    replicas: list[ServeProcess]
    clients: int = 3
    statuses: Counter[int] = field(default_factory=Counter)
    acked: list[str] = field(default_factory=list)
    ack_times: list[float] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, index: int) -> None:
        turn = itertools.count(index)
        while not self._stop.is_set():
            srv = self.replicas[next(turn) % len(self.replicas)]
            if srv.proc is None or srv.proc.poll() is not None:
                continue
            ids = [f"ha-{os.getpid()}-{index}-{next(_ids)}" for _ in range(5)]
            body = {
                "events": [
                    {
                        "event_id": event_id,
                        "event_type": "app.tick",
                        "node_id": f"node-{index}",
                        "timestamp": "2026-11-27T10:00:00Z",
                    }
                    for event_id in ids
                ]
            }
            try:
                status, headers, answer = call(srv, "POST", "/v1/events", body, timeout=15)
            except (urllib.error.URLError, OSError):
                status, headers, answer = 0, {}, None  # a killed or stopped replica
            with self._lock:
                self.statuses[status] += 1
                if 200 <= status < 300:
                    self.acked.extend(ids)
                    self.ack_times.append(time.monotonic())
                elif status >= 500 and (status != 503 or "Retry-After" not in headers):
                    self.bad.append(f"{status} {answer}")
            if status == 503:
                time.sleep(0.2)

    def start(self) -> Load:
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(i,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def longest_gap(self) -> float:
        times = sorted(self.ack_times)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def first_ack_after(self, moment: float) -> float | None:
        later = [t for t in self.ack_times if t >= moment]
        return min(later) - moment if later else None


def missing(url: str, ids: list[str]) -> int:
    """How many of `ids` the events table lacks."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        present = {
            row[0]
            for row in conn.execute(
                "SELECT event_id FROM events_event WHERE event_id = ANY(%s)", [ids]
            )
        }
    return len(set(ids) - present)


def leader_kill(root: Path, url: str, sig: int = signal.SIGKILL) -> dict[str, Any]:
    """Kill -9 (or SIGSTOP) the leader under load; seconds until another replica leads."""
    replicas = start_replicas(root, url)
    load = Load(replicas).start()
    try:
        assert wait_for(lambda: len(leaders(replicas)) == 1, 20, step=0.2)
        chief = leaders(replicas)[0]
        rest = [s for s in replicas if s is not chief]
        time.sleep(2)
        assert chief.proc is not None
        os.kill(chief.proc.pid, sig)
        hit = time.monotonic()
        wait_for(lambda: len(leaders(rest)) == 1, 30)
        took = time.monotonic() - hit
        if sig == signal.SIGSTOP:
            os.kill(chief.proc.pid, signal.SIGCONT)
            wait_for(lambda: (leader_view(chief) or {}).get("session_lock_held") is False, 10)
        time.sleep(2)
        after = len(leaders(replicas))
    finally:
        load.stop()
        stop_all(replicas)
    return {
        "takeover_s": round(took, 2),
        "leaders_after": after,
        "statuses": dict(load.statuses),
        "bad": load.bad[:5],
        "longest_write_gap_s": round(load.longest_gap(), 2),
        "acked": len(load.acked),
        "lost": missing(url, load.acked),
    }


def promotion(root: Path, *, synchronous: bool, seconds: float = 3.0) -> dict[str, Any]:
    """Primary crash (`pg_ctl stop -m immediate`) + `pg_ctl promote` of the streaming standby
    under load, three replicas on a multi-host URL with target_session_attrs=read-write."""
    primary = PgCluster.create()  # in the system temp dir: the postgres user must reach it
    standby = None
    replicas: list[ServeProcess] = []
    try:
        primary.sql("CREATE DATABASE fleet")
        standby = primary.standby()
        if synchronous:
            primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
            primary.sql("SELECT pg_reload_conf()")
        url = (
            f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/fleet"
            "?target_session_attrs=read-write&connect_timeout=2"
        )
        replicas = start_replicas(root / "replicas", url)
        streaming = call(replicas[0], "GET", "/v1/ha/status")[2]["database"]
        load = Load(replicas).start()
        time.sleep(seconds)
        crash = time.monotonic()
        primary.stop("immediate")
        standby.promote()
        promoted = time.monotonic()
        wait_for(lambda: load.first_ack_after(promoted) is not None, 30)
        time.sleep(seconds)
        wait_for(lambda: len(leaders(replicas)) == 1, 15, step=0.2)
        load.stop()
        resumed = load.first_ack_after(promoted)
        new_url = f"postgresql://postgres@127.0.0.1:{standby.port}/fleet"
        return {
            "replication": "synchronous" if synchronous else "asynchronous",
            "sync_standbys_before": streaming["sync_standbys_streaming"],
            "promote_s": round(promoted - crash, 2),
            "writes_resumed_after_promote_s": None if resumed is None else round(resumed, 2),
            "leaders_after": len(leaders(replicas)),
            "statuses": dict(load.statuses),
            "bad": load.bad[:5],
            "longest_write_gap_s": round(load.longest_gap(), 2),
            "acked": len(load.acked),
            "lost": missing(new_url, load.acked),
        }
    finally:
        stop_all(replicas)
        if standby is not None:
            standby.destroy()
        primary.destroy()


def database_fault(
    root: Path, kind: str, *, count: int = 3, down_seconds: float = 5.0, seconds: float = 3.0
) -> dict[str, Any]:
    """A fault of the database itself under `count` replicas and load, on a cluster of its own:

    - "stop/start": `pg_ctl stop -m fast`, `down_seconds` away, then start;
    - "restart": `pg_ctl restart -m fast`;
    - "exhaustion": `max_connections` 20 with 3 reserved for superusers, the replicas (a plain
      role) sized past it (pools of 10, 12 clients), and another client of the same role takes
      every slot left for 2.5 s: the replicas answer 503 + Retry-After, never 500, and an
      operator's superuser session (psql) still gets in.
    """
    exhaustion = kind == "exhaustion"
    settings: dict[str, Any] = (
        {"max_connections": 20, "superuser_reserved_connections": 3} if exhaustion else {}
    )
    pg = PgCluster.create(**settings)
    replicas: list[ServeProcess] = []
    try:
        pg.sql("CREATE ROLE aorch LOGIN")
        pg.sql("CREATE DATABASE fleet OWNER aorch")
        url = f"postgresql://aorch@127.0.0.1:{pg.port}/fleet?connect_timeout=2"
        extra = ("--db-pool-size", "10") if exhaustion else ()
        # One replica after another (the first makes the keys); the pool options come last.
        first = replica(root, url, "r1", *extra).start()
        replicas = [first] + [
            replica(root, url, f"r{i}", *extra, keys_from=first.data_dir).start()
            for i in range(2, count + 1)
        ]
        load = Load(replicas, clients=12 if exhaustion else 3).start()
        result: dict[str, Any] = {"fault": kind, "replicas": count}
        try:
            time.sleep(seconds)
            hit = time.monotonic()
            if kind == "stop/start":
                pg.stop("fast")
                time.sleep(down_seconds)
                back = time.monotonic()
                pg.start()
            elif kind == "restart":
                pg.restart("fast")
                back = time.monotonic()
            elif kind == "exhaustion":
                back = hit
                # Another client of the same role takes every slot left but the reserved ones.
                hog = []
                with contextlib.suppress(psycopg.OperationalError):
                    for _ in range(20):
                        hog.append(psycopg.connect(url, connect_timeout=3))
                result["slots_taken_by_another_client"] = len(hog)
                operator = []
                for _ in range(5):  # an operator's psql (superuser) while the pools are full
                    try:
                        with psycopg.connect(pg.url("fleet"), connect_timeout=3) as conn:
                            conn.execute("SELECT 1")
                        operator.append(True)
                    except psycopg.OperationalError:
                        operator.append(False)
                    time.sleep(0.5)
                in_use = pg.sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'aorch'", "fleet"
                )[0][0]
                for conn in hog:
                    conn.close()
                result["operator_sessions_ok"] = f"{sum(operator)} of {len(operator)}"
                result["replica_connections_at_peak"] = in_use
            else:
                raise ValueError(kind)
            wait_for(lambda: load.first_ack_after(back) is not None, 30)
            resumed = load.first_ack_after(back)
            result["writes_resumed_after_start_s"] = None if resumed is None else round(resumed, 2)
            time.sleep(seconds)
        finally:
            load.stop()
        result.update(
            statuses=dict(load.statuses),
            bad=load.bad[:5],
            longest_write_gap_s=round(load.longest_gap(), 2),
            acked=len(load.acked),
            lost=missing(pg.url("fleet"), load.acked),
        )
        return result
    finally:
        stop_all(replicas)
        pg.destroy()
