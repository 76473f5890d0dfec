"""Writes of the notifications app: webhook endpoints, emitting events into the outbox, and the
state of each delivery (docs/operating.md "Webhooks").

    event_emit(name="rollout.halted", data={...})           # inside the change's transaction
    webhook_create(url=…, events=[…], secret=None)          # -> (endpoint, generated secret)
    webhook_update(endpoint=…, enabled=False)  webhook_delete(ref="3" | URL)
    webhook_test(endpoint=…)                                # one signed request, now

`event_emit` writes the event and one delivery row per subscribed, enabled endpoint in the
caller's transaction: a change that rolls back sends nothing, a change that commits is
delivered even if the process dies a moment later (the dispatcher finds the rows). Endpoint
changes write audit records (`webhook.endpoint.created|updated|removed`), never the secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from access.models import AuditRecord
from access.services import audit_write, cli_principal
from core import leader
from core.auth import Principal
from core.params import format_rfc3339
from notifications import delivery
from notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from notifications.signing import redact_url

logger = logging.getLogger("orchestrator.webhooks")

# The events an endpoint can subscribe to (docs/operating.md lists their `data`).
EVENTS: dict[str, str] = {
    "rollout.halted": "a rollout plan halted (a gate tripped or an operator halted it)",
    "rollout.completed": "a rollout plan promoted its last stage",
    "rollout.awaiting_approval": "a stage waits only for its manual gate to be approved",
    "rollout.stuck": "a running plan made no progress for --stuck-after (once per episode)",
    "rollout.plan.tampered": "a stored plan no longer matches its signed spec",
    "cert.crl.sync_failed": "CRL sync could not adopt a CRL (once per failing episode)",
}
ALL_EVENTS = "*"
TEST_EVENT = "webhook.test"  # sent by `webhook test` to one endpoint, whatever it subscribes

MAX_URL_LENGTH = 2000
MAX_SECRET_LENGTH = 256
SECRET_PREFIX = "whsec_"


class WebhookError(ValueError):
    """Bad input for a webhook command or form: the message is one readable line."""


# --- validation --------------------------------------------------------------------------------


def check_url(url: str) -> str:
    value = (url or "").strip()
    if not value:
        raise WebhookError("the URL is empty")
    if len(value) > MAX_URL_LENGTH:
        raise WebhookError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() for c in value):
        raise WebhookError(f"the URL {redact_url(value)!r} contains white space")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise WebhookError(f"the URL {redact_url(value)!r} is not valid: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(
            f"the URL {redact_url(value)!r} is not an http:// or https:// URL with a host"
        )
    if parts.fragment:
        raise WebhookError("the URL must not have a #fragment (it is never sent)")
    return value


def check_events(events: str | Iterable[str]) -> list[str]:
    """`rollout.halted,rollout.completed` or a list of names -> the names (`*` = every event)."""
    items = events.split(",") if isinstance(events, str) else list(events)
    names = list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))
    if not names:
        raise WebhookError(f"no events given; choose from {', '.join(EVENTS)} (or * for all)")
    if ALL_EVENTS in names:
        if len(names) > 1:
            raise WebhookError("* (every event) cannot be combined with event names")
        return [ALL_EVENTS]
    unknown = [name for name in names if name not in EVENTS]
    if unknown:
        raise WebhookError(
            f"unknown event {unknown[0]!r}; choose from {', '.join(EVENTS)} (or * for all)"
        )
    return names


def check_secret(secret: str) -> str:
    if secret is None or not secret.strip():
        raise WebhookError("the secret is empty (leave it out to have one generated)")
    if secret != secret.strip() or any(not c.isprintable() or c.isspace() for c in secret):
        raise WebhookError("the secret must be printable characters without white space")
    if len(secret) > MAX_SECRET_LENGTH:
        raise WebhookError(f"the secret is longer than {MAX_SECRET_LENGTH} characters")
    return secret


def generate_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def subscribed(events: Any, name: str) -> bool:
    if name == TEST_EVENT:
        return False
    listed = events if isinstance(events, list) else []
    return ALL_EVENTS in listed or name in listed


# --- endpoints ---------------------------------------------------------------------------------


def _endpoint_detail(endpoint: WebhookEndpoint) -> dict[str, Any]:
    return {
        "id": endpoint.pk,
        "url": redact_url(endpoint.url),
        "events": list(endpoint.events),
        "enabled": endpoint.enabled,
    }


def _audit(event_name: str, actor: Principal, endpoint: WebhookEndpoint, **extra: Any) -> None:
    audit_write(
        event_name=event_name,
        outcome=AuditRecord.Outcome.SUCCESS,
        principal=actor,
        target=redact_url(endpoint.url),
        detail={**_endpoint_detail(endpoint), **extra},
    )


def webhook_create(
    *,
    url: str,
    events: str | Iterable[str],
    secret: str | None = None,
    enabled: bool = True,
    description: str = "",
    principal: Principal | None = None,
) -> tuple[WebhookEndpoint, str | None]:
    """A new endpoint; returns it and the secret generated for it (None when one was given).
    A generated secret is shown to the caller once; it cannot be read back from any page."""
    url = check_url(url)
    names = check_events(events)
    generated = None
    if secret is None:
        secret = generated = generate_secret()
    else:
        secret = check_secret(secret)
    actor = principal or cli_principal()
    now = timezone.now()
    try:
        with transaction.atomic():
            endpoint = WebhookEndpoint.objects.create(
                url=url,
                secret=secret,
                events=names,
                enabled=enabled,
                description=(description or "").strip()[:200],
                created_at=now,
                created_by=actor.name[:256],
                updated_at=now,
            )
            _audit("webhook.endpoint.created", actor, endpoint)
    except IntegrityError:
        if WebhookEndpoint.objects.filter(url=url).exists():
            raise WebhookError(f"an endpoint for {redact_url(url)} already exists") from None
        raise
    logger.info(
        "webhook endpoint %d added: %s (%s)",
        endpoint.pk,
        redact_url(url),
        ", ".join(names),
        extra={"endpoint_id": endpoint.pk, "principal": actor.name},
    )
    return endpoint, generated


def webhook_update(
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    events: str | Iterable[str] | None = None,
    enabled: bool | None = None,
    description: str | None = None,
    secret: str | None = None,
    principal: Principal | None = None,
) -> WebhookEndpoint:
    """Change an endpoint (only what is given). A new `secret` replaces the old one at once."""
    changes: dict[str, Any] = {}
    if url is not None:
        changes["url"] = check_url(url)
    if events is not None:
        changes["events"] = check_events(events)
    if enabled is not None:
        changes["enabled"] = bool(enabled)
    if description is not None:
        changes["description"] = description.strip()[:200]
    if secret is not None:
        changes["secret"] = check_secret(secret)
    actor = principal or cli_principal()
    changed = sorted(k for k, v in changes.items() if getattr(endpoint, k) != v)
    if not changed:
        return endpoint
    for key, value in changes.items():
        setattr(endpoint, key, value)
    endpoint.updated_at = timezone.now()
    try:
        with transaction.atomic():
            endpoint.save()
            _audit("webhook.endpoint.updated", actor, endpoint, changed=changed)
    except IntegrityError:
        raise WebhookError(f"an endpoint for {redact_url(endpoint.url)} already exists") from None
    return endpoint


def webhook_find(ref: str) -> WebhookEndpoint:
    """The endpoint with id `ref` (digits) or URL `ref`."""
    from notifications.selectors import endpoint_get

    endpoint = endpoint_get(ref)
    if endpoint is None:
        raise WebhookError(f"no webhook endpoint {ref!r} (give its id or its URL; see `list`)")
    return endpoint


def webhook_delete(*, ref: str | WebhookEndpoint, principal: Principal | None = None) -> int:
    """Remove an endpoint, its pending deliveries and their log; returns the id it had."""
    endpoint = ref if isinstance(ref, WebhookEndpoint) else webhook_find(ref)
    actor = principal or cli_principal()
    pk = endpoint.pk
    with transaction.atomic():
        pending = WebhookDelivery.objects.filter(
            endpoint_id=pk, state=WebhookDelivery.State.PENDING
        ).count()
        _audit("webhook.endpoint.removed", actor, endpoint, pending_dropped=pending)
        endpoint.delete()
    logger.info(
        "webhook endpoint %d removed: %s",
        pk,
        redact_url(endpoint.url),
        extra={"endpoint_id": pk, "principal": actor.name},
    )
    return pk


# --- emitting ----------------------------------------------------------------------------------


def _body(event_id: str, name: str, at: datetime, data: dict[str, Any]) -> str:
    envelope = {"id": event_id, "type": name, "created_at": format_rfc3339(at), "data": data}
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)


def event_emit(
    *,
    name: str,
    data: dict[str, Any],
    dedup_key: str | None = None,
    endpoints: list[WebhookEndpoint] | None = None,
) -> str | None:
    """Put event `name` with `data` into the outbox for every enabled endpoint subscribed to
    it; returns its id, or None when no endpoint wants it (nothing is written) or `dedup_key`
    was emitted before.

    Call it inside the transaction of the change it reports (it opens one otherwise): the
    event commits or rolls back with the change. It never sends anything itself; the
    dispatcher is woken when the transaction commits. Any of EVENTS may be emitted, e.g. the
    plan tamper check: `event_emit(name="rollout.plan.tampered", data={"plan_id": …, …})`.
    """
    if name not in EVENTS and name != TEST_EVENT:
        raise ValueError(f"unknown webhook event {name!r}")
    if endpoints is None:
        from notifications.selectors import subscribers

        endpoints = subscribers(name)
    if not endpoints:
        return None
    if dedup_key is not None and WebhookEvent.objects.filter(dedup_key=dedup_key).exists():
        return None
    event_id = "evt_" + uuid.uuid4().hex
    now = timezone.now()
    try:
        with transaction.atomic():  # a savepoint inside the caller's transaction
            event = WebhookEvent.objects.create(
                event_id=event_id,
                name=name,
                body=_body(event_id, name, now, data),
                dedup_key=dedup_key,
                created_at=now,
            )
            WebhookDelivery.objects.bulk_create(
                WebhookDelivery(event=event, endpoint=e, next_attempt_at=now, created_at=now)
                for e in endpoints
            )
    except IntegrityError:
        if dedup_key is not None and WebhookEvent.objects.filter(dedup_key=dedup_key).exists():
            return None  # another writer emitted it first
        raise
    from notifications.dispatcher import wake

    transaction.on_commit(wake)
    logger.debug("webhook event %s (%s) queued", event_id, name, extra={"event_id": event_id})
    return event_id


def plan_tampered_emit(
    *,
    plan_id: str,
    digest: str,
    actual_digest: str,
    reason: str,
    phase: str = "",
    halted: bool = False,
    release_id: str | None = None,
    channel: str | None = None,
) -> str | None:
    """`rollout.plan.tampered` for a plan whose stored spec no longer matches its signed
    `digest`; once per plan and tampered content (`actual_digest`), however often it is found.
    Call it in the transaction that records the finding (the audit record)."""
    return event_emit(
        name="rollout.plan.tampered",
        data={
            "plan_id": plan_id,
            "release_id": release_id,
            "channel": channel,
            "phase": phase,
            "halted": halted,
            "digest": digest,
            "actual_digest": actual_digest,
            "reason": reason,
        },
        dedup_key=f"rollout.plan.tampered:{plan_id}:{actual_digest}",
    )


# --- deliveries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A delivery this replica holds while it sends it."""

    delivery_id: int
    token: str
    attempt: int
    url: str
    secret: str
    body: str
    event_id: str
    event_name: str


