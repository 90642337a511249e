"""Browser WebSockets of environments: the list's and one environment's live page."""

from __future__ import annotations

import asyncio
import contextlib

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import connection
from django.template.loader import render_to_string
from django.utils import translation

from remotegpu.core.errors import ApplicationError
from remotegpu.core.websockets import CLOSE_NOT_FOUND, CLOSE_NOT_SIGNED_IN, scope_language

from . import selectors
from .choices import CONTAINER_STATES
from .services.logs import environment_logs
from .services.realtime import (
    environment_group,
    operator_environments_group,
    organization_environments_group,
)

LOG_POLL_SECONDS = 2.0
LOG_TAIL = 200


def _signed_in(scope):
    user = scope.get("user")
    return user if user is not None and user.is_authenticated and user.is_active else None


class EnvironmentListConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/environments/``: status changes of the environments the list shows (the current
    organisation's; ``?all=1`` for operators: every one). Server → client:
    ``{"type": "environment", "id", "status", "html"}`` where ``html`` is the status badge in
    the reader's language."""

    async def connect(self):
        user = _signed_in(self.scope)
        if user is None:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        self.user = user
        self.language = scope_language(self.scope)
        query = self.scope.get("query_string", b"").decode()
        if "all=1" in query and user.is_staff:
            self.group = operator_environments_group()
        else:
            organization_id = await self._current_organization_id(user)
            if organization_id is None:
                await self.close(code=CLOSE_NOT_FOUND)
                return
            self.group = organization_environments_group(organization_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        """Push-only."""

    @database_sync_to_async
    def _current_organization_id(self, user):
        from accounts.selectors import organization_default_for_user

        organization = organization_default_for_user(user)
        return organization.pk if organization is not None else None

    async def environment_update(self, event):
        data = event["environment"]
        with translation.override(self.language):
            html = render_to_string(
                "environments/partials/status_badge.html",
                {"status": data["status"], "reason": data["reason"]},
            )
        await self.send_json(
            {"type": "environment", "id": data["id"], "status": data["status"], "html": html}
        )


class EnvironmentConsumer(AsyncJsonWebsocketConsumer):
    """``/ws/environments/<id>/``: one environment's page, live. On every change its status,
    pull progress and system log are pushed rendered (``{"type": "environment", "status",
    "html"}``); while it has a container, its output is read from the host every two seconds
    and new lines are pushed (``{"type": "logs", "lines"}``). Members of its organisation and
    operators only; anyone else is closed with 4404, as if it did not exist."""

    async def connect(self):
        user = _signed_in(self.scope)
        if user is None:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        self.user = user
        self.environment_id = self.scope["url_route"]["kwargs"]["environment_id"]
        if await self._environment() is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.language = scope_language(self.scope)
        self.group = environment_group(self.environment_id)
        self.last_line = ""
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        self.logs_task = asyncio.ensure_future(self._follow_logs())

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
        task = getattr(self, "logs_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def receive_json(self, content, **kwargs):
        """Push-only: actions go through the page's forms."""

    @database_sync_to_async
    def _environment(self):
        return selectors.environment_get_for_user(self.user, self.environment_id)

    @database_sync_to_async
    def _render(self):
        environment = self._environment_now()
        if environment is None:
            return None
        with translation.override(self.language):
            html = render_to_string(
                "environments/partials/live.html",
                {
                    "environment": environment,
                    "events": selectors.environment_event_list(environment),
                },
            )
        return {"type": "environment", "status": environment.status, "html": html}

    def _environment_now(self):
        return selectors.environment_get_for_user(self.user, self.environment_id)

    async def environment_update(self, event):
        message = await self._render()
        if message is not None:
            await self.send_json(message)

    def _new_lines(self) -> list[str] | None:
        """Runs in a thread of its own (it waits for the host): a wait here must not hold up
        the thread every consumer's database calls share."""
        try:
            environment = self._environment_now()
            if environment is None or environment.status not in CONTAINER_STATES:
                return None
            lines = environment_logs(environment, tail=LOG_TAIL)
        except ApplicationError:
            return None
        finally:
            connection.close()
        if self.last_line in lines:
            lines = lines[lines.index(self.last_line) + 1 :]
        if lines:
            self.last_line = lines[-1]
        return lines

    async def _follow_logs(self):
        while True:
            lines = await sync_to_async(self._new_lines, thread_sensitive=False)()
            if lines:
                await self.send_json({"type": "logs", "lines": lines})
            await asyncio.sleep(LOG_POLL_SECONDS)
