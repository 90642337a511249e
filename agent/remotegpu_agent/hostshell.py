"""Shells and commands on the host itself, as a whole-machine tenant's Unix account.

The SSH gateway runs a tenant's sessions here the way it runs an environment's with
``docker exec``: the same small interface (``HostSession`` and ``dockerexec.ExecStream`` both
read, write, resize and report an exit status), so the gateway's session code is one.
The process gets the account's uid, gid and groups (set by ``subprocess`` itself, before
``exec``), its home as working folder and a clean environment; with a TTY it runs in a session
of its own with the PTY as its controlling terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import struct
import termios
from collections.abc import AsyncIterator

from .dockerexec import STDERR, STDOUT

READ_CHUNK = 64 * 1024
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _take_terminal() -> None:  # runs in the child, after setsid and the uid change
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class HostSession:
    def __init__(self, process: asyncio.subprocess.Process, tty: bool, master: int | None):
        self.process = process
        self.tty = tty
        self.master = master
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    async def start(
        cls, user: str, command: str | None, *, term: str = "", rows: int = 0, cols: int = 0
    ) -> HostSession:
        account = pwd.getpwnam(user)
        shell = account.pw_shell or "/bin/sh"
        argv = [shell, "-l"] if command is None else [shell, "-c", command]
        env = {
            "HOME": account.pw_dir,
            "USER": user,
            "LOGNAME": user,
            "SHELL": shell,
            "PATH": PATH,
        }
        home = account.pw_dir if os.path.isdir(account.pw_dir) else "/"
        options = {
            "env": {**env, "TERM": term} if term else env,
            "cwd": home,
            "user": account.pw_uid,
            "group": account.pw_gid,
            "extra_groups": os.getgrouplist(user, account.pw_gid),
            "start_new_session": True,
        }
        if not term:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                **options,
            )
            session = cls(process, False, None)
            session.writer = process.stdin
            return session
        master, slave = os.openpty()
        if rows and cols:
            set_size(master, rows, cols)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                preexec_fn=_take_terminal,
                **options,
            )
        finally:
            os.close(slave)
        session = cls(process, True, master)
        loop = asyncio.get_running_loop()
        session.reader = asyncio.StreamReader(limit=READ_CHUNK * 4)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(session.reader), os.fdopen(master, "rb", 0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(os.dup(master), "wb", 0)
        )
        session.writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return session

    async def read(self, size: int = READ_CHUNK) -> bytes:
        """With a TTY: what the terminal shows; b"" once the process has closed it."""
        try:
            return await self.reader.read(size)
        except OSError:  # EIO: every process holding the terminal has gone
            return b""

    async def frames(self) -> AsyncIterator[tuple[int, bytes]]:
        """Without a TTY: (STDOUT or STDERR, data) as either comes, until both end."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=8)

        async def pump(kind: int, stream: asyncio.StreamReader) -> None:
            while data := await stream.read(READ_CHUNK):
                await queue.put((kind, data))
            await queue.put(None)

        tasks = [
            asyncio.ensure_future(pump(STDOUT, self.process.stdout)),
            asyncio.ensure_future(pump(STDERR, self.process.stderr)),
        ]
        try:
            ended = 0
            while ended < 2:
                item = await queue.get()
                if item is None:
                    ended += 1
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def close_stdin(self) -> None:
        if self.tty:
            self.write(b"\x04")  # end of input, as a terminal says it
        elif not self.writer.is_closing():
            self.writer.close()

    async def resize(self, rows: int, cols: int) -> None:
        if self.master is not None:
            with contextlib.suppress(OSError):
                set_size(self.master, rows, cols)

    async def exit_code(self) -> int | None:
        try:
            return await asyncio.wait_for(self.process.wait(), 5)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.close()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)
