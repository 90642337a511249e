"""``docker exec`` from asyncio, straight over the Engine API's Unix socket.

The SSH gateway and the web terminal run every shell and command as an exec in the
environment's container. The Docker SDK is synchronous and keeps its hijacked exec socket
behind a thread per stream; here each exec is one asyncio connection to the Engine, upgraded
to a raw stream (``POST /exec/{id}/start`` with ``Upgrade: tcp``), so a thousand idle shells
cost a thousand sockets, not a thousand threads, and back-pressure is the socket's own: stop
reading and the process blocks on its write.

With a TTY the stream is the terminal's bytes; without one Docker multiplexes stdout and
stderr into frames (``ExecStream.frames``). Closing our write side ends the process's stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

DEFAULT_SOCKET = "/var/run/docker.sock"
API_VERSION = "v1.41"  # Docker 20.10 and later
STDOUT, STDERR = 1, 2
MAX_HEADER_BYTES = 64 * 1024
READ_CHUNK = 64 * 1024
# What a stream buffers before it stops reading the socket (twice this): room for big reads.
STREAM_LIMIT = 1024 * 1024


# What a session without a command runs: a login shell, bash where the image has it, else sh.
LOGIN_SHELL = [
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l",
]
MAX_TERMINAL_SIDE = 1000  # rows or columns; a size beyond it (or 0) is ignored


def terminal_size_ok(cols: int, rows: int) -> bool:
    return 0 < cols <= MAX_TERMINAL_SIDE and 0 < rows <= MAX_TERMINAL_SIDE


class DockerAPIError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"Docker answered {status}: {message}")
        self.status = status


def socket_path() -> str:
    """The Engine's socket: ``DOCKER_HOST`` when it names one, else the default."""
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return DEFAULT_SOCKET


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEADER_BYTES:
        raise DockerAPIError(0, "response headers too large")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


@dataclass
class ExecStream:
    """One exec's live stream: bytes in through ``write``, bytes out through ``read``."""

    exec_id: str
    tty: bool
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    api: DockerAPI | None = None

    async def read(self, size: int = READ_CHUNK) -> bytes:
        """Raw bytes from the stream (with a TTY, what the terminal shows); b"" at the end."""
        return await self.reader.read(size)

    async def frames(self) -> AsyncIterator[tuple[int, bytes]]:
        """Without a TTY: ``(STDOUT or STDERR, data)`` per frame Docker sends, to the end."""
        while True:
            try:
                header = await self.reader.readexactly(8)
            except asyncio.IncompleteReadError:
                return
            stream, size = header[0], struct.unpack(">I", header[4:])[0]
            remaining = size
            while remaining:
                chunk = await self.reader.read(min(remaining, READ_CHUNK))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield (STDERR if stream == STDERR else STDOUT), chunk

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def close_stdin(self) -> None:
        """Half-close: the process sees end of file on its stdin."""
        if self.writer.can_write_eof() and not self.writer.is_closing():
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    def close(self) -> None:
        self.writer.close()

    async def resize(self, rows: int, cols: int) -> None:
        with contextlib.suppress(DockerAPIError, OSError):
            await self.api.exec_resize(self.exec_id, rows, cols)

    async def exit_code(self, wait: float = 2.0) -> int | None:
        """The exit status, waiting up to ``wait`` seconds for Docker to record it (its stream
        can end a moment before); None if it still runs or Docker cannot say."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            try:
                code = await self.api.exec_exit_code(self.exec_id)
            except (DockerAPIError, OSError):
                return None
            if code is not None or asyncio.get_running_loop().time() >= deadline:
                return code
            await asyncio.sleep(0.01)


class DockerAPI:
    """The few Engine calls exec needs, each over its own short connection."""

    def __init__(self, path: str | None = None):
        self.path = path or socket_path()

    async def _open(self, method: str, url: str, body: Any = None, *, upgrade: bool = False):
        reader, writer = await asyncio.open_unix_connection(self.path, limit=STREAM_LIMIT)
        data = b"" if body is None else json.dumps(body).encode()
        head = [f"{method} /{API_VERSION}{url} HTTP/1.1", "Host: docker"]
        if upgrade:
            head += ["Connection: Upgrade", "Upgrade: tcp"]
        else:
            head.append("Connection: close")
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()
        return reader, writer

    async def request(self, method: str, url: str, body: Any = None) -> Any:
        reader, writer = await self._open(method, url, body)
        try:
            status, headers = await _read_head(reader)
            payload = await _read_body(reader, headers)
        finally:
            writer.close()
        if status >= 400:
            try:
                message = json.loads(payload).get("message", "")
            except ValueError:
                message = payload.decode("utf-8", "replace")
            raise DockerAPIError(status, message[:500])
        return json.loads(payload) if payload.strip() else None

    async def container_pid(self, container: str) -> int:
        """The PID, on this host, of the container's first process; 0 when it is not running."""
        info = await self.request("GET", f"/containers/{urllib.parse.quote(container)}/json")
        state = info.get("State") or {}
        return int(state.get("Pid") or 0) if state.get("Running") else 0

    async def exec_create(
        self,
        container: str,
        command: list[str],
        *,
        tty: bool,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        user: str | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "AttachStdin": True,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": tty,
            "Cmd": command,
            "Env": [f"{name}={value}" for name, value in (env or {}).items()],
        }
        if workdir:
            body["WorkingDir"] = workdir
        if user:
            body["User"] = user
        answer = await self.request(
            "POST", f"/containers/{urllib.parse.quote(container)}/exec", body
        )
        return answer["Id"]

    async def exec_start(self, exec_id: str, *, tty: bool) -> ExecStream:
        reader, writer = await self._open(
            "POST", f"/exec/{exec_id}/start", {"Detach": False, "Tty": tty}, upgrade=True
        )
        status, headers = await _read_head(reader)
        if status not in (101, 200):
            payload = await _read_body(reader, headers)
            writer.close()
            raise DockerAPIError(status, payload.decode("utf-8", "replace")[:500])
        return ExecStream(exec_id, tty, reader, writer, self)

    async def exec_resize(self, exec_id: str, rows: int, cols: int) -> None:
        await self.request("POST", f"/exec/{exec_id}/resize?h={rows}&w={cols}")

    async def exec_exit_code(self, exec_id: str) -> int | None:
        """The process's exit status once it has ended (``None`` while it runs)."""
        info = await self.request("GET", f"/exec/{exec_id}/json")
        return None if info.get("Running") else info.get("ExitCode")

    async def exec(
        self,
        container: str,
        command: list[str],
        *,
        tty: bool,
        env: dict[str, str] | None = None,
        workdir: str | None = None,
        rows: int = 0,
        cols: int = 0,
    ) -> ExecStream:
        """Create and start an exec; with a TTY and a size, size it before it draws."""
        exec_id = await self.exec_create(container, command, tty=tty, env=env, workdir=workdir)
        stream = await self.exec_start(exec_id, tty=tty)
        if tty and rows and cols:
            with contextlib.suppress(DockerAPIError):  # the process may already have ended
                await self.exec_resize(exec_id, rows, cols)
        return stream
