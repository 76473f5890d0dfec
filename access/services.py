"""Tokens and the audit log: the only code that writes `access` rows (views translate, services
decide, selectors read).

`audit_write` is meant to be called inside the same `transaction.atomic()` block as the change it
records, so a change and its record commit or roll back together; its `orchestrator.audit` log
line is emitted on commit only. Denials do not go through it directly on the request path: see
`DenialRecorder`.
"""

from __future__ import annotations

import collections
import contextlib
import getpass
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from access.models import ApiToken, AuditRecord
from core import revocation
from core.auth import REQUEST_CONTEXT, Kind, Principal, Role
from core.edge import auth_gate
from core.errors import ApiError
from core.flags import parse_duration
from core.params import parse_rfc3339

audit_logger = logging.getLogger("orchestrator.audit")
logger = logging.getLogger("orchestrator.access")

TOKEN_PREFIX = "aot_"
# last_used_at is written at most this often per token: keeps the hot path a read.
LAST_USED_RESOLUTION = timedelta(minutes=1)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$")


class TokenError(ValueError):
    """Bad input for a token command: the message is one readable line."""


# --- durations ---------------------------------------------------------------------------------

_DAYS = re.compile(r"^(\d+)([dw])$")


def parse_span(text: str) -> timedelta:
    """`90d`, `2w`, or a Go-style duration (`12h`, `30m`, `1h30m`) → timedelta (> 0)."""
    value = (text or "").strip()
    match = _DAYS.match(value)
    try:
        if match:
            span = timedelta(days=int(match.group(1)) * (7 if match.group(2) == "w" else 1))
        else:
            span = timedelta(seconds=parse_duration(value))
    except ValueError:
        raise TokenError(f"{text!r} is not a duration; write it like 90d, 2w, 12h or 30m") from None
    except OverflowError:
        raise TokenError(f"{text!r} is longer than any date can go back or ahead") from None
    if span <= timedelta(0):
        raise TokenError(f"{text!r} is not a positive duration")
    return span


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A duration back from now (`24h`, `7d`) or an RFC 3339 instant → aware UTC datetime."""
    value = (text or "").strip()
    try:
        span = parse_span(value)
    except TokenError:
        span = None
    if span is not None:
        try:
            return (now or timezone.now()) - span
        except OverflowError:  # further back than any record: all of them
            return datetime.min.replace(tzinfo=UTC)
    try:
        return parse_rfc3339(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise TokenError(
            f"{text!r} is neither a duration (24h, 7d) nor an RFC 3339 time with an offset "
            "(2026-04-07T10:00:00Z)"
        ) from None


# --- tokens ------------------------------------------------------------------------------------


def cli_principal() -> Principal:
    """Who runs `autonomy-orchestrator token …` on this machine: `cli:<os user>` (kind system)."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return Principal(Kind.SYSTEM, f"cli:{user}", Role.ADMIN)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_create(
    *,
    name: str,
    role: str,
    node_id: str | None = None,
    expires: timedelta | str | None = None,
    principal: Principal | None = None,
) -> tuple[ApiToken, str]:
    """A new token and its secret (shown once; only its SHA-256 is stored). Writes
    `auth.token.created` in the same transaction."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise TokenError(
            f"bad token name {name!r}: 1-128 letters, digits or . _ @ : - (starting with a "
            "letter or digit)"
        )
    try:
        parsed_role = Role.parse(role)
    except ValueError as exc:
        raise TokenError(str(exc)) from None
    node_id = (node_id or "").strip() or None
    if parsed_role is Role.NODE and not node_id:
        raise TokenError("a node token needs --node-id (the node it acts for)")
    if parsed_role is not Role.NODE and node_id:
        raise TokenError("--node-id is only for --role node")
    if isinstance(expires, str):
        expires = parse_span(expires)
    now = timezone.now()
    public_id = secrets.token_hex(6)
    secret = f"{TOKEN_PREFIX}{public_id}_{secrets.token_urlsafe(32)}"
    actor = principal or cli_principal()
    try:
        with transaction.atomic():
            token = ApiToken.objects.create(
                name=name,
                role=parsed_role.label,
                node_id=node_id,
                public_id=public_id,
                secret_hash=_hash(secret),
                created_at=now,
                expires_at=now + expires if expires else None,
            )
            audit_write(
                event_name="auth.token.created",
                outcome=AuditRecord.Outcome.SUCCESS,
                principal=actor,
                target=name,
                detail={
                    "role": token.role,
                    "node_id": node_id,
                    "expires_at": _iso(token.expires_at),
                },
            )
    except IntegrityError:
        if ApiToken.objects.filter(name=name).exists():
            raise TokenError(f"a token named {name!r} already exists") from None
        raise
    return token, secret


def token_revoke(*, name: str, principal: Principal | None = None) -> ApiToken:
    """Revoke the token NAME (refused from its next request on). Writes `auth.token.revoked`."""
    actor = principal or cli_principal()
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().filter(name=name).first()
        if token is None:
            raise TokenError(f"no token named {name!r}")
        if token.revoked_at is not None:
            raise TokenError(f"token {name!r} was already revoked at {_iso(token.revoked_at)}")
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        if connection.vendor == "postgresql":  # delivered to the listeners on commit
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [revocation.NOTIFY_CHANNEL, name])
        transaction.on_commit(_signal_revocation)
        audit_write(
            event_name="auth.token.revoked",
            outcome=AuditRecord.Outcome.SUCCESS,
            principal=actor,
            target=name,
            detail={"role": token.role, "node_id": token.node_id},
        )
    return token


def _signal_revocation() -> None:
    """After a revocation committed: bump the data dir's stamp (servers on this host see it on
    their next request, core.revocation) and drop this process's own cache."""
    revocation.bump_stamp(settings.DATA_DIR)
    gate_tokens = auth_gate().tokens
    if gate_tokens is not None:
        gate_tokens.forget()


