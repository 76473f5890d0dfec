"""One leader for background work across the replicas of one database (API.md §7).

PostgreSQL: the leader holds the session advisory lock LEADER_LOCK_KEY on a dedicated connection
(not the pool's, `application_name` `aorch:<node>:leader`), and on each acquisition bumps the
durable epoch and draws a random lease token in the one row of `ha_leader`. Every leader-only
write runs in `leader_transaction()`, which checks `(epoch, token)` against that row `FOR SHARE`
in the same transaction: a stale leader's write is refused (`Fenced`), never applied, and a
campaign's bump waits for fenced writes in flight to finish.

Followers campaign every CAMPAIGN_SECONDS (with jitter):
- the leader died (kill -9) or lost its database session: the server released the lock, the
  next `pg_try_advisory_lock` wins (within ~1 s);
- the leader is frozen (SIGSTOP, a stalled host) and still holds the lock: its heartbeat
  (`ha_leader.renewed_at`, the database's clock) is older than STALE_SECONDS, so the follower
  terminates the backend holding the lock and wins the next round.
The leader renews every CAMPAIGN_SECONDS and counts as leader only while its last renewal is
younger than KEEPALIVE_TIMEOUT_SECONDS on its own monotonic clock, so a process resumed after a
pause stops leading before its first write; its write would be refused anyway (new token).

SQLite: the single process leads (the epoch is bumped once at start). Every replica also renews
its row in `ha_replica` (the replicas seen recently, `GET /v1/ha/status`).

Tables are created by orchestrator_site's migrations (models LeaderState, ReplicaHeartbeat);
core reads and writes them with SQL since it imports no models.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from django.db import connection, transaction

from core import pglock
from core.dbthreads import write_turn

logger = logging.getLogger("orchestrator.leader")

# ASCII "orchlead"; pg_locks shows it as classid (high 32 bits), objid (low 32 bits), objsubid 1.
LEADER_LOCK_KEY = 0x6F7263686C656164
_CLASSID = LEADER_LOCK_KEY >> 32
_OBJID = LEADER_LOCK_KEY & 0xFFFFFFFF

# pg_locks lists the locks of every database of the server: only this database's count.
_THIS_DATABASE = "database = (SELECT oid FROM pg_database WHERE datname = current_database())"

CAMPAIGN_SECONDS = 1.0
KEEPALIVE_TIMEOUT_SECONDS = 2.5
STALE_SECONDS = 4.0
SQLITE_RENEW_SECONDS = 5.0
RECENT_SECONDS = 15.0  # a replica seen within this long counts as up

LEADER_TABLE = "ha_leader"
REPLICA_TABLE = "ha_replica"


class NotLeader(Exception):
    """This replica does not lead now; leader-only work is skipped."""


class Fenced(NotLeader):
    """A leader-only write was refused: another replica has taken over since."""


def _lock_held_sql() -> str:
    return (
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
        f"AND classid = {_CLASSID} AND objid = {_OBJID} AND objsubid = 1 AND granted "
        "AND pid = pg_backend_pid())"
    )


class Elector:
    """This replica's side of the election; one per process (`elector`)."""

    def __init__(self) -> None:
        self.node_id = ""
        self._lock = threading.Lock()
        self._leader = False
        self._epoch = 0
        self._token = ""
        self._acquired_at: datetime | None = None
        self._last_ok = 0.0
        self.campaigns = 0
        self.acquisitions = 0
        self.fenced_writes = 0
        self._conn: Any = None
        self._settings: dict[str, Any] = {}
        self._vendor = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Called after each round on the elector thread (e.g. refresh the replication gauges).
        self.hooks: list[Any] = []
        self._last_error = ""
        self.leads_with_primary = False  # serve --workers on SQLite, in a non-primary worker

    # ---- what the rest of the process asks ----

    def _leading(self) -> bool:
        # SQLite: the one process leads for good once elected. PostgreSQL: only while the last
        # renewal is recent on this process's own clock (a resumed process stops at once).
        if not self._leader:
            return False
        if self._vendor != "postgresql":
            return True
        return time.monotonic() - self._last_ok < KEEPALIVE_TIMEOUT_SECONDS

    def is_leader(self) -> bool:
        with self._lock:
            return self._leading()

    def serve_leads(self) -> bool:
        """Whether this serve leads, for the health and status routes: `is_leader()`, or a
        non-primary worker of `serve --workers N` on SQLite, whose primary worker holds the
        lease for the one serve the store has (background work runs in the primary only)."""
        return self.leads_with_primary or self.is_leader()

    def lease(self) -> tuple[int, str]:
        """(epoch, token) of this replica's leadership; NotLeader when it does not lead."""
        with self._lock:
            if not self._leading():
                raise NotLeader("this replica does not lead")
            return self._epoch, self._token

    def snapshot(self) -> dict[str, Any]:
        leader = self.serve_leads()
        with self._lock:
            return {
                "node_id": self.node_id,
                "role": "leader" if leader else "follower",
                "session_lock_held": leader,
                "epoch": self._epoch if leader else None,
                "acquired_at": self._acquired_at if leader else None,
                "campaigns": self.campaigns,
                "acquisitions": self.acquisitions,
                "fenced_writes": self.fenced_writes,
            }

    # ---- the campaign thread ----

    def start(self, node_id: str) -> None:
        """Start campaigning as `node_id` (serve calls it once, after migrating)."""
        self.node_id = node_id
        self._vendor = connection.vendor
        self._settings = dict(connection.settings_dict)
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="leader-elector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._step_down("stopping")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._vendor == "postgresql":
                    self._tick_postgres()
                else:
                    self._tick_sqlite()
            except Exception as exc:  # never kill the thread; the next round retries
                why = f"the database session failed: {pglock_first_line(exc)}"
                if why != self._last_error:  # once per distinct failure, not every second
                    logger.warning("leader election: %s", why, extra={"node_id": self.node_id})
                    logger.debug("leader election failed", exc_info=True)
                self._last_error = why
                if self._vendor == "postgresql":
                    self._step_down(why)  # SQLite: a busy round changes nothing; retry later
            else:
                self._last_error = ""
            for hook in self.hooks:
                try:
                    hook()
                except Exception:
                    logger.debug("elector hook failed", exc_info=True)
            # SQLite has no other replica to hand over to: renew the heartbeat row rarely, so the
            # single writer is not taken from ingest every second.
            period = CAMPAIGN_SECONDS if self._vendor == "postgresql" else SQLITE_RENEW_SECONDS
            self._stop.wait(period * random.uniform(0.8, 1.0))

    def _tick_sqlite(self) -> None:
        from django.db import close_old_connections

        close_old_connections()
        try:
            # The write turn first, as the events and ack writers take it: under a fleet's
            # write load a renewal that went straight for SQLite's lock waited out the busy
            # timeout ("database is locked", seen during a 10M-event prune) instead of queuing.
            with write_turn(), transaction.atomic(), connection.cursor() as cursor:
                if not self._leader:
                    self.campaigns += 1
                    token = secrets.token_hex(16)
                    cursor.execute(
                        f"INSERT INTO {LEADER_TABLE} (id, epoch, token, holder_id, "
                        "acquired_at, renewed_at) VALUES (1, 1, %s, %s, CURRENT_TIMESTAMP, "
                        "CURRENT_TIMESTAMP) ON CONFLICT (id) DO UPDATE SET "
                        f"epoch = {LEADER_TABLE}.epoch + 1, token = excluded.token, "
                        "holder_id = excluded.holder_id, acquired_at = CURRENT_TIMESTAMP, "
                        "renewed_at = CURRENT_TIMESTAMP",
                        [token, self.node_id],
                    )
                    cursor.execute(f"SELECT epoch, acquired_at FROM {LEADER_TABLE} WHERE id = 1")
                    epoch, acquired = cursor.fetchone()
                    self._become_leader(int(epoch), token, acquired)
                cursor.execute(
                    f"UPDATE {LEADER_TABLE} SET renewed_at = CURRENT_TIMESTAMP "
                    "WHERE id = 1 AND epoch = %s AND token = %s",
                    [self._epoch, self._token],
                )
                self._heartbeat(cursor, "CURRENT_TIMESTAMP")
        finally:
            close_old_connections()
        with self._lock:
            self._last_ok = time.monotonic()

    def _connect(self) -> Any:
        import psycopg

        if self._conn is not None and not self._conn.closed:
            return self._conn
        kwargs = pglock.connect_kwargs(self._settings)
        kwargs["application_name"] = f"aorch:{self.node_id}:leader"[:63]
        kwargs.setdefault("connect_timeout", 3)
        conn = psycopg.connect(**kwargs, autocommit=True)
        # Renewals never wait for a synchronous standby (the token makes a lost bump harmless),
        # and no statement of this session hangs.
        conn.execute("SET synchronous_commit = local")
        conn.execute("SET statement_timeout = '2s'")
        self._conn = conn
        return conn

    def _tick_postgres(self) -> None:
        conn = self._connect()
        if self._leader:
            held, ours = conn.execute(
                f"SELECT ({_lock_held_sql()}), EXISTS (SELECT 1 FROM {LEADER_TABLE} "
                "WHERE id = 1 AND epoch = %s AND token = %s)",
                [self._epoch, self._token],
            ).fetchone()
            if not held or not ours:
                self._step_down("lost the lock" if not held else "another replica took over")
                return
            conn.execute(
                f"UPDATE {LEADER_TABLE} SET renewed_at = now() "
                "WHERE id = 1 AND epoch = %s AND token = %s",
                [self._epoch, self._token],
            )
            with self._lock:
                self._last_ok = time.monotonic()
        else:
            self._campaign(conn)
        with conn.cursor() as cursor:
            self._heartbeat(cursor, "now()")

    def _campaign(self, conn: Any) -> None:
        import psycopg

        with self._lock:
            self.campaigns += 1
        won = conn.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK_KEY]).fetchone()[0]
        if not won:
            stale = conn.execute(
                f"SELECT holder_id FROM {LEADER_TABLE} WHERE id = 1 "
                "AND renewed_at < now() - make_interval(secs => %s)",
                [STALE_SECONDS],
            ).fetchone()
            if stale is not None:
                # The holder is frozen: end its session, which frees the lock.
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                    f"AND classid = {_CLASSID} AND objid = {_OBJID} AND objsubid = 1 AND granted "
                    f"AND pid <> pg_backend_pid() AND {_THIS_DATABASE}"
                )
                logger.warning(
                    "the leader %s stopped renewing its lease for %gs: its session was ended",
                    stale[0],
                    STALE_SECONDS,
                    extra={"holder_id": stale[0]},
                )
            return
        token = secrets.token_hex(16)
        for attempt in (1, 2):
            try:
                with conn.transaction():
                    conn.execute("SET LOCAL lock_timeout = '1s'")
                    row = conn.execute(
                        f"INSERT INTO {LEADER_TABLE} (id, epoch, token, holder_id, "
                        "acquired_at, renewed_at) VALUES (1, 1, %s, %s, now(), now()) "
                        f"ON CONFLICT (id) DO UPDATE SET epoch = {LEADER_TABLE}.epoch + 1, "
                        "token = EXCLUDED.token, "
                        "holder_id = EXCLUDED.holder_id, acquired_at = now(), renewed_at = now() "
                        "RETURNING epoch, acquired_at",
                        [token, self.node_id],
                    ).fetchone()
                break
            except psycopg.errors.LockNotAvailable:
                if attempt == 2:
                    conn.execute("SELECT pg_advisory_unlock(%s)", [LEADER_LOCK_KEY])
                    return
                # A frozen old leader's fenced write holds the row: end those sessions.
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE relation = "
                    f"'{LEADER_TABLE}'::regclass AND mode = 'RowShareLock' AND granted "
                    f"AND pid <> pg_backend_pid() AND {_THIS_DATABASE}"
                )
        self._become_leader(int(row[0]), token, row[1])

    def _become_leader(self, epoch: int, token: str, acquired: Any) -> None:
        with self._lock:
            self._leader = True
            self._epoch = epoch
            self._token = token
            self._acquired_at = as_datetime(acquired)
            self._last_ok = time.monotonic()
            self.acquisitions += 1
        logger.info(
            "this replica (%s) leads background work now (epoch %d)",
            self.node_id,
            epoch,
            extra={"node_id": self.node_id, "epoch": epoch},
        )

    def _heartbeat(self, cursor: Any, now_sql: str) -> None:
        role = "leader" if self.is_leader() else "follower"
        cursor.execute(
            f"INSERT INTO {REPLICA_TABLE} (node_id, role, started_at, seen_at) "
            f"VALUES (%s, %s, {now_sql}, {now_sql}) ON CONFLICT (node_id) DO UPDATE "
            f"SET role = excluded.role, seen_at = {now_sql}",
            [self.node_id, role],
        )

    def _step_down(self, why: str) -> None:
        with self._lock:
            was_leader = self._leader
            self._leader = False
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # a closed session releases the advisory lock
        if was_leader:
            logger.warning(
                "this replica (%s) stopped leading: %s",
                self.node_id,
                why,
                extra={"node_id": self.node_id},
            )

    def note_fenced(self) -> None:
        with self._lock:
            self.fenced_writes += 1
            self._leader = False
        logger.warning("a leader-only write was refused: another replica leads now")


