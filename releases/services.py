"""Writes for releases and acks: `release_publish`, `node_ack_upsert` (through the ack writer,
`releases.writer`), `node_acks_store` (the group commit of acks); the fleet view's tables
(`fleet_nodes_seen` from the events writer, `_FleetRows` from every group of acks,
`fleet_acks_refresh` to rebuild them from the stored acks)."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models import Max
from django.utils import timezone

from access.models import AuditRecord
from access.services import audit_write
from core import jsonvalues
from core.auth import Principal, acting
from core.dbthreads import execute
from core.errors import ApiError
from releases import release_signing
from releases.ackbook import ack_book
from releases.models import FleetNode, FleetNodeAck, NodeAck, Release
from releases.selectors import latest_cache

logger = logging.getLogger("orchestrator.releases")

# A publish retries when another publish to the same channel took the same sequence first. On
# SQLite IMMEDIATE transactions already serialize writers; on PostgreSQL the publishes to one
# channel wait for each other on a transaction advisory lock (PUBLISH_LOCK_CLASS, hash of the
# channel), so a retry is only needed when the same release_id is published concurrently.
PUBLISH_ATTEMPTS = 20
PUBLISH_LOCK_CLASS = 0x6F726370  # ASCII "orcp": the first key of pg_advisory_xact_lock(int, int)

# The fields that decide "identical re-publish" (200) vs "conflicting duplicate" (409).
COMPARED_FIELDS = ("channel", "policy_ref", "lock_fingerprint", "artifact_ref", "metadata")


def _serialize_channel_publishes(channel: str) -> None:
    """On PostgreSQL, wait for any other transaction publishing to `channel` (until this one
    ends): 40 simultaneous publishes then take sequences one after another instead of racing for
    the same number and running out of retries (a 503 seen in CI with 16 parallel clients)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [PUBLISH_LOCK_CLASS, channel]
        )


@dataclass(frozen=True)
class Outcome:
    """A stored object and whether this call created it (201) or found/updated it (200)."""

    obj: Any
    created: bool


def _check_same(existing: Release, wanted: dict[str, Any]) -> None:
    differing = [
        name
        for name in COMPARED_FIELDS
        if not (
            jsonvalues.same(existing.metadata, wanted[name])  # as stored: jsonb spells numbers anew
            if name == "metadata"
            else getattr(existing, name) == wanted[name]
        )
    ]
    if differing:
        raise ApiError(
            409,
            f"release '{existing.release_id}' already exists with a different "
            + ", ".join(differing),
            release_id=existing.release_id,
            fields=differing,
        )


def release_publish(
    *,
    release_id: str,
    channel: str = "stable",
    policy_ref: str | None = None,
    lock_fingerprint: str | None = None,
    artifact_ref: str | None = None,
    metadata: dict[str, Any] | None = None,
    release_signature: dict[str, Any] | None = None,
    principal: Principal | None = None,
) -> Outcome:
    """Store a release with the channel's next sequence (1, 2, 3, ... without gaps).

    The sequence is MAX(sequence)+1 of the channel, read and used inside one short transaction;
    the (channel, sequence) unique constraint turns a concurrent publish that took the same number
    into an IntegrityError, and we retry. A re-publish of the same release_id stores nothing and
    consumes no number: identical fields -> Outcome(created=False), different -> ApiError 409.

    `release_signature` (the offline signature, docs/trust.md) must match the release's fields;
    with trusted release keys (`serve --release-trust-key`) it is required and must verify with
    one of them: else ApiError 400. It is not compared on a re-publish.
    """
    _check_release_signature(
        {
            "release_id": release_id,
            "channel": channel,
            "artifact_ref": artifact_ref,
            "lock_fingerprint": lock_fingerprint,
            "metadata": metadata,
        },
        release_signature,
    )
    wanted: dict[str, Any] = {
        "channel": channel,
        "policy_ref": policy_ref,
        "lock_fingerprint": lock_fingerprint,
        "artifact_ref": artifact_ref,
        "metadata": {} if metadata is None else metadata,
    }
    for _attempt in range(PUBLISH_ATTEMPTS):
        existing = Release.objects.filter(release_id=release_id).first()
        if existing is not None:
            _check_same(existing, wanted)
            return Outcome(existing, created=False)
        try:
            with transaction.atomic():
                _serialize_channel_publishes(channel)
                top = Release.objects.filter(channel=channel).aggregate(top=Max("sequence"))["top"]
                release = Release.objects.create(
                    release_id=release_id,
                    sequence=(top or 0) + 1,
                    created_at=timezone.now(),
                    release_signature=release_signature,
                    **wanted,
                )
                audit_write(
                    event_name="release.published",
                    outcome=AuditRecord.Outcome.SUCCESS,
                    principal=principal or acting(None, None),
                    target=release_id,
                    detail={
                        "channel": channel,
                        "sequence": release.sequence,
                        "artifact_ref": artifact_ref,
                        "release_key_id": (release_signature or {}).get("key_id"),
                    },
                )
        except IntegrityError:
            # Either the same release_id was published concurrently (the next loop answers
            # 200/409) or another release took this sequence number (the next loop retries).
            continue
        latest_cache.invalidate()
        logger.info(
            "published release %s to %s as #%d",
            release_id,
            channel,
            release.sequence,
            extra={"release_id": release_id, "channel": channel, "sequence": release.sequence},
        )
        return Outcome(release, created=True)
    raise ApiError(
        503, "too many concurrent publishes to this channel; retry shortly", channel=channel
    )


