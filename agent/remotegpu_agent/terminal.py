"""Web terminals: a shell on a TTY in an environment's container, its bytes carried over the
agent's socket as binary frames.

Flow control is by credit. Output is read from the exec only while fewer than ``WINDOW`` bytes
(and ``MAX_FRAMES`` frames) are out unacknowledged; the browser acknowledges what xterm.js has
drawn. So ``yes`` in a terminal fills the window, then blocks on its own write inside the
container: memory stays bounded everywhere on the way, and the other sessions, each reading
under its own credit, go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .dockerexec import LOGIN_SHELL, DockerAPI, DockerAPIError, ExecStream, terminal_size_ok
from .protocol import TerminalEvent, TerminalOpen, terminal_frame

logger = logging.getLogger(__name__)

WINDOW = 2048 * 1024  # output bytes in flight per session
MAX_FRAMES = 64  # output frames in flight per session (the server's channels hold 100)
# Output bytes in one frame: daphne refuses WebSocket messages over 1 MiB (and drops the socket).
READ_CHUNK = 512 * 1024
MAX_SESSIONS = 64
MAX_PENDING_INPUT = 1024 * 1024  # keyboard bytes the shell has not read yet
SESSION = re.compile(r"[0-9a-f]{32}")

SendFrame = Callable[[bytes], Awaitable[object]]
SendEvent = Callable[[TerminalEvent], Awaitable[object]]


@dataclass
class Session:
    session: str
    environment_id: int
    user: str
    stream: ExecStream | None = None
    unacked_bytes: int = 0
    unacked_frames: int = 0
    credit: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    reason: str = ""

    def has_credit(self) -> bool:
        return self.unacked_bytes < WINDOW and self.unacked_frames < MAX_FRAMES


class Terminals:
    def __init__(self, docker: DockerAPI, send_frame: SendFrame, send_event: SendEvent):
        self.docker = docker
        self.send_frame = send_frame
        self.send_event = send_event
        self.sessions: dict[str, Session] = {}

    def environments(self) -> list[int]:
        return sorted({session.environment_id for session in self.sessions.values()})

    async def open(self, message: TerminalOpen, allowed_users: frozenset[str] | None) -> None:
        """Open a session; ``allowed_users`` is the access map's word on the environment
        (None: not in the map, so not running or not to be opened)."""
        refusal = ""
        if not SESSION.fullmatch(message.session) or message.session in self.sessions:
            refusal = "bad session id"
        elif allowed_users is None or message.user not in allowed_users:
            refusal = "access to this environment has ended"
        elif len(self.sessions) >= MAX_SESSIONS:
            refusal = f"too many terminals on this host (at most {MAX_SESSIONS})"
        if refusal:
            await self.send_event(
                TerminalEvent(session=message.session[:64], event="closed", message=refusal)
            )
            return
        session = Session(message.session, message.environment_id, message.user)
        session.credit.set()
        self.sessions[message.session] = session
        cols, rows = (
            (message.cols, message.rows)
            if terminal_size_ok(message.cols, message.rows)
            else (80, 24)
        )
        session.task = asyncio.ensure_future(self._run(session, message.container, cols, rows))

    async def _run(self, session: Session, container: str, cols: int, rows: int) -> None:
        exit_code = None
        try:
            try:
                session.stream = await self.docker.exec(
                    container,
                    LOGIN_SHELL,
                    tty=True,
                    env={"TERM": "xterm-256color"},
                    rows=rows,
                    cols=cols,
                )
            except (DockerAPIError, OSError) as exc:
                session.reason = f"cannot start a shell: {exc}"
                return
            await self.send_event(TerminalEvent(session=session.session, event="opened"))
            await self._pump(session)
            with contextlib.suppress(DockerAPIError, OSError):
                exit_code = await self.docker.exec_exit_code(session.stream.exec_id)
        except asyncio.CancelledError:
            pass
        finally:
            self.sessions.pop(session.session, None)
            if session.stream is not None:
                session.stream.close()
            with contextlib.suppress(Exception):
                await self.send_event(
                    TerminalEvent(
                        session=session.session,
                        event="closed",
                        message=session.reason or "the shell ended",
                        exit_code=exit_code,
                    )
                )

    async def _pump(self, session: Session) -> None:
        stream = session.stream
        prefix = terminal_frame(session.session, b"")
        while True:
            while not session.has_credit():
                session.credit.clear()
                await session.credit.wait()
            data = await stream.read(min(READ_CHUNK, WINDOW - session.unacked_bytes))
            if not data:
                return
            session.unacked_bytes += len(data)
            session.unacked_frames += 1
            await self.send_frame(prefix + data)

    def input(self, session_id: str, data: bytes) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.stream is None:
            return
        transport = session.stream.writer.transport
        if transport.get_write_buffer_size() > MAX_PENDING_INPUT:
            return  # the shell is not reading: drop keystrokes rather than grow
        session.stream.write(data)

    async def resize(self, session_id: str, cols: int, rows: int) -> None:
        session = self.sessions.get(session_id)
        if session is None or session.stream is None or not terminal_size_ok(cols, rows):
            return
        with contextlib.suppress(DockerAPIError, OSError):
            await self.docker.exec_resize(session.stream.exec_id, rows, cols)

    def ack(self, session_id: str, size: int, frames: int) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return
        session.unacked_bytes = max(0, session.unacked_bytes - max(0, size))
        session.unacked_frames = max(0, session.unacked_frames - max(0, frames))
        if session.has_credit():
            session.credit.set()

    def close(self, session_id: str, reason: str = "closed") -> None:
        session = self.sessions.get(session_id)
        if session is not None and session.task is not None:
            session.reason = reason
            session.task.cancel()

    def enforce(self, allowed: dict[int, frozenset[str]]) -> int:
        """End the sessions the access map no longer allows (environment id -> users)."""
        ended = 0
        for session in list(self.sessions.values()):
            users = allowed.get(session.environment_id)
            if users is None or session.user not in users:
                self.close(session.session, "access to this environment has ended")
                ended += 1
        return ended

    def close_all(self, reason: str) -> None:
        for session_id in list(self.sessions):
            self.close(session_id, reason)
