"""The Django admin: releases and acks listed, filtered and searched; events readable; none of
them editable."""

from __future__ import annotations

import pytest

from tests.factories import EventFactory, NodeAckFactory, ReleaseFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-123456789")
    client.force_login(user)
    return client


def test_release_changelist_columns_filter_and_search(staff):
    ReleaseFactory(release_id="rel-stable-1", channel="stable", policy_ref="arm-safety:v1")
    ReleaseFactory(release_id="rel-canary-1", channel="canary")
    page = staff.get("/admin/releases/release/")
    assert page.status_code == 200
    html = page.content.decode()
    for column in ("Release id", "Channel", "Sequence", "Policy ref", "Created at"):
        assert column in html
    assert "rel-stable-1" in html and "arm-safety:v1" in html
    assert "?channel=canary" in html  # the channel filter

    filtered = staff.get("/admin/releases/release/?channel=canary").content.decode()
    assert "rel-canary-1" in filtered and "rel-stable-1" not in filtered
    searched = staff.get("/admin/releases/release/?q=stable-1").content.decode()
    assert "rel-stable-1" in searched and "rel-canary-1" not in searched


def test_ack_changelist_filter_by_status_and_search_by_node(staff):
    NodeAckFactory(node_id="node-alpha", status="failed")
    NodeAckFactory(node_id="node-beta", status="active")
    html = staff.get("/admin/releases/nodeack/").content.decode()
    assert "node-alpha" in html and "node-beta" in html
    assert "?status__exact=failed" in html
    failed = staff.get("/admin/releases/nodeack/?status__exact=failed").content.decode()
    assert "node-alpha" in failed and "node-beta" not in failed
    found = staff.get("/admin/releases/nodeack/?q=beta").content.decode()
    assert "node-beta" in found and "node-alpha" not in found


def test_releases_and_acks_are_read_only(staff):
    release = ReleaseFactory(release_id="rel-1")
    ack = NodeAckFactory(release=release)
    assert staff.get("/admin/releases/release/add/").status_code == 403
    detail = staff.get(f"/admin/releases/release/{release.pk}/change/")
    assert detail.status_code == 200
    assert "rel-1" in detail.content.decode()
    html = detail.content.decode()
    assert "1 acks</a> (active: 1)" in html  # counts, linking to the release's acks
    acks = staff.get("/admin/releases/nodeack/?release__release_id=rel-1").content.decode()
    assert ack.node_id in acks
    changed = staff.post(
        f"/admin/releases/release/{release.pk}/change/", {"release_id": "hacked", "channel": "x"}
    )
    assert changed.status_code == 403
    assert (
        staff.post(f"/admin/releases/release/{release.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    release.refresh_from_db()
    assert release.release_id == "rel-1"
    assert staff.get("/admin/releases/nodeack/add/").status_code == 403


def test_events_readable_not_editable(staff):
    event = EventFactory(event_id="evt-xyz", node_id="node-q", event_type="app.crash")
    listing = staff.get("/admin/events/event/").content.decode()
    assert "evt-xyz" in listing and "app.crash" in listing
    assert "node-q" in staff.get("/admin/events/event/?q=node-q").content.decode()
    detail = staff.get(f"/admin/events/event/{event.pk}/change/")
    assert detail.status_code == 200
    assert "evt-xyz" in detail.content.decode()
    assert 'name="_save"' not in detail.content.decode()
    assert staff.get("/admin/events/event/add/").status_code == 403
    assert staff.post(f"/admin/events/event/{event.pk}/delete/", {"post": "yes"}).status_code == 403


def test_admin_requires_staff_login(client):
    response = client.get("/admin/releases/release/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_ha_cutover_log_is_read_only(staff):
    from django.utils import timezone

    from orchestrator_site.models import HACutoverAt

    entry = HACutoverAt.objects.create(
        completed_at=timezone.now(), source="/var/lib/old/orchestrator.sqlite3", rows_copied=3
    )
    base = "/admin/orchestrator_site/hacutoverat/"
    page = staff.get(f"{base}{entry.pk}/change/")
    assert page.status_code == 200
    assert "orchestrator.sqlite3" in page.content.decode()
    assert staff.get(f"{base}add/").status_code == 403
    assert staff.post(f"{base}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert HACutoverAt.objects.filter(pk=entry.pk).exists()