@dataclass(frozen=True)
class AckWrite:
    """One validated ack to store: `values` are the row's status, lock_fingerprint, message,
    acked_at and updated_at."""

    node_id: str
    release_id: str
    values: dict[str, Any]


_ACK_COLUMNS = ("status", "lock_fingerprint", "message", "acked_at", "updated_at")
_TIME_COLUMNS = ("acked_at", "updated_at")


@dataclass(frozen=True)
class AckRelease:
    pk: int
    release_id: str


@dataclass(frozen=True)
class StoredAck:
    """A stored ack as its answer reads it (`selectors.ack_as_dict`): NodeAck's fields without
    building the model, which costs ~50 µs per ack inside the write turn (more than the
    ack's share of the statements)."""

    node_id: str
    release: AckRelease
    status: str
    lock_fingerprint: str | None
    message: str | None
    acked_at: datetime
    updated_at: datetime


_ack_sql: tuple[str, str, str] | None = None


def _ack_statements() -> tuple[str, str, str]:
    """(select releases, upsert a group of acks: its head and its tail), in this database's
    quoting, built once: the upsert takes one placeholder list per ack between its parts."""
    global _ack_sql
    if _ack_sql is None:
        qn = connection.ops.quote_name
        acks, releases = qn(NodeAck._meta.db_table), qn(Release._meta.db_table)
        node, release = qn("node_id"), qn("release_id")
        columns = ", ".join(qn(c) for c in ("node_id", "release_id", *_ACK_COLUMNS))
        sets = ", ".join(f"{qn(c)} = excluded.{qn(c)}" for c in _ACK_COLUMNS)
        tail = f" ON CONFLICT ({node}, {release}) DO UPDATE SET {sets}"
        if connection.vendor == "postgresql":
            # xmax is 0 on a row this statement inserted, the updating transaction's id otherwise.
            tail += f" RETURNING {node}, {release}, {qn('id')}, (xmax = 0)"
        _ack_sql = (
            f"SELECT {qn('id')}, {release}, {qn('channel')}, {qn('sequence')} FROM {releases} "
            f"WHERE {release} IN ",
            f"INSERT INTO {acks} ({columns}) VALUES ",
            tail,
        )
    return _ack_sql


