"""NotificationConsumer over Channels' in-process communicator and the real Redis channel layer."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.db import transaction
from django.utils import timezone

from accounts.consumers import NotificationConsumer
from accounts.services.notifications import notification_create, notification_group
from accounts.tests.factories import NotificationFactory, UserFactory

PATH = "/ws/notifications/"
TIMEOUT = 10  # a bound on waits for what must come, not a pace: CI machines are loaded

# Sockets only see committed rows, and notifications are pushed on commit.
pytestmark = pytest.mark.django_db(transaction=True)


def _communicator(user) -> WebsocketCommunicator:
    """A communicator whose scope carries ``user``, as AuthMiddlewareStack would set it."""
    consumer = NotificationConsumer.as_asgi()

    async def application(scope, receive, send):
        return await consumer({**scope, "user": user}, receive, send)

    return WebsocketCommunicator(application, PATH)


def _run(coroutine_function):
    """Run an async scenario; database_sync_to_async work happens back in this thread."""
    return async_to_sync(coroutine_function)()


@database_sync_to_async
def _notify_committed(user, title: str):
    with transaction.atomic():
        return notification_create(user, title, body="details")


def test_signed_in_user_is_accepted_and_told_their_unread_count():
    user = UserFactory()
    NotificationFactory.create_batch(2, user=user)
    NotificationFactory(user=user, read_at=timezone.now())
    NotificationFactory()

    async def scenario():
        communicator = _communicator(user)
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        assert connected
        first = await communicator.receive_json_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return first

    assert _run(scenario) == {"type": "notification", "unread": 2, "notification": None}


@pytest.mark.parametrize("who", ["anonymous", "disabled"])
def test_anonymous_or_disabled_user_is_closed_with_4401(who):
    user = AnonymousUser() if who == "anonymous" else UserFactory(is_active=False)

    async def scenario():
        communicator = _communicator(user)
        result = await communicator.connect(timeout=TIMEOUT)
        await communicator.disconnect()
        return result

    assert _run(scenario) == (False, 4401)


def test_notification_created_elsewhere_is_pushed_on_commit():
    user = UserFactory()
    NotificationFactory(user=user)

    async def scenario():
        communicator = _communicator(user)
        await communicator.connect(timeout=TIMEOUT)
        await communicator.receive_json_from(timeout=TIMEOUT)
        notification = await _notify_committed(user, "Environment ready")
        pushed = await communicator.receive_json_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return notification, pushed

    notification, pushed = _run(scenario)

    assert pushed["type"] == "notification"
    assert pushed["unread"] == 2
    assert pushed["notification"]["id"] == notification.pk
    assert pushed["notification"]["title"] == "Environment ready"
    assert pushed["notification"]["body"] == "details"


def test_group_event_is_relayed_and_other_users_events_are_not():
    user = UserFactory()
    stranger = UserFactory()
    event = {"type": "notification.event", "unread": 7, "notification": {"id": 1, "title": "x"}}

    async def scenario():
        layer = get_channel_layer()
        communicator = _communicator(user)
        await communicator.connect(timeout=TIMEOUT)
        await communicator.receive_json_from(timeout=TIMEOUT)
        await layer.group_send(notification_group(stranger.pk), {**event, "unread": 99})
        nothing_for_stranger = await communicator.receive_nothing(timeout=0.5)
        await layer.group_send(notification_group(user.pk), event)
        pushed = await communicator.receive_json_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return nothing_for_stranger, pushed

    nothing_for_stranger, pushed = _run(scenario)

    assert nothing_for_stranger
    assert pushed == {"type": "notification", "unread": 7, "notification": event["notification"]}


def test_client_message_gets_an_error_reply_and_changes_nothing():
    user = UserFactory()
    notification = NotificationFactory(user=user)

    async def scenario():
        communicator = _communicator(user)
        await communicator.connect(timeout=TIMEOUT)
        await communicator.receive_json_from(timeout=TIMEOUT)
        await communicator.send_json_to({"type": "mark_read", "ids": [notification.pk]})
        reply = await communicator.receive_json_from(timeout=TIMEOUT)
        await communicator.disconnect()
        return reply

    reply = _run(scenario)

    assert reply["type"] == "error"
    assert reply["message"]
    notification.refresh_from_db()
    assert notification.read_at is None
