"""factory-boy factories for every model (one file, as the house style asks)."""

from __future__ import annotations

import factory
import orjson
from django.db import connection
from django.utils import timezone
from factory.django import DjangoModelFactory

from events.models import Event
from releases.models import NodeAck, Release


class EventFactory(DjangoModelFactory):
    class Meta:
        model = Event

    event_id = factory.Sequence(lambda n: f"evt-{n:08d}")
    event_type = "app.heartbeat"
    node_id = factory.Sequence(lambda n: f"node-{n % 10:03d}")
    timestamp = "2026-11-27T10:00:00Z"
    received_at = factory.LazyFunction(timezone.now)
    payload = factory.LazyAttribute(
        lambda o: orjson.dumps(
            {
                "event_id": o.event_id,
                "event_type": o.event_type,
                "node_id": o.node_id,
                "timestamp": o.timestamp,
            }
        ).decode()
    )

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        """Stored as the events writer stores it: the fleet view's node row follows."""
        from releases.services import fleet_nodes_seen

        event = super()._create(model_class, *args, **kwargs)
        fleet_nodes_seen(
            node_ids=[event.node_id],
            received_at=connection.ops.adapt_datetimefield_value(event.received_at),
        )
        return event


class ReleaseFactory(DjangoModelFactory):
    class Meta:
        model = Release

    release_id = factory.Sequence(lambda n: f"rel-{n:04d}")
    channel = "stable"
    sequence = factory.Sequence(lambda n: n + 1)
    created_at = factory.LazyFunction(timezone.now)
    metadata = factory.LazyFunction(dict)


class NodeAckFactory(DjangoModelFactory):
    class Meta:
        model = NodeAck

    node_id = factory.Sequence(lambda n: f"node-{n:03d}")
    release = factory.SubFactory(ReleaseFactory)
    status = NodeAck.Status.ACTIVE
    acked_at = factory.LazyFunction(timezone.now)
    updated_at = factory.LazyFunction(timezone.now)

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        """Stored as every ack write stores it: the fleet view's tables follow."""
        from releases.services import fleet_acks_refresh

        ack = super()._create(model_class, *args, **kwargs)
        fleet_acks_refresh(node_ids=[ack.node_id])
        return ack


class RolloutPlanFactory(DjangoModelFactory):
    """A published rollout plan, made through `rollouts.services.rollout_publish` (so it is
    signed and its first stage is open). Extra keyword arguments go into the spec."""

    class Meta:
        model = "rollouts.RolloutPlan"

    plan_id = factory.Sequence(lambda n: f"plan-test-{n:04d}")
    release = factory.SubFactory(ReleaseFactory)
    stages = factory.LazyFunction(
        lambda: [
            {"stage_id": "canary", "percent": 10},
            {"stage_id": "half", "percent": 50},
            {"stage_id": "all", "percent": 100},
        ]
    )

    @classmethod
    def _create(cls, model_class, *args, plan_id, release, stages, **spec):
        from rollouts.services import rollout_publish

        raw = orjson.dumps(
            {"plan_id": plan_id, "release_id": release.release_id, "stages": stages, **spec}
        )
        return rollout_publish(raw_spec=raw)
