from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from ..choices import NotificationLevel
from ..models import Notification, Organization, User


def notification_group(user_id: int) -> str:
    """The Channels group every open page of one user listens on."""
    return f"notifications.user.{user_id}"


def notification_unread_count(user: User) -> int:
    return Notification.objects.filter(user=user, read_at__isnull=True).count()


def notification_payload(notification: Notification) -> dict:
    return {
        "id": notification.pk,
        "level": notification.level,
        "title": notification.title,
        "body": notification.body,
        "url": notification.url,
        "created_at": notification.created_at.isoformat(),
        "read": notification.is_read,
    }


def _push(user_id: int, event: dict) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(notification_group(user_id), event)


def _push_unread(user_id: int, notification: Notification | None = None) -> None:
    event = {
        "type": "notification.event",
        "unread": Notification.objects.filter(user_id=user_id, read_at__isnull=True).count(),
        "notification": notification_payload(notification) if notification else None,
    }
    _push(user_id, event)


def notification_create(
    user: User,
    title: str,
    *,
    body: str = "",
    level: str = NotificationLevel.INFO,
    url: str = "",
    organization: Organization | None = None,
) -> Notification:
    """Store a notification and push it to the user's open pages once the transaction commits."""
    notification = Notification.objects.create(
        user=user, title=title[:200], body=body, level=level, url=url, organization=organization
    )
    transaction.on_commit(lambda: _push_unread(user.pk, notification))
    return notification


def notification_mark_read(user: User, notification_ids: list[int]) -> int:
    count = Notification.objects.filter(
        user=user, pk__in=notification_ids, read_at__isnull=True
    ).update(read_at=timezone.now())
    if count:
        transaction.on_commit(lambda: _push_unread(user.pk))
    return count


def notification_mark_all_read(user: User) -> int:
    count = Notification.objects.filter(user=user, read_at__isnull=True).update(
        read_at=timezone.now()
    )
    if count:
        transaction.on_commit(lambda: _push_unread(user.pk))
    return count
