"""Browser WebSockets of environments: the list's, one environment's live page, and its web
terminals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.db import connection
from django.template.loader import render_to_string
from django.utils import translation
from django.utils.translation import gettext_lazy as _
from remotegpu_agent import protocol

from machines.services.realtime import agent_group
from remotegpu.core.errors import ApplicationError
from remotegpu.core.websockets import CLOSE_NOT_FOUND, CLOSE_NOT_SIGNED_IN, scope_language

from . import selectors
from .choices import CONTAINER_STATES
from .services.access import environment_may_open
from .services.logs import environment_logs
from .services.realtime import (
    environment_group,
    operator_environments_group,
    organization_environments_group,
)

CLOSE_TERMINAL_ENDED = 4000  # the shell ended, or access to it did
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


class TerminalConsumer(AsyncWebsocketConsumer):
    """``/ws/environments/<id>/terminal/``: a shell in the environment, for xterm.js.

    Checked before accepting: a signed-in user (the session) from an allowed Origin (the ASGI
    stack), who may open the environment (``environment_may_open``) on a connected host.
    Browser -> server: binary frames are keyboard input (at most 64 KiB each; larger ones are
    refused and the terminal goes on); text frames are JSON, ``{"type": "resize", "cols",
    "rows"}`` (1 to 1000 each) or ``{"type": "ack", "bytes", "frames"}`` for output drawn.
    Server -> browser: binary frames are output; text frames are JSON ``{"type": "opened"}``,
    ``{"type": "closed", "message", "exit_code"}`` or ``{"type": "error", "message"}``. The
    agent sends output only while enough of it is acknowledged (docs/agent-protocol.md)."""

    session = ""

    async def connect(self):
        user = _signed_in(self.scope)
        if user is None:
            await self.close(code=CLOSE_NOT_SIGNED_IN)
            return
        environment_id = self.scope["url_route"]["kwargs"]["environment_id"]
        target = await self._target(user, environment_id)
        if target is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.host_id, container = target
        self.language = scope_language(self.scope)
        self.session = uuid.uuid4().hex
        await self.accept()
        query = parse_qs(self.scope.get("query_string", b"").decode())
        cols, rows = _size(query.get("cols", [""])[0], query.get("rows", [""])[0])
        await self._to_agent(
            "agent.terminal.open",
            environment_id=environment_id,
            container=container,
            user=str(user.pk),
            cols=cols or 80,
            rows=rows or 24,
            reply=self.channel_name,
        )

    async def disconnect(self, code):
        if self.session:
            await self._to_agent("agent.terminal.close")

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is not None:
            if len(bytes_data) > protocol.MAX_TERMINAL_INPUT:
                await self._error(_("Input frames are limited to 64 KiB; that one was dropped."))
                return
            await self._to_agent("agent.terminal.input", data=bytes_data)
            return
        try:
            message = json.loads(text_data or "")
            kind = message["type"]
        except (ValueError, TypeError, KeyError):
            await self._error(_("Not a terminal message."))
            return
        if kind == "resize":
            cols, rows = _size(message.get("cols"), message.get("rows"))
            if not cols:
                await self._error(_("A terminal is 1 to 1000 columns and rows."))
                return
            await self._to_agent("agent.terminal.resize", cols=cols, rows=rows)
        elif kind == "ack":
            size, frames = message.get("bytes"), message.get("frames", 1)
            if not all(isinstance(v, int) and 0 <= v <= 2**31 for v in (size, frames)):
                await self._error(_("An acknowledgement counts bytes and frames."))
                return
            await self._to_agent("agent.terminal.ack", bytes=size, frames=frames)
        else:
            await self._error(_("Not a terminal message."))

    async def _to_agent(self, kind: str, **fields):
        await self.channel_layer.group_send(
            agent_group(self.host_id), {"type": kind, "session": self.session, **fields}
        )

    async def _error(self, message):
        with translation.override(self.language):
            text = str(message)
        await self.send(text_data=json.dumps({"type": "error", "message": text}))

    @database_sync_to_async
    def _target(self, user, environment_id):
        environment = selectors.environment_get_for_user(user, environment_id)
        if environment is None or not environment_may_open(environment, user):
            return None
        if environment.host is None or not environment.host.connected:
            return None
        return environment.host_id, environment.container_id

    # From the agent, relayed by its consumer --------------------------------------------------

    async def terminal_output(self, event):
        await self.send(bytes_data=event["data"])

    async def terminal_event(self, event):
        payload = {"type": event["event"], "message": event.get("message", "")}
        if event["event"] == "closed":
            payload["exit_code"] = event.get("exit_code")
            self.session = ""  # nothing left to close at the agent
            await self.send(text_data=json.dumps(payload))
            await self.close(code=CLOSE_TERMINAL_ENDED)
            return
        await self.send(text_data=json.dumps(payload))


def _size(cols, rows) -> tuple[int, int]:
    """Columns and rows when both are whole numbers from 1 to 1000; (0, 0) otherwise."""
    try:
        cols, rows = int(cols), int(rows)
    except (TypeError, ValueError):
        return 0, 0
    if isinstance(cols, bool) or not (0 < cols <= 1000 and 0 < rows <= 1000):
        return 0, 0
    return cols, rows
