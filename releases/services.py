"""Writes for releases and acks: `release_publish`, `node_ack_upsert`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from access.models import AuditRecord
from access.services import audit_write
from core import jsonvalues
from core.auth import Principal, acting
from core.errors import ApiError
from releases import release_signing
from releases.models import NodeAck, Release
from releases.selectors import latest_cache, release_get

logger = logging.getLogger("orchestrator.releases")

# A publish retries when another publish to the same channel took the same sequence first
# (PostgreSQL; on SQLite IMMEDIATE transactions already serialize writers).
PUBLISH_ATTEMPTS = 20

# The fields that decide "identical re-publish" (200) vs "conflicting duplicate" (409).
COMPARED_FIELDS = ("channel", "policy_ref", "lock_fingerprint", "artifact_ref", "metadata")


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
    defaults to now, `updated_at` is now. Rollout gates are re-evaluated after the commit.
    """
    release = release_get(release_id=release_id)
    now = timezone.now()
    values: dict[str, Any] = {
        "status": status,
        "lock_fingerprint": lock_fingerprint,
        "message": message,
        "acked_at": acked_at or now,
        "updated_at": now,
    }
    created = False
    for _attempt in range(3):
        try:
            with transaction.atomic():
                updated = NodeAck.objects.filter(node_id=node_id, release=release).update(**values)
                if not updated:
                    NodeAck.objects.create(node_id=node_id, release=release, **values)
                    created = True
            break
        except IntegrityError:  # a concurrent first ack of the same (node, release): update it
            created = False
            continue
    else:
        raise ApiError(503, "the ack could not be stored; retry shortly", node_id=node_id)

    from rollouts import evaluator

    evaluator.poke()
    return Outcome(NodeAck(node_id=node_id, release=release, **values), created=created)
