from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.utils.translation import gettext as _

from .services.notifications import notification_group, notification_unread_count


class NotificationConsumer(AsyncJsonWebsocketConsumer):
    """Pushes a signed-in user's notifications and unread count to every open page.

    Protocol (server → client): ``{"type": "notification", "unread": N, "notification": {...}}``;
    ``notification`` is null when only the count changed. Anonymous sockets are closed (4401);
    the Origin header is checked by ``AllowedHostsOriginValidator`` before this runs.
    """

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not user.is_active:
            await self.close(code=4401)
            return
        self.group = notification_group(user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        unread = await database_sync_to_async(notification_unread_count)(user)
        await self.send_json({"type": "notification", "unread": unread, "notification": None})

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        # The socket is push-only; changes go through the HTTP API so they are authorised once.
        await self.send_json({"type": "error", "message": _("This socket is read-only.")})

    async def notification_event(self, event):
        await self.send_json(
            {
                "type": "notification",
                "unread": event["unread"],
                "notification": event["notification"],
            }
        )