def pglock_first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


elector = Elector()


@contextmanager
def leader_transaction(lease: tuple[int, str] | None = None) -> Iterator[None]:
    """A transaction that commits only while `lease` (default: this replica's) is the leader's.

    Raises NotLeader before it starts when this replica does not lead, and Fenced (rolling back
    everything done in the block) when the durable row names another lease.
    """
    epoch, token = lease if lease is not None else elector.lease()
    _test_pause_before_leader_write(epoch)
    with transaction.atomic():
        with connection.cursor() as cursor:
            lock = " FOR SHARE" if connection.vendor == "postgresql" else ""
            cursor.execute(
                f"SELECT 1 FROM {LEADER_TABLE} WHERE id = 1 AND epoch = %s AND token = %s{lock}",
                [epoch, token],
            )
            if cursor.fetchone() is None:
                elector.note_fenced()
                raise Fenced(f"the lease of epoch {epoch} is no longer the leader's")
        yield


# Test hook (tests/test_ha_replicas.py, the real-process fencing test), read only when set:
# AUTONOMY_TEST_PAUSE_BEFORE_LEADER_WRITE=<path> makes the first leader-only write of the
# process, after it has taken its lease and before its transaction, create <path> and wait
# (at most 60 s) until the test removes it. Never set it in production.
PAUSE_HOOK_ENV = "AUTONOMY_TEST_PAUSE_BEFORE_LEADER_WRITE"
_paused_once = False


