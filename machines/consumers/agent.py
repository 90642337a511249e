"""The agent's WebSocket: ``/agent/ws/``."""

from __future__ import annotations

import logging
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.utils import timezone
from remotegpu_agent import protocol

from ..services import commands as command_services
from ..services import hosts as host_services
from ..services.gateway import gateway_sessions_seen, host_access_map
from ..services.heartbeats import batcher, heartbeat_check
from ..services.join import credential_authenticate
from ..services.realtime import CLOSE_CREDENTIAL_INVALID, CLOSE_CREDENTIAL_REVOKED, agent_group

logger = logging.getLogger(__name__)

# How often a live connection re-joins its group and looks for commands whose push was lost.
RESYNC_INTERVAL = float(getattr(settings, "AGENT_RESYNC_SECONDS", 60))


def _bearer(scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credential.strip()
    return ""


class AgentConsumer(AsyncWebsocketConsumer):
    """One host agent's connection.

    The agent authenticates with ``Authorization: Bearer rhc_...`` at the handshake; an invalid
    or revoked credential is refused before accept (the client sees HTTP 403). The server then
    sends ``welcome``, the SSH gateway's ``access_map`` and every open command; the agent sends
    ``inventory``, ``heartbeat``, ``command_ack``, ``command_progress`` and ``command_result``.
    A malformed, oversized or unknown message is answered with ``error`` and logged; it never
    closes the socket or crashes the server.
    Revoking the credential closes the socket with 4403 (group event ``agent.disconnect``).
    """

    host = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.terminals: dict[str, str] = {}  # web terminal session -> its browser's channel

    async def connect(self):
        self.bearer = _bearer(self.scope)
        credential = await database_sync_to_async(credential_authenticate)(self.bearer)
        if credential is None:
            logger.warning("agent refused: invalid credential from %s", self.scope.get("client"))
            await self.close(code=CLOSE_CREDENTIAL_INVALID)
            return
        self.host = credential.host
        self.group = agent_group(self.host.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.resync_at = time.monotonic() + RESYNC_INTERVAL
        await self.accept()
        await database_sync_to_async(host_services.host_connected)(self.host, self.channel_name)
        await self._send(
            protocol.Welcome(
                host_id=self.host.pk,
                host_name=self.host.name,
                heartbeat_interval=self.host.heartbeat_interval,
            )
        )
        await self._send_access_map()
        await self._send_commands()

    async def dispatch(self, message):
        # Channels checks for stale database connections (a hop to a worker thread) before
        # every message. A heartbeat touches no database here, and the handlers that do go
        # through database_sync_to_async, which makes that check itself: skip it per message.
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
        else:
            await super().dispatch(message)

    async def disconnect(self, code):
        for session, reply in list(self.terminals.items()):
            await self._terminal_closed(session, reply, "the host's agent went away")
        if self.host is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            await database_sync_to_async(host_services.host_disconnected)(
                self.host.pk, self.channel_name
            )

    async def receive(self, text_data=None, bytes_data=None):
        if bytes_data is not None:
            framed = protocol.terminal_unframe(bytes_data)
            if framed is not None:  # a web terminal's output: to its browser, as it is
                reply = self.terminals.get(framed[0])
                if reply is not None:
                    await self.channel_layer.send(
                        reply, {"type": "terminal.output", "data": framed[1]}
                    )
                return
        raw = text_data if text_data is not None else bytes_data
        try:
            message = protocol.parse(raw or "")
        except protocol.ProtocolError as error:
            logger.warning("host %s sent a refused message: %s", self.host.pk, error)
            await self._send(protocol.Error(reason=str(error)[:500]))
            return
        handler = {
            protocol.Heartbeat: self._on_heartbeat,
            protocol.Inventory: self._on_inventory,
            protocol.CommandAck: self._on_ack,
            protocol.CommandResult: self._on_result,
            protocol.CommandProgress: self._on_progress,
            protocol.TerminalEvent: self._on_terminal_event,
        }.get(type(message))
        if handler is None:
            reason = f"{message.type} is not an agent message"
            logger.warning("host %s sent a refused message: %s", self.host.pk, reason)
            await self._send(protocol.Error(reason=reason, ref=message.id))
            return
        try:
            await handler(message)
        except protocol.ProtocolError as error:  # well-formed, but figures no column holds
            logger.warning("host %s sent a refused message: %s", self.host.pk, error)
            await self._send(protocol.Error(reason=str(error)[:500], ref=message.id))

    async def _on_heartbeat(self, message):
        heartbeat_check(message)  # refused here, not when it would fail everyone's batch
        now = timezone.now()
        batcher.add(self.host.pk, message, now)
        if message.sessions:
            await database_sync_to_async(gateway_sessions_seen)(self.host.pk, message.sessions, now)
        if time.monotonic() >= self.resync_at:
            await self._resync()

    async def _resync(self):
        """Repair what a Redis restart or a lost message can break while this socket stays up:
        check the credential again (a revocation whose close message was lost, or that came
        between the handshake's check and joining the group), join the host's group again
        (idempotent), mark the host connected, and send commands whose push never arrived.
        Once a minute per connection, not per heartbeat."""
        self.resync_at = time.monotonic() + RESYNC_INTERVAL
        if await database_sync_to_async(credential_authenticate)(self.bearer) is None:
            logger.warning("host %s: credential no longer valid, closing its socket", self.host.pk)
            await self.close(code=CLOSE_CREDENTIAL_REVOKED)
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await database_sync_to_async(host_services.host_connected)(self.host, self.channel_name)
        await self._send_access_map()
        await self._send_commands(unsent_only=True)

    async def _on_inventory(self, message):
        await database_sync_to_async(host_services.host_apply_inventory)(self.host, message)

    async def _on_ack(self, message):
        await database_sync_to_async(command_services.command_acknowledge)(
            self.host.pk, message.command_id
        )

    async def _on_result(self, message):
        await database_sync_to_async(command_services.command_finish)(
            self.host.pk,
            message.command_id,
            ok=message.ok,
            result=message.result,
            error=message.error,
        )

    async def _on_progress(self, message):
        await database_sync_to_async(command_services.command_progress)(
            self.host.pk, message.command_id, message.progress
        )

    async def _on_terminal_event(self, message):
        reply = self.terminals.get(message.session)
        if reply is None:
            return
        if message.event == "closed":
            self.terminals.pop(message.session, None)
        await self.channel_layer.send(
            reply,
            {
                "type": "terminal.event",
                "event": message.event,
                "message": message.message[:500],
                "exit_code": message.exit_code,
            },
        )

    async def _terminal_closed(self, session: str, reply: str, why: str):
        self.terminals.pop(session, None)
        await self.channel_layer.send(
            reply, {"type": "terminal.event", "event": "closed", "message": why}
        )

    async def _send(self, message):
        await self.send(text_data=protocol.dump(message))

    async def _send_access_map(self):
        await self._send(await database_sync_to_async(host_access_map)(self.host.pk))

    async def _send_commands(self, command_id: str | None = None, *, unsent_only: bool = False):
        commands = await database_sync_to_async(command_services.command_list_to_send)(
            self.host.pk, command_id, unsent_only=unsent_only
        )
        for command in commands:
            await self._send(
                protocol.Command(
                    command_id=str(command.pk),
                    kind=command.kind,
                    payload=command.payload,
                    deadline=command.deadline.timestamp(),
                )
            )

    # Group events --------------------------------------------------------------------------

    async def agent_command(self, event):
        command = event.get("command")
        if command is None or command["deadline"] <= time.time():
            await self._send_commands(event["command_id"])
            return
        # Pushed whole: send it first, then record that it went (one hop fewer before the
        # agent has it). A push lost here is found by the periodic resync, as ever.
        await self._send(
            protocol.Command(
                command_id=event["command_id"],
                kind=command["kind"],
                payload=command["payload"],
                deadline=command["deadline"],
            )
        )
        await database_sync_to_async(command_services.command_mark_sent)(
            self.host.pk, [event["command_id"]]
        )

    async def agent_access(self, event):
        """Who may open what through the host's SSH gateway changed: send the whole map."""
        await self._send_access_map()

    # Web terminals: the browser's consumer asks, this socket carries it to the agent.

    async def agent_terminal_open(self, event):
        self.terminals[event["session"]] = event["reply"]
        await self._send(
            protocol.TerminalOpen(
                session=event["session"],
                environment_id=event["environment_id"],
                container=event["container"],
                user=event["user"],
                cols=event["cols"],
                rows=event["rows"],
            )
        )

    async def agent_terminal_input(self, event):
        if event["session"] in self.terminals:
            await self.send(bytes_data=protocol.terminal_frame(event["session"], event["data"]))

    async def agent_terminal_resize(self, event):
        if event["session"] in self.terminals:
            await self._send(
                protocol.TerminalResize(
                    session=event["session"], cols=event["cols"], rows=event["rows"]
                )
            )

    async def agent_terminal_ack(self, event):
        if event["session"] in self.terminals:
            await self._send(
                protocol.TerminalAck(
                    session=event["session"], bytes=event["bytes"], frames=event["frames"]
                )
            )

    async def agent_terminal_close(self, event):
        if self.terminals.pop(event["session"], None) is not None:
            await self._send(protocol.TerminalClose(session=event["session"]))

    async def agent_disconnect(self, event):
        await self.close(code=event.get("code", CLOSE_CREDENTIAL_REVOKED))
