"""A real daphne serves the notification socket; pushes cross processes through Redis."""

from __future__ import annotations

import asyncio
import json

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import Client
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from accounts.models import User
from accounts.services.notifications import notification_create
from accounts.tests.factories import NotificationFactory, UserFactory

from .conftest import http_get

pytestmark = pytest.mark.integration

NOTIFICATIONS_PATH = "/ws/notifications/"
RECEIVE_TIMEOUT = 5


def _session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def _connect(server, *, cookie: str | None = None, origin: str | None = None):
    headers = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={cookie}"} if cookie else {}
    return connect(
        server.ws_url(NOTIFICATIONS_PATH),
        origin=origin or server.base_url,
        additional_headers=headers,
        open_timeout=RECEIVE_TIMEOUT,
    )


async def _receive_json(websocket) -> dict:
    return json.loads(await asyncio.wait_for(websocket.recv(), RECEIVE_TIMEOUT))


def _create_notification_committed(user: User, title: str) -> None:
    """Runs in a worker thread: its own connection, committed, then closed."""
    try:
        with transaction.atomic():
            notification_create(user, title)
    finally:
        connection.close()


async def _handshake_status(server, **kwargs) -> int:
    with pytest.raises(InvalidStatus) as rejected:
        async with _connect(server, **kwargs):
            pass
    return rejected.value.response.status_code


def test_signed_in_socket_gets_count_then_pushes_from_another_process(
    transactional_db, daphne_server
):
    user = UserFactory()
    NotificationFactory(user=user)
    NotificationFactory()  # someone else's: never counted
    cookie = _session_cookie(user)

    async def scenario() -> tuple[dict, dict]:
        async with _connect(daphne_server, cookie=cookie) as websocket:
            first = await _receive_json(websocket)
            await asyncio.to_thread(_create_notification_committed, user, "hello")
            pushed = await _receive_json(websocket)
        return first, pushed

    first, pushed = asyncio.run(scenario())

    assert first == {"type": "notification", "unread": 1, "notification": None}
    assert pushed["type"] == "notification"
    assert pushed["unread"] == 2
    assert pushed["notification"]["title"] == "hello"
    assert pushed["notification"]["read"] is False


def test_anonymous_socket_is_rejected(transactional_db, daphne_server):
    # The consumer closes (4401) before accepting, which daphne turns into a 403 handshake.
    assert asyncio.run(_handshake_status(daphne_server)) == 403


def test_disabled_users_session_is_rejected(transactional_db, daphne_server):
    user = UserFactory()
    cookie = _session_cookie(user)
    User.objects.filter(pk=user.pk).update(is_active=False)

    assert asyncio.run(_handshake_status(daphne_server, cookie=cookie)) == 403


def test_foreign_origin_is_rejected_even_when_signed_in(transactional_db, daphne_server):
    cookie = _session_cookie(UserFactory())

    status = asyncio.run(
        _handshake_status(daphne_server, cookie=cookie, origin="http://evil.example")
    )

    assert status == 403


def test_readyz_answers_from_daphne(daphne_server):
    status, body = http_get(daphne_server.url("/readyz"))

    assert status == 200, body
    assert json.loads(body) == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