def delivery_claim(
    *,
    delivery_id: int,
    hold_seconds: float,
    lease: tuple[int, str] | None,
    holder: str = "",
) -> Claim | None:
    """Take a due delivery for `hold_seconds` (a conditional UPDATE: of two replicas one wins);
    None when it is not due, delivered, held by another sender or its endpoint is disabled.
    With `lease` the claim commits only while this replica leads (`core.leader.Fenced`)."""
    from contextlib import nullcontext

    now = timezone.now()
    token = f"{_holder_tag(holder)}:{secrets.token_hex(8)}"
    fence = leader.leader_transaction(lease) if lease is not None else nullcontext()
    with fence, transaction.atomic():
        taken = (
            WebhookDelivery.objects.filter(
                pk=delivery_id,
                state=WebhookDelivery.State.PENDING,
                next_attempt_at__lte=now,
                endpoint__enabled=True,
            )
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .update(claimed_until=now + timedelta(seconds=hold_seconds), claim_token=token)
        )
        if not taken:
            return None
    row = (
        WebhookDelivery.objects.filter(pk=delivery_id, claim_token=token)
        .values(
            "attempts",
            "endpoint__url",
            "endpoint__secret",
            "event__body",
            "event__event_id",
            "event__name",
        )
        .first()
    )
    if row is None:
        return None
    return Claim(
        delivery_id=delivery_id,
        token=token,
        attempt=int(row["attempts"]) + 1,
        url=row["endpoint__url"],
        secret=row["endpoint__secret"],
        body=row["event__body"],
        event_id=row["event__event_id"],
        event_name=row["event__name"],
    )