def token_resolve(secret: str, *, touch: bool = True) -> Principal | None:
    """The principal of a presented bearer token, or None (unknown, revoked or expired)."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    public_id, sep, _ = secret[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not public_id:
        return None
    token = ApiToken.objects.filter(public_id=public_id).first()
    if token is None or not hmac.compare_digest(token.secret_hash, _hash(secret)):
        return None
    now = timezone.now()
    if token.revoked_at is not None or (token.expires_at is not None and token.expires_at <= now):
        return None
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        if touch:
            _touch(token.pk, token.last_used_at, now)
        else:
            _touch_later(token.pk, token.last_used_at, now)
    return Principal(
        Kind.TOKEN,
        token.name,
        Role.parse(token.role),
        node_id=token.node_id or None,
        expires_at=token.expires_at.timestamp() if token.expires_at is not None else None,
    )


def _touch(pk: int, seen: datetime | None, now: datetime) -> None:
    # A conditional update: concurrent requests of one token write it once per minute.
    ApiToken.objects.filter(pk=pk, last_used_at=seen).update(last_used_at=now)


_toucher: ThreadPoolExecutor | None = None
_toucher_lock = threading.Lock()


def _touch_later(pk: int, seen: datetime | None, now: datetime) -> None:
    """`last_used_at` written by one background thread, off the request path."""
    global _toucher
    with _toucher_lock:
        if _toucher is None:
            _toucher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-last-used")

    def run() -> None:
        try:
            _touch(pk, seen, now)
        except Exception:
            logger.warning("could not record a token's last use", exc_info=True)

    _toucher.submit(run)


def edge_token_resolver(secret: str) -> Principal | None:
    """The resolver the HTTP edge holds (core.edge.configure_auth): a read; the last-used time
    is written in the background."""
    return token_resolve(secret, touch=False)


# --- audit -------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def audit_dict(record: AuditRecord) -> dict[str, Any]:
    """A record as the API, the export and the log show it."""
    return {
        "id": record.pk,
        "at": record.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "event_name": record.event_name,
        "category": record.category,
        "outcome": record.outcome,
        "principal": record.principal,
        "principal_kind": record.principal_kind,
        "role": record.role or None,
        "source_ip": record.source_ip or None,
        "route": record.route or None,
        "target": record.target or None,
        "detail": record.detail,
    }


def _storable(value: Any) -> Any:
    """`value` with every NUL character written as the six characters `\\u0000`: an audit
    record repeats what a client sent (an invalid field's name in an error), and PostgreSQL
    stores no NUL in text or JSON, so the record of a refusal must not fail on one."""
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def audit_write(
    *,
    event_name: str,
    outcome: str,
    principal: Principal,
    route: str | None = None,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
    source_ip: str | None = None,
    category: str | None = None,
    at: datetime | None = None,
) -> AuditRecord:
    """Append one audit record. Call it inside the `transaction.atomic()` of the change it
    records (same transaction: both commit or neither). The `orchestrator.audit` JSON log line
    follows on commit."""
    detail = _storable(dict(detail or {}))
    context = REQUEST_CONTEXT.get()
    if context is not None:
        route = route or context[0]
        source_ip = source_ip or context[1]
    if principal.claimed_operator:
        detail.setdefault("claimed_operator", principal.claimed_operator)
    if principal.node_id and principal.role is Role.NODE:
        detail.setdefault("node_id", principal.node_id)
    record = AuditRecord.objects.create(
        at=at or timezone.now(),
        event_name=event_name,
        category=category or event_name.split(".", 1)[0],
        outcome=str(outcome),
        principal=_storable(principal.name)[:256],
        principal_kind=principal.kind.value,
        role=principal.role.label if principal.role else "",
        source_ip=(source_ip or "")[:64],
        route=_storable(route or "")[:512],
        target=_storable(target or "")[:512],
        detail=detail,
    )
    line = audit_dict(record)
    transaction.on_commit(lambda: _log(line))
    return record


def _log(line: dict[str, Any]) -> None:
    audit_logger.info(json.dumps(line, sort_keys=True, default=str), extra={"audit": line})


# --- denials -----------------------------------------------------------------------------------


@dataclass
class _Window:
    started: float
    first_at: datetime
    last_at: datetime
    suppressed: int
    sample: dict[str, Any]


@dataclass(frozen=True)
class Denial:
    principal: Principal
    route: str | None
    reason: str
    status: int
    source_ip: str | None
    method: str = ""
    target: str | None = None
    error: str | None = None
    event_name: str = "auth.access.denied"  # or cert.revocation.rejected (a TLS handshake)


class DenialRecorder:
    """Records 401/403 answers as `auth.access.denied` without letting a flood slow the server.

    `record()` is what the request path calls: a dict update under a lock, no I/O. Per key
    (principal name or, for anonymous, source IP; route; reason) the first denial of a window is
    queued for writing at once; the rest of that window are only counted, and when the window ends
    one summary record with `detail.count` (the denials it stands for) is queued. At most
    `max_keys` keys are tracked; beyond that denials fold into one overflow key per reason. The
    queue is bounded (`max_pending`); what it drops is counted and reported in the next record.
    `drain()` writes the queue (a background thread started by `start()` calls it every
    `flush_interval` seconds, off the request path; tests call it directly).
    """

    def __init__(
        self,
        *,
        window_seconds: float = 60.0,
        max_keys: int = 10_000,
        max_pending: int = 1_000,
        clock: Callable[[], float] = time.monotonic,
        writer: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.window_seconds = window_seconds
        self.max_keys = max_keys
        self.clock = clock
        self.writer = writer or _write_denials
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], _Window] = {}
        self._pending: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_pending)
        self._dropped = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _who(denial: Denial) -> str:
        if denial.principal.authenticated:
            return f"{denial.principal.kind.value}:{denial.principal.name}"
        return f"ip:{denial.source_ip or '?'}"

    def record(self, denial: Denial) -> None:
        """Note one denial (cheap; call it from the request path, any thread)."""
        now = self.clock()
        at = timezone.now()
        key = (self._who(denial), denial.route or denial.event_name, denial.reason)
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window.started >= self.window_seconds:
                self._close(key, window)  # this key's window ended: its summary, then anew
                window = None
            if window is None and len(self._windows) >= self.max_keys:
                key = ("overflow", "*", denial.reason)
                window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(now, at, at, 0, self._entry(denial, at, 1, False))
                self._queue(self._entry(denial, at, 1, False))
            else:
                window.suppressed += 1
                window.last_at = at
        self._wake.set()

    def _entry(self, denial: Denial, at: datetime, count: int, summary: bool) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "reason": denial.reason,
            "status": denial.status,
            "method": denial.method,
            "count": count,
        }
        if denial.error:
            detail["error"] = denial.error
        if denial.principal.rejected:
            detail["credential"] = denial.principal.rejected
        if summary:
            detail["summary"] = True
            detail["window_seconds"] = self.window_seconds
        return {
            "event_name": denial.event_name,
            "principal": denial.principal,
            "route": denial.route,
            "target": denial.target,
            "source_ip": denial.source_ip,
            "detail": detail,
            "at": at,
        }

    def _queue(self, entry: dict[str, Any]) -> None:
        if len(self._pending) == self._pending.maxlen:
            self._dropped += 1
        self._pending.append(entry)

    def _close(self, key: tuple[str, str, str], window: _Window) -> None:
        """End one window: queue its summary when it counted more denials. Lock held."""
        del self._windows[key]
        if window.suppressed:
            entry = dict(window.sample)
            entry["detail"] = {
                **window.sample["detail"],
                "count": window.suppressed,
                "summary": True,
                "window_seconds": self.window_seconds,
                "first_at": _iso(window.first_at),
                "last_at": _iso(window.last_at),
            }
            entry["at"] = window.last_at
            if key[0] == "overflow":
                entry["detail"]["overflow"] = True
            self._queue(entry)

    def _expire(self, now: float, force: bool = False) -> None:
        """End every window that is over (all when `force`). Lock held; drain() only, so the
        request path never walks all keys."""
        for key, window in list(self._windows.items()):
            if force or now - window.started >= self.window_seconds:
                self._close(key, window)

    def drain(self, *, force: bool = False) -> int:
        """Write what is queued (and, with `force`, the summaries of open windows). Returns the
        number of records written."""
        with self._lock:
            self._expire(self.clock(), force=force)
            batch = list(self._pending)
            self._pending.clear()
            dropped, self._dropped = self._dropped, 0
        if not batch:
            return 0
        if dropped:
            batch[-1]["detail"] = {**batch[-1]["detail"], "dropped_before": dropped}
        self.writer(batch)
        return len(batch)

    def start(self, flush_interval: float = 1.0) -> None:
        """A daemon thread draining the queue every `flush_interval` s (and on new denials)."""
        if self._thread is not None:
            return

        def loop() -> None:
            while not self._stop.is_set():
                self._wake.wait(flush_interval)
                self._wake.clear()
                try:
                    self.drain()
                except Exception:
                    logger.exception("could not write denial audit records")
                self._stop.wait(flush_interval)  # at most one batch per interval
            self.drain(force=True)

        self._thread = threading.Thread(target=loop, name="audit-denials", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _write_denials(batch: list[dict[str, Any]]) -> None:
    with transaction.atomic():
        for entry in batch:
            audit_write(
                event_name=entry.get("event_name", "auth.access.denied"),
                outcome=AuditRecord.Outcome.DENIED,
                principal=entry["principal"],
                route=entry["route"],
                target=entry["target"],
                detail=entry["detail"],
                source_ip=entry["source_ip"],
                at=entry["at"],
            )


@contextlib.contextmanager
def audited_failure(
    event_name: str, principal: Principal, target: str | None = None
) -> Iterator[None]:
    """Around a state-changing call whose success the service audits itself: a refusal
    (ApiError: 400, 404, 409, …) is audited as `outcome: failure` in a transaction of its own
    (the change's own transaction rolled back)."""
    try:
        yield
    except ApiError as exc:
        try:
            with transaction.atomic():
                audit_write(
                    event_name=event_name,
                    outcome=AuditRecord.Outcome.FAILURE,
                    principal=principal,
                    target=target,
                    detail={"status": exc.status_code, "error": exc.message},
                )
        except Exception:
            logger.exception("could not write the audit record of a failed %s", event_name)
        raise