def _sqlite_group_state(
    cursor: Any, release_ids: list[str], nodes: list[str], ids: dict[tuple[str, int], int]
) -> tuple[dict[str, tuple[Any, ...]], int]:
    """SQLite, ONE read before a group's upsert: the releases named (release_id -> (pk,
    release_id, channel, sequence)), the acks already stored for them by these nodes (into
    `ids`: (node_id, release pk) -> id; every pair of the two lists, the caller looks up the
    ones it writes), and the largest ack id (every row the upsert inserts gets a larger one:
    AUTOINCREMENT, and the group holds the write lock). All as single values, JSON for the
    lists: sqlite3 lets go of the GIL for every row it steps through (see node_acks_store)."""
    qn = connection.ops.quote_name
    acks, releases = qn(NodeAck._meta.db_table), qn(Release._meta.db_table)
    node, release, ident = qn("node_id"), qn("release_id"), qn("id")
    named = f"({', '.join(['%s'] * len(release_ids))})"
    release_rows: dict[str, tuple[Any, ...]] = {}
    largest = 0
    # node_id IN (...) AND release_id IN (...): the unique index's lookups (a row-value
    # IN (VALUES ...) scans the table on SQLite)
    for start in range(0, max(len(nodes), 1), _KEYS_PER_SELECT):
        chunk = nodes[start : start + _KEYS_PER_SELECT]
        stored = (
            f"(SELECT json_group_array(json_array({node}, {release}, {ident})) FROM {acks} "
            f"WHERE {release} IN (SELECT {ident} FROM {releases} WHERE {release} IN {named}) "
            f"AND {node} IN ({', '.join(['%s'] * len(chunk))}))"
        )
        if start == 0:
            execute(
                cursor,
                f"SELECT (SELECT json_group_array(json_array({ident}, {release}, "
                f"{qn('channel')}, {qn('sequence')})) FROM {releases} WHERE {release} IN "
                f"{named}), {stored}, (SELECT coalesce(max({ident}), 0) FROM {acks})",
                [*release_ids, *release_ids, *chunk],
            )
            found_releases, found, largest = cursor.fetchone()
            release_rows = {row[1]: tuple(row) for row in orjson.loads(found_releases)}
        else:
            execute(cursor, f"SELECT {stored}", [*release_ids, *chunk])
            found = cursor.fetchone()[0]
        ids.update(((row[0], row[1]), row[2]) for row in orjson.loads(found))
    return release_rows, int(largest)


def _sqlite_ids_above(cursor: Any, largest: int, ids: dict[tuple[str, int], int]) -> int:
    """SQLite: add the acks with an id above `largest` (the rows this transaction's upserts
    inserted since) to `ids`, in one read; returns the new largest id."""
    qn = connection.ops.quote_name
    node, release, ident = qn("node_id"), qn("release_id"), qn("id")
    execute(
        cursor,
        f"SELECT json_group_array(json_array({node}, {release}, {ident})) "
        f"FROM {qn(NodeAck._meta.db_table)} WHERE {ident} > %s",
        [largest],
    )
    for node_id, pk, row_id in orjson.loads(cursor.fetchone()[0]):
        ids[(node_id, pk)] = row_id
        largest = max(largest, row_id)
    return largest


def _rounds(order: list[int], writes: list[AckWrite]) -> list[list[int]]:
    """Split writes (in key order) into statements without a repeated (node, release): one
    upsert may not touch a row twice on PostgreSQL. The n-th write of a key goes to round n, so
    the writes of one key still apply in submission order."""
    rounds: list[list[int]] = []
    seen: dict[tuple[str, str], int] = {}
    for n in order:
        key = (writes[n].node_id, writes[n].release_id)
        depth = seen.get(key, 0)
        seen[key] = depth + 1
        if depth == len(rounds):
            rounds.append([])
        rounds[depth].append(n)
    return rounds