def _test_pause_before_leader_write(epoch: int) -> None:
    global _paused_once
    marker = os.environ.get(PAUSE_HOOK_ENV)
    if not marker or _paused_once:
        return
    _paused_once = True
    path = Path(marker)
    path.write_text(f"{epoch}\n")
    logger.warning("test hook: pausing before a leader-only write (epoch %d)", epoch)
    deadline = time.monotonic() + 60
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def leader_row() -> dict[str, Any]:
    """The durable leader row (zeros when nobody has led yet); DatabaseError when unreachable."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT epoch, holder_id, acquired_at, renewed_at FROM {LEADER_TABLE} WHERE id = 1"
        )
        row = cursor.fetchone()
    if row is None:
        return {"epoch": 0, "holder_id": "", "acquired_at": None, "renewed_at": None}
    return {
        "epoch": int(row[0]),
        "holder_id": row[1],
        "acquired_at": as_datetime(row[2]),
        "renewed_at": as_datetime(row[3]),
    }


def recent_replicas() -> list[dict[str, Any]]:
    """Replicas whose heartbeat is younger than RECENT_SECONDS (database clock), by node id."""
    if connection.vendor == "postgresql":
        cutoff = f"now() - make_interval(secs => {RECENT_SECONDS:g})"
    else:
        cutoff = f"datetime('now', '-{int(RECENT_SECONDS)} seconds')"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT node_id, role, started_at, seen_at FROM {REPLICA_TABLE} "
            f"WHERE seen_at >= {cutoff} ORDER BY node_id"
        )
        rows = cursor.fetchall()
    return [
        {
            "node_id": r[0],
            "role": r[1],
            "started_at": as_datetime(r[2]),
            "seen_at": as_datetime(r[3]),
        }
        for r in rows
    ]


def as_datetime(value: Any) -> datetime | None:
    """A timestamp read with raw SQL (SQLite gives text, UTC) as an aware datetime."""
    from datetime import UTC

    from django.utils.dateparse import parse_datetime

    if value is None:
        return None
    parsed = value if isinstance(value, datetime) else parse_datetime(str(value))
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


__all__ = [
    "Elector",
    "Fenced",
    "NotLeader",
    "elector",
    "leader_row",
    "leader_transaction",
    "recent_replicas",
]
