"""Notifications: created by services, read through the API and the portal, pushed on commit."""

import asyncio
import re

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from accounts.choices import NotificationLevel
from accounts.models import Notification
from accounts.services.notifications import (
    notification_create,
    notification_group,
    notification_mark_all_read,
    notification_mark_read,
    notification_unread_count,
)
from accounts.tests.factories import NotificationFactory

UNREAD_BADGE = re.compile(r'id="unread-count"[^>]*>(\d+)</span>')


def _badge(response) -> int:
    match = UNREAD_BADGE.search(response.content.decode())
    assert match, "the page header has no unread badge"
    return int(match.group(1))


def test_notification_create_and_service_reads(member, organization):
    notification = notification_create(
        member,
        "x" * 250,
        body="Body",
        level=NotificationLevel.WARNING,
        url="/org/members/",
        organization=organization,
    )
    assert len(notification.title) == 200
    assert notification.is_read is False
    other = NotificationFactory(user=member)
    assert notification_unread_count(member) == 2

    assert notification_mark_read(member, [notification.pk]) == 1
    assert notification_mark_read(member, [notification.pk]) == 0  # already read
    assert notification_unread_count(member) == 1
    assert notification_mark_all_read(member) == 1
    other.refresh_from_db()
    assert other.is_read
    assert notification_unread_count(member) == 0


def test_marking_someone_elses_notification_does_nothing(member, outsider):
    theirs = NotificationFactory(user=outsider)
    assert notification_mark_read(member, [theirs.pk]) == 0
    theirs.refresh_from_db()
    assert theirs.read_at is None


def _receive(channel_layer, channel):
    async def receive():
        return await asyncio.wait_for(channel_layer.receive(channel), timeout=5)

    return async_to_sync(receive)()


def test_create_pushes_to_users_group_on_commit(member, django_capture_on_commit_callbacks):
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(notification_group(member.pk), channel)
    try:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            notification = notification_create(member, "Environment ready")
        assert len(callbacks) == 1  # nothing is pushed before the commit
        callbacks[0]()
        event = _receive(layer, channel)
        assert event["type"] == "notification.event"
        assert event["unread"] == 1
        assert event["notification"]["id"] == notification.pk
        assert event["notification"]["title"] == "Environment ready"

        with django_capture_on_commit_callbacks(execute=True):
            notification_mark_all_read(member)
        event = _receive(layer, channel)
        assert event["unread"] == 0
        assert event["notification"] is None
    finally:
        async_to_sync(layer.group_discard)(notification_group(member.pk), channel)


# API --------------------------------------------------------------------------------------


def test_api_list_read_and_read_all(token_client_for, member, outsider):
    first = NotificationFactory(user=member, title="first")
    second = NotificationFactory(user=member, title="second")
    NotificationFactory(user=outsider)
    client = token_client_for(member)

    body = client.get("/api/v1/notifications/").json()
    assert {row["id"] for row in body["results"]} == {first.pk, second.pk}
    assert client.get("/api/v1/notifications/?unread=true").json()["count"] == 2

    response = client.post(f"/api/v1/notifications/{first.pk}/read/")
    assert response.status_code == 200
    assert response.json()["is_read"] is True
    assert response.json()["read_at"]
    unread = client.get("/api/v1/notifications/?unread=true").json()
    assert [row["id"] for row in unread["results"]] == [second.pk]

    response = client.post("/api/v1/notifications/read-all/")
    assert response.status_code == 200
    assert response.json() == {"count": 1}
    assert notification_unread_count(member) == 0
    assert notification_unread_count(outsider) == 1


def test_api_read_only_token_cannot_mark_read(token_client_for, member):
    notification = NotificationFactory(user=member)
    client = token_client_for(member, write=False)
    assert client.post(f"/api/v1/notifications/{notification.pk}/read/").status_code == 403
    notification.refresh_from_db()
    assert notification.read_at is None


def test_api_other_users_notification_is_404(token_client_for, member, outsider):
    theirs = NotificationFactory(user=outsider)
    client = token_client_for(member)
    assert client.get(f"/api/v1/notifications/{theirs.pk}/").status_code == 404
    assert client.post(f"/api/v1/notifications/{theirs.pk}/read/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.read_at is None


# Portal -----------------------------------------------------------------------------------


def test_portal_list_badge_and_mark_read(client, member, outsider):
    first = NotificationFactory(user=member, title="Disk almost full", url="/settings/tokens/")
    NotificationFactory(user=member, title="Second")
    NotificationFactory(user=outsider, title="Not yours")
    client.force_login(member)

    page = client.get("/notifications/")
    assert page.status_code == 200
    assert _badge(page) == 2
    content = page.content.decode()
    assert "Disk almost full" in content
    assert "Not yours" not in content

    # Marking read follows the notification's own link.
    response = client.post(f"/notifications/{first.pk}/read/")
    assert response.status_code == 302
    assert response.url == "/settings/tokens/"
    assert _badge(client.get("/")) == 1

    response = client.post("/notifications/read-all/")
    assert response.status_code == 302
    page = client.get("/")
    assert _badge(page) == 0
    assert 'd-none" id="unread-count"' in page.content.decode()


@pytest.mark.parametrize("url", ["https://evil.example.com/", "//evil.example.com/", ""])
def test_portal_mark_read_never_redirects_offsite(client, member, url):
    notification = NotificationFactory(user=member, url=url)
    client.force_login(member)
    response = client.post(f"/notifications/{notification.pk}/read/")
    assert response.status_code == 302
    assert response.url == "/notifications/"


def test_portal_mark_read_with_htmx(client, member):
    notification = NotificationFactory(user=member)
    client.force_login(member)
    response = client.post(f"/notifications/{notification.pk}/read/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    # The row comes back alone, read, without its "Mark read" button, for htmx to swap in.
    html = response.content.decode()
    assert html.lstrip().startswith('<li class="list-group-item')
    assert f'id="notification-{notification.pk}"' in html
    assert "/read/" not in html
    assert "<html" not in html
    notification.refresh_from_db()
    assert notification.is_read


def test_portal_other_users_notification_is_404(client, member, outsider):
    theirs = NotificationFactory(user=outsider)
    client.force_login(member)
    assert client.post(f"/notifications/{theirs.pk}/read/").status_code == 404
    theirs.refresh_from_db()
    assert theirs.read_at is None


def test_portal_mark_read_requires_post(client, member):
    notification = NotificationFactory(user=member)
    client.force_login(member)
    assert client.get(f"/notifications/{notification.pk}/read/").status_code == 405
    assert Notification.objects.get(pk=notification.pk).read_at is None