def node_acks_store(*, writes: list[AckWrite]) -> list[Outcome | ApiError]:
    """Store a group of acks in one transaction (the ack writer's group commit,
    `releases.writer`); per write its Outcome (obj: a StoredAck; created: whether the
    (node, release) row is new), or the ApiError 404 of an unknown release (that write stores
    nothing, the others still do).

    A handful of statements per group, whatever its size: the releases (on SQLite in the same
    read as the keys already stored, their ids and the largest id: `_sqlite_group_state`;
    PostgreSQL tells inserted rows from updated ones by `xmax`), ONE multi-row upsert
    (`INSERT … ON CONFLICT (node_id, release_id) DO UPDATE`; a key acked twice in the group goes
    to a second statement, in submission order), on SQLite the ids of the rows it inserted
    (those above the largest id before it), and two upserts of the fleet view's rows
    (`_FleetRows`). Rows are in (node_id, release_id) order, so concurrent groups on PostgreSQL
    lock rows in one order (no deadlocks). On SQLite every statement counts: each waits for the
    GIL once while the event loop is busy, holding the write turn (docs/performance.md, "The
    write turn under a busy loop")."""
    select_sql, insert_sql, upsert_tail = _ack_statements()
    adapt = connection.ops.adapt_datetimefield_value
    postgres = connection.vendor == "postgresql"
    wanted = sorted({write.release_id for write in writes})
    results: list[Outcome | ApiError | None] = [None] * len(writes)
    order = sorted(range(len(writes)), key=lambda n: (writes[n].node_id, writes[n].release_id))
    with transaction.atomic(), connection.cursor() as cursor:
        ids: dict[tuple[str, int], int] = {}  # SQLite: (node, release pk) -> the row's id
        largest = 0
        if postgres:
            cursor.execute(select_sql + f"({', '.join(['%s'] * len(wanted))})", wanted)
            release_rows = {row[1]: tuple(row) for row in cursor.fetchall()}
        else:
            nodes = sorted({write.node_id for write in writes})
            release_rows, largest = _sqlite_group_state(cursor, wanted, nodes, ids)
        release_pks = {release_id: row[0] for release_id, row in release_rows.items()}
        valid: list[int] = []
        for n in order:
            release_id = writes[n].release_id
            if release_id in release_pks:
                valid.append(n)
            else:
                results[n] = ApiError(
                    404, f"release '{release_id}' not found", release_id=release_id
                )
        newest = _FleetRows()
        for batch in _rounds(valid, writes):
            keys = [(writes[n].node_id, release_pks[writes[n].release_id]) for n in batch]
            params: list[Any] = []
            for n, key in zip(batch, keys, strict=True):
                values = writes[n].values
                params.extend(key)
                params.extend(
                    adapt(values[c]) if c in _TIME_COLUMNS else values[c] for c in _ACK_COLUMNS
                )
            rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(batch))
            execute(cursor, insert_sql + rows + upsert_tail, params)
            if postgres:
                returned = {(row[0], row[1]): (row[2], row[3]) for row in cursor.fetchall()}
                created = [returned[key][1] for key in keys]
                ids.update((key, returned[key][0]) for key in keys)
            else:
                created = [key not in ids for key in keys]
                if any(created):  # the rows this statement inserted: ids above the largest
                    largest = _sqlite_ids_above(cursor, largest, ids)
            for n, key, new in zip(batch, keys, created, strict=True):
                write = writes[n]
                _, _, channel, sequence = release_rows[write.release_id]
                newest.note(write, channel, key[1], sequence, ids[key])
                results[n] = Outcome(
                    StoredAck(
                        node_id=write.node_id,
                        release=AckRelease(pk=key[1], release_id=write.release_id),
                        **write.values,
                    ),
                    created=new,
                )
        newest.store(cursor)  # the fleet view's tables, same transaction
    return [result for result in results if result is not None]


class _FleetRows:
    """The fleet view's rows a group of acks moves, written as two multi-row upserts: each
    node's `last_heard` and, per (node, channel), the newest ack (by `updated_at`, then the
    ack's id: what `fleet_acks_refresh` chooses from all of a node's acks; a guard on the
    update keeps a newer row already there, unless it is the same ack, whose row always takes
    the ack's new values). The same rows as calling `fleet_acks_refresh` for the group's nodes,
    without reading every ack of those nodes back; one difference, only when the server's clock
    stepped back: an ack updated to an older `updated_at` than another ack of its channel stays
    the node's row (the node's latest word) until a rebuild picks by time."""

    def __init__(self) -> None:
        self.heard: dict[str, datetime] = {}
        self.acks: dict[tuple[str, str], tuple[datetime, int, int, str, int]] = {}

    def note(
        self, write: AckWrite, channel: str, release_pk: int, sequence: int, ack_pk: int
    ) -> None:
        updated_at = write.values["updated_at"]
        heard = self.heard.get(write.node_id)
        if heard is None or updated_at > heard:
            self.heard[write.node_id] = updated_at
        key = (write.node_id, channel)
        row = (updated_at, ack_pk, release_pk, write.values["status"], sequence)
        known = self.acks.get(key)
        if known is None or row[:2] >= known[:2]:
            self.acks[key] = row

    def store(self, cursor: Any) -> None:
        if not self.heard:
            return
        adapt = connection.ops.adapt_datetimefield_value
        nodes_head, nodes_tail, acks_head, acks_tail = _fleet_rows_sql()
        nodes = sorted(self.heard)  # key order: concurrent PostgreSQL writers never deadlock
        execute(
            cursor,
            nodes_head + ", ".join(["(%s, NULL, %s)"] * len(nodes)) + nodes_tail,
            [value for n in nodes for value in (n, adapt(self.heard[n]))],
        )
        params: list[Any] = []
        for key in sorted(self.acks):
            updated_at, pk, release_pk, status, sequence = self.acks[key]
            params.extend((*key, release_pk, status, sequence, adapt(updated_at), pk))
        execute(
            cursor,
            acks_head + ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(self.acks)) + acks_tail,
            params,
        )