def delivery_release_claims(*, holder: str) -> int:
    """Free the deliveries `holder` (a replica's `--node-name`) held when it stopped: called when
    it starts again, so they are sent at once instead of when their claims expire."""
    if not holder:
        return 0
    return WebhookDelivery.objects.filter(
        state=WebhookDelivery.State.PENDING, claim_token__startswith=f"{_holder_tag(holder)}:"
    ).update(claimed_until=None, claim_token="")


def _holder_tag(holder: str) -> str:
    """A short fixed-length tag of a replica name, the prefix of its claim tokens."""
    return hashlib.sha256(holder.encode()).hexdigest()[:16]


def delivery_record(
    *,
    claim: Claim,
    result: delivery.SendResult,
    policy: delivery.RetryPolicy,
    replica: str = "",
) -> str:
    """Write the outcome of one attempt (the log row and the delivery's state); returns
    `delivered`, `retrying` or `gave_up`."""
    now = timezone.now()
    retry_in: float | None = None
    if result.ok:
        outcome = WebhookAttempt.Outcome.DELIVERED
        fields: dict[str, Any] = {"state": WebhookDelivery.State.DELIVERED, "delivered_at": now}
    elif claim.attempt >= policy.attempts:
        outcome = WebhookAttempt.Outcome.GAVE_UP
        fields = {"state": WebhookDelivery.State.FAILED}
    else:
        outcome = WebhookAttempt.Outcome.RETRYING
        retry_in = policy.delay(claim.attempt)
        fields = {"next_attempt_at": now + timedelta(seconds=retry_in)}
    with transaction.atomic():
        WebhookDelivery.objects.filter(pk=claim.delivery_id, claim_token=claim.token).update(
            attempts=F("attempts") + 1,
            claimed_until=None,
            claim_token="",
            last_status=result.status,
            last_error=result.error,
            **fields,
        )
        WebhookAttempt.objects.create(
            delivery_id=claim.delivery_id,
            number=claim.attempt,
            at=now,
            outcome=outcome,
            status_code=result.status,
            error=result.error,
            duration_ms=max(0, result.duration_ms),
            retry_in_ms=None if retry_in is None else int(retry_in * 1000),
            replica=replica[:200],
        )
    where = redact_url(claim.url)
    extra = {"event_id": claim.event_id, "attempt": claim.attempt, "webhook_outcome": outcome}
    if outcome == WebhookAttempt.Outcome.DELIVERED:
        logger.info(
            "webhook %s %s delivered to %s (HTTP %s, attempt %d)",
            claim.event_name,
            claim.event_id,
            where,
            result.status,
            claim.attempt,
            extra=extra,
        )
    elif outcome == WebhookAttempt.Outcome.GAVE_UP:
        logger.error(
            "webhook %s %s to %s: %s; gave up after %d attempts",
            claim.event_name,
            claim.event_id,
            where,
            result.error,
            claim.attempt,
            extra=extra,
        )
    else:
        logger.warning(
            "webhook %s %s to %s: %s (attempt %d); retrying in %.1fs",
            claim.event_name,
            claim.event_id,
            where,
            result.error,
            claim.attempt,
            retry_in or 0.0,
            extra=extra,
        )
    return str(outcome)