_fleet_sql: tuple[str, str, str, str] | None = None


def _fleet_rows_sql() -> tuple[str, str, str, str]:
    """`_FleetRows`' two upserts (head and tail each, the rows go between), built once."""
    global _fleet_sql
    if _fleet_sql is None:
        fleet, fleet_ack = _qn(FleetNode._meta.db_table), _qn(FleetNodeAck._meta.db_table)
        node, heard = _qn("node_id"), _qn("last_heard")
        updated, ack_pk = _qn("updated_at"), _qn("ack_pk")
        columns = ("node_id", "channel", "release_id", "status", "sequence", "updated_at", "ack_pk")
        _fleet_sql = (
            f"INSERT INTO {fleet} ({node}, {_qn('last_seen')}, {heard}) VALUES ",
            f" ON CONFLICT ({node}) DO UPDATE SET "
            f"{heard} = {_greatest()}({fleet}.{heard}, excluded.{heard})",
            f"INSERT INTO {fleet_ack} ({', '.join(_qn(c) for c in columns)}) VALUES ",
            f" ON CONFLICT ({node}, {_qn('channel')}) DO UPDATE SET "
            + ", ".join(
                f"{_qn(c)} = excluded.{_qn(c)}"
                for c in ("release_id", "status", "sequence", "updated_at", "ack_pk")
            )
            + f" WHERE excluded.{ack_pk} = {fleet_ack}.{ack_pk} "
            f"OR excluded.{updated} > {fleet_ack}.{updated} "
            f"OR (excluded.{updated} = {fleet_ack}.{updated} "
            f"AND excluded.{ack_pk} > {fleet_ack}.{ack_pk})",
        )
    return _fleet_sql


# (node_id, release) pairs per "already stored?" select: two parameters each, far below
# SQLite's 32,766 and PostgreSQL's 65,535 (the writer's groups hold at most 500 acks).
_KEYS_PER_SELECT = 500


def book_entries(outcomes: list[Outcome | ApiError]) -> list[tuple[int, str, str]]:
    return [
        (outcome.obj.release.pk, outcome.obj.node_id, outcome.obj.status)
        for outcome in outcomes
        if isinstance(outcome, Outcome)
    ]


def acks_committed(outcomes: list[Outcome | ApiError]) -> None:
    """After a group of acks committed: the in-process ack book learns them (before anyone is
    answered: read-your-writes for the next poll) and the rollout evaluator re-checks gates."""
    stored = book_entries(outcomes)
    if not stored:
        return
    ack_book.committed(stored)
    from rollouts import evaluator

    evaluator.poke()


def ack_write(
    *,
    node_id: str,
    release_id: str,
    status: str,
    lock_fingerprint: str | None = None,
    message: str | None = None,
    acked_at: datetime | None = None,
) -> AckWrite:
    """The row a validated ack stores: omitted optional fields are null, `acked_at` defaults to
    now, `updated_at` is now."""
    now = timezone.now()
    return AckWrite(
        node_id=node_id,
        release_id=release_id,
        values={
            "status": status,
            "lock_fingerprint": lock_fingerprint,
            "message": message,
            "acked_at": acked_at or now,
            "updated_at": now,
        },
    )


def _check_release_signature(release: dict[str, Any], signature: Any) -> None:
    """400 unless the offline signature fits (releases.release_signing.check)."""
    trusted = settings.RELEASE_TRUST_KEYS or None
    if signature is None:
        if trusted is None:
            return
        raise ApiError(
            400,
            "invalid field 'release_signature': this server accepts only releases signed by a "
            "trusted release key (--release-trust-key); sign it offline with "
            "`autonomy-orchestrator release sign --key PRIVATE.pem release.json`",
            field="release_signature",
        )
    try:
        release_signing.check(release, signature, trusted)
    except release_signing.ReleaseSignatureError as exc:
        raise ApiError(
            400, f"invalid field 'release_signature': {exc}", field="release_signature"
        ) from None


def node_ack_upsert(
    *,
    node_id: str,
    release_id: str,
    status: str,
    lock_fingerprint: str | None = None,
    message: str | None = None,
    acked_at: datetime | None = None,
) -> Outcome:
    """Insert or replace the node's ack for a release; 404 (ApiError) for an unknown release.

    The stored ack takes the body's fields (omitted optional ones become null); `acked_at`
    defaults to now, `updated_at` is now. Stored by the ack writer thread in a group commit with
    other acks (`releases.writer`); answered only after that commit. Inside a caller's
    transaction (tests, admin) it is stored right there instead. Rollout gates are re-evaluated
    after the commit.
    """
    write = ack_write(
        node_id=node_id,
        release_id=release_id,
        status=status,
        lock_fingerprint=lock_fingerprint,
        message=message,
        acked_at=acked_at,
    )
    if connection.in_atomic_block:
        result = node_acks_store(writes=[write])[0]
        if isinstance(result, Outcome):
            stored = book_entries([result])
            connection.on_commit(lambda: ack_book.apply(stored))
            from rollouts import evaluator

            evaluator.poke()
    else:
        from releases import writer

        result = writer.submit(write).result()
    if isinstance(result, ApiError):
        raise result
    return result


# --- the fleet view's tables (releases.models.FleetNode, FleetNodeAck) ----------------------


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _greatest() -> str:
    return "GREATEST" if connection.vendor == "postgresql" else "MAX"


def fleet_nodes_seen_at(*, received_at: Any) -> None:
    """SQLite events writer: the nodes of the events stored with this `received_at` (this
    transaction's inserts; the time has microseconds, and a group that happened to share it saw
    its nodes at that time too) were seen then. ONE statement on the received_at index, inside
    the writer's transaction; `received_at` already adapted for the store."""
    from events.models import RECEIVED_AT_INDEX, Event

    fleet, events = _qn(FleetNode._meta.db_table), _qn(Event._meta.db_table)
    node, seen, heard = _qn("node_id"), _qn("last_seen"), _qn("last_heard")
    with connection.cursor() as cursor:
        execute(
            cursor,
            f"INSERT INTO {fleet} ({node}, {seen}, {heard}) "
            # INDEXED BY: with statistics of a store whose old events share few arrival
            # times, the planner would otherwise scan the whole table (measured: 1.5 s).
            f"SELECT DISTINCT {node}, %s, %s FROM {events} "
            f"INDEXED BY {_qn(RECEIVED_AT_INDEX)} WHERE {_qn('received_at')} = %s "
            f"ON CONFLICT ({node}) DO UPDATE SET {seen} = excluded.{seen}, "
            f"{heard} = {_greatest()}({fleet}.{heard}, excluded.{heard})",
            [received_at, received_at, received_at],
        )


def fleet_nodes_seen(*, node_ids: Collection[str], received_at: Any) -> None:
    """The events writer: these nodes' events were stored at `received_at` (adapted for the
    store). ONE statement, inside the writer's transaction, nodes in key order (replicas of one
    PostgreSQL database take the row locks in one order: no deadlocks)."""
    if not node_ids:
        return
    fleet = _qn(FleetNode._meta.db_table)
    node, seen, heard = _qn("node_id"), _qn("last_seen"), _qn("last_heard")
    ordered = sorted(set(node_ids))
    if connection.vendor == "postgresql":
        source = "SELECT u, %s::timestamptz, %s::timestamptz FROM unnest(%s::text[]) AS u"
        params: list[Any] = [received_at, received_at, ordered]
    else:
        source = "SELECT column1, %s, %s FROM (VALUES " + ", ".join(["(%s)"] * len(ordered))
        source += ") WHERE true"
        params = [received_at, received_at, *ordered]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {fleet} ({node}, {seen}, {heard}) {source} "
            f"ON CONFLICT ({node}) DO UPDATE SET "
            f"{seen} = {_greatest()}(COALESCE({fleet}.{seen}, excluded.{seen}), excluded.{seen}), "
            f"{heard} = {_greatest()}({fleet}.{heard}, excluded.{heard})",
            params,
        )