def webhook_test(*, endpoint: WebhookEndpoint, replica: str = "cli") -> delivery.SendResult:
    """Send one signed `webhook.test` event to `endpoint` now (enabled or not), through the
    outbox and its log, without retries; answers what the endpoint did."""
    data = {"message": "a test event from autonomy-orchestrator", "endpoint_id": endpoint.pk}
    timeout = delivery.timeout_from_env()
    with transaction.atomic():
        event_id = event_emit(name=TEST_EVENT, data=data, endpoints=[endpoint])
        assert event_id is not None
        delivery_id = WebhookDelivery.objects.get(event__event_id=event_id).pk
        # Held by this command from the start, so a running dispatcher never sends it too (and
        # a disabled endpoint can be tested).
        WebhookDelivery.objects.filter(pk=delivery_id).update(
            claim_token="cli", claimed_until=timezone.now() + timedelta(seconds=timeout + 30)
        )
    row = WebhookEvent.objects.get(event_id=event_id)
    claim = Claim(
        delivery_id=delivery_id,
        token="cli",
        attempt=1,
        url=endpoint.url,
        secret=endpoint.secret,
        body=row.body,
        event_id=event_id,
        event_name=TEST_EVENT,
    )
    result = delivery.send(
        url=claim.url,
        secret=claim.secret,
        body=claim.body,
        event_id=event_id,
        event_name=TEST_EVENT,
        attempt=1,
        timeout=timeout,
    )
    delivery_record(
        claim=claim, result=result, policy=delivery.RetryPolicy(attempts=1), replica=replica
    )
    return result


RETENTION = timedelta(days=30)


def outbox_prune(*, now: datetime | None = None) -> int:
    """Delete events older than RETENTION with nothing left to deliver (and their log)."""
    cutoff = (now or timezone.now()) - RETENTION
    old = WebhookEvent.objects.filter(created_at__lt=cutoff).exclude(
        deliveries__state=WebhookDelivery.State.PENDING
    )
    ids = list(old.values_list("id", flat=True)[:1000])
    if not ids:
        return 0
    deleted, _ = WebhookEvent.objects.filter(id__in=ids).delete()
    return int(deleted)