def fleet_acks_refresh(*, node_ids: Collection[str] | None, using: str = DEFAULT_DB_ALIAS) -> None:
    """Rebuild the fleet view's rows of these nodes from their stored acks: call it in the
    transaction that wrote acks around `node_acks_store` (which moves the rows itself, the
    same way, without reading the acks back: `_FleetRows`). Two statements whatever the number of
    nodes: the nodes join the fleet (`last_heard` takes their newest ack's `updated_at`), and
    each node's newest ack per channel (by `updated_at`, then insertion order, as
    `GET /v1/fleet` has always chosen it) is copied from `NodeAck`. `node_ids=None` rebuilds
    every node's (the data migration, on the database `using`). Rows are written in key order,
    as the events writer writes its nodes: concurrent writers cannot deadlock on them."""
    if node_ids is not None and not node_ids:
        return
    connection = connections[using]

    def _qn(name: str) -> str:
        return connection.ops.quote_name(name)

    def _greatest() -> str:
        return "GREATEST" if connection.vendor == "postgresql" else "MAX"

    fleet, fleet_ack = _qn(FleetNode._meta.db_table), _qn(FleetNodeAck._meta.db_table)
    acks, releases = _qn(NodeAck._meta.db_table), _qn(Release._meta.db_table)
    node, heard = _qn("node_id"), _qn("last_heard")
    postgres = connection.vendor == "postgresql"
    ordered = sorted(set(node_ids)) if node_ids is not None else None
    where_params: list[Any] = []
    if ordered is None:
        where = ""
    elif postgres:
        where, where_params = f"WHERE a.{node} = ANY(%s::text[])", [ordered]
    else:
        where = f"WHERE a.{node} IN ({', '.join(['%s'] * len(ordered))})"
        where_params = [*ordered]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {fleet} ({node}, {_qn('last_seen')}, {heard}) "
            f"SELECT a.{node}, NULL, MAX(a.{_qn('updated_at')}) FROM {acks} a "
            f"{where or 'WHERE true'} GROUP BY a.{node} ORDER BY a.{node} "
            f"ON CONFLICT ({node}) DO UPDATE SET "
            f"{heard} = {_greatest()}({fleet}.{heard}, excluded.{heard})",
            where_params,
        )
        columns = ("node_id", "channel", "release_id", "status", "sequence", "updated_at")
        cursor.execute(
            f"INSERT INTO {fleet_ack} ({', '.join(_qn(c) for c in columns)}, {_qn('ack_pk')}) "
            f"SELECT t.{node}, t.channel, t.release_pk, t.status, t.seq, t.updated, t.ack_pk "
            f"FROM (SELECT a.{node}, r.{_qn('channel')} AS channel, "
            f"a.{_qn('release_id')} AS release_pk, a.{_qn('status')} AS status, "
            f"r.{_qn('sequence')} AS seq, a.{_qn('updated_at')} AS updated, "
            f"a.{_qn('id')} AS ack_pk, ROW_NUMBER() OVER (PARTITION BY a.{node}, "
            f"r.{_qn('channel')} ORDER BY a.{_qn('updated_at')} DESC, a.{_qn('id')} DESC) AS rn "
            f"FROM {acks} a JOIN {releases} r ON r.{_qn('id')} = a.{_qn('release_id')} "
            f"{where}) t WHERE t.rn = 1 ORDER BY t.{node}, t.channel "
            f"ON CONFLICT ({node}, {_qn('channel')}) DO UPDATE SET "
            + ", ".join(
                f"{_qn(c)} = excluded.{_qn(c)}"
                for c in ("release_id", "status", "sequence", "updated_at", "ack_pk")
            ),
            where_params,
        )
