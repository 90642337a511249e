"""The SSH gateway: one SSH port per host through which users reach their environments.

``ssh env-42@host`` authenticates with a key the server allows for environment 42 (its
owner's and the organisation's owners' and admins'), pushed to the agent as an ``access_map``.
Nothing has to run inside the image:

- a shell or a command is a ``docker exec`` into the container (with a PTY and window resizes
  when the client asks for one);
- SFTP, and so ``scp``, is served here, on the container's files, by a helper process
  confined to the container's root (``sftp_helper``);
- ``ssh -L`` reaches the container's own ports: the connection is opened from inside the
  container's network namespace, to its loopback, so nothing outside the container can be
  reached this way.

A new access map ends, within the moment it arrives, every connection it no longer allows.
asyncssh is the library: the agent is asyncio, and asyncssh has server-side SFTP, SCP and
port forwarding built in (see docs/architecture.md, "SSH gateway").
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import io
import logging
import os
import pickle
import socket
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from asyncssh.sftp import SFTPAttrs

from . import sftp_helper
from .dockerexec import (
    LOGIN_SHELL,
    STDERR,
    DockerAPI,
    DockerAPIError,
    terminal_size_ok,
)
from .hostshell import HostSession
from .protocol import GatewayAccess, TenantAccess
from .tenants import TENANT_USER

logger = logging.getLogger(__name__)

DEFAULT_PORT = 2222
USER_PREFIX = "env-"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1", "ip6-localhost"})
CONNECT_TIMEOUT = 10.0
CLONE_NEWNET = 0x40000000


def user_name(environment_id: int) -> str:
    return f"{USER_PREFIX}{environment_id}"


@dataclass(frozen=True)
class Access:
    """What one SSH user name opens: an environment's container, or (``unix_user``) a
    whole-machine tenant's account on this host."""

    environment_id: int
    container: str
    fingerprints: frozenset[str]
    unix_user: str = ""


def load_host_key(path: Path) -> asyncssh.SSHKey:
    """The host's key, made once (Ed25519) and kept: clients pin it in known_hosts."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519", comment="remotegpu-gateway")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    return key


# Port forwarding -----------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _connect_in_namespace(pid: int, port: int, family: int) -> socket.socket:
    """A TCP connection to the loopback of process ``pid``'s network namespace. Runs on a
    thread of its own: ``setns`` moves only the calling thread, which then ends."""
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
    finally:
        os.close(fd)
    address = ("::1", port) if family == socket.AF_INET6 else ("127.0.0.1", port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_in_container(pid: int, port: int, family: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[socket.socket] = loop.create_future()

    def work():
        try:
            result = _connect_in_namespace(pid, port, family)
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=work, name=f"netns-{pid}", daemon=True).start()
    return await done


async def _connect_local(port: int, family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    address = ("::1", port) if family == socket.AF_INET6 else ("127.0.0.1", port)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, address), CONNECT_TIMEOUT
        )
    except BaseException:
        sock.close()
        raise
    return sock


def _settle(future: asyncio.Future, result, error) -> None:
    if future.cancelled():
        if result is not None:
            result.close()
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _SocketSide(asyncio.Protocol):
    """The container end of a forwarded connection."""

    def __init__(self, session: _ForwardSession):
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport
        transport.pause_reading()  # until the SSH channel is open

    def data_received(self, data):
        self.session.chan.write(data)

    def eof_received(self):
        self.session.chan.write_eof()
        return True

    def connection_lost(self, exc):
        if self.session.chan is not None:
            self.session.chan.close()

    def pause_writing(self):
        self.session.chan.pause_reading()

    def resume_writing(self):
        self.session.chan.resume_reading()


class _ForwardSession(asyncssh.SSHTCPSession):
    """The SSH end of a forwarded connection; each side's flow control holds the other."""

    def __init__(self):
        self.chan = None
        self.side = _SocketSide(self)

    def connection_made(self, chan):
        self.chan = chan
        self.side.transport.resume_reading()

    def data_received(self, data, datatype):
        self.side.transport.write(data)

    def eof_received(self):
        if self.side.transport.can_write_eof():
            self.side.transport.write_eof()
        return True

    def connection_lost(self, exc):
        self.side.transport.close()

    def pause_writing(self):
        self.side.transport.pause_reading()

    def resume_writing(self):
        self.side.transport.resume_reading()


# SFTP ------------------------------------------------------------------------------------------


class _Unpickler(pickle.Unpickler):
    """Answers from the helper may hold only these types."""

    ALLOWED = {
        ("os", "stat_result"),
        ("os", "statvfs_result"),
        ("asyncssh.sftp", "SFTPAttrs"),
        ("asyncssh.sftp", "SFTPName"),
        ("asyncssh.sftp", "SFTPVFSAttrs"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return super().find_class(module, name)


class SFTPHelper:
    """One helper process and the socket to it; calls are one at a time (SFTP's handler
    awaits each request before the next)."""

    def __init__(self, process: asyncio.subprocess.Process, sock: socket.socket):
        self.process = process
        self.sock = sock
        self.lock = asyncio.Lock()

    @classmethod
    async def start(cls, *, root: str | None = None, user: str | None = None) -> SFTPHelper:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        target = ["--root", root] if root else ["--user", user or ""]
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "remotegpu_agent.sftp_helper",
                "--fd",
                str(theirs.fileno()),
                *target,
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        helper = cls(process, ours)
        await helper._answer()  # "ready", or why the file system cannot be opened
        return helper

    def _exchange(self, request) -> tuple[object, list[int]]:
        if request is not None:
            sftp_helper.send_message(self.sock, request)
        data, fds = sftp_helper.receive_raw(self.sock)
        status, value = _Unpickler(io.BytesIO(data)).load()
        if status == "error":
            for fd in fds:
                os.close(fd)
            raise _error(value)
        return value, fds

    async def _answer(self, request=None) -> tuple[object, list[int]]:
        async with self.lock:
            try:
                return await asyncio.to_thread(self._exchange, request)
            except (EOFError, ConnectionError) as exc:
                raise asyncssh.SFTPConnectionLost("the file system went away") from exc

    async def call(self, operation: str, *arguments):
        value, _ = await self._answer((operation, arguments))
        return value

    async def open(self, *arguments) -> int:
        _, fds = await self._answer(("open", arguments))
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise asyncssh.SFTPFailure("no file came back")
        return fds[0]

    def close(self) -> None:
        self.sock.close()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


def _error(value: tuple) -> Exception:
    """The helper's error, rebuilt: an SFTPError, or an OSError (which picks its subclass,
    FileNotFoundError and so on, by errno; asyncssh answers each with its SFTP status)."""
    if value[0] == "sftp":
        return asyncssh.SFTPError(value[1], value[2])
    return OSError(value[1], value[2], value[3]) if value[3] else OSError(value[1], value[2])


def _apply_attrs(fd: int, attrs: SFTPAttrs) -> None:
    if attrs.size is not None:
        os.ftruncate(fd, attrs.size)
    if attrs.uid is not None and attrs.gid is not None:
        os.fchown(fd, attrs.uid, attrs.gid)
    if attrs.permissions is not None:
        os.fchmod(fd, attrs.permissions & 0o7777)
    if attrs.atime is not None and attrs.mtime is not None:
        os.utime(fd, ns=(int(attrs.atime * 1e9), int(attrs.mtime * 1e9)))


class GatewaySFTPServer(asyncssh.SFTPServer):
    """SFTP whose paths resolve inside the helper's confinement, and whose file data moves
    through descriptors the helper opened."""

    def __init__(self, chan, gateway: Gateway):
        super().__init__(chan)
        self.gateway = gateway
        self.username = chan.get_extra_info("username")
        self.helper: SFTPHelper | None = None
        self.files: set[int] = set()
        self.starting: asyncio.Task | None = None

    async def _helper(self) -> SFTPHelper:
        if self.helper is None:
            access = self.gateway.access.get(self.username)
            if access is None:
                raise asyncssh.SFTPPermissionDenied("access has ended")
            if access.unix_user:  # a tenant: the host's files, with the account's rights
                self.helper = await SFTPHelper.start(user=access.unix_user)
                return self.helper
            pid = await self.gateway.container_pid(access.container)
            if not pid:
                raise asyncssh.SFTPNoSuchFile("the environment is not running")
            self.helper = await SFTPHelper.start(root=f"/proc/{pid}/root")
        return self.helper

    async def _call(self, operation: str, *arguments):
        return await (await self._helper()).call(operation, *arguments)

    async def open(self, path, pflags, attrs):
        fd = await (await self._helper()).open(path, pflags, attrs)
        self.files.add(fd)
        return fd

    def close(self, file_obj):
        self.files.discard(file_obj)
        os.close(file_obj)

    def read(self, file_obj, offset, size):
        return os.pread(file_obj, size, offset)

    def write(self, file_obj, offset, data):
        return os.pwrite(file_obj, data, offset)

    def fstat(self, file_obj):
        return os.fstat(file_obj)

    def fsetstat(self, file_obj, attrs):
        _apply_attrs(file_obj, attrs)

    def fstatvfs(self, file_obj):
        return os.fstatvfs(file_obj)

    def fsync(self, file_obj):
        os.fsync(file_obj)

    async def scandir(self, path):
        for name in await self._call("scandir", path):
            yield name

    async def lstat(self, path):
        return await self._call("lstat", path)

    async def stat(self, path):
        return await self._call("stat", path)

    async def setstat(self, path, attrs):
        return await self._call("setstat", path, attrs)

    async def lsetstat(self, path, attrs):
        return await self._call("lsetstat", path, attrs)

    async def remove(self, path):
        return await self._call("remove", path)

    async def mkdir(self, path, attrs):
        return await self._call("mkdir", path, attrs)

    async def rmdir(self, path):
        return await self._call("rmdir", path)

    async def realpath(self, path):
        return await self._call("realpath", path)

    async def rename(self, oldpath, newpath):
        return await self._call("rename", oldpath, newpath)

    async def posix_rename(self, oldpath, newpath):
        return await self._call("posix_rename", oldpath, newpath)

    async def readlink(self, path):
        return await self._call("readlink", path)

    async def symlink(self, oldpath, newpath):
        return await self._call("symlink", oldpath, newpath)

    async def link(self, oldpath, newpath):
        return await self._call("link", oldpath, newpath)

    async def statvfs(self, path):
        return await self._call("statvfs", path)

    def exit(self):
        for fd in self.files:
            os.close(fd)
        self.files.clear()
        if self.helper is not None:
            self.helper.close()
        # OpenSSH's scp and sftp read a missing exit status as failure: report success, as
        # sshd does when its sftp-server ends.
        if self.channel is not None and not self.channel.is_closing():
            self.channel.exit(0)


# Connections -----------------------------------------------------------------------------------


class _Connection(asyncssh.SSHServer):
    """One client connection: who it authenticated as, and with which key."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.username = ""
        self.fingerprint = ""

    def connection_made(self, conn):
        self.conn = conn

    def connection_lost(self, exc):
        self.gateway.connections.discard(self)

    def begin_auth(self, username):
        return True  # always ask for a key, whether or not the user name exists

    def password_auth_supported(self):
        return False

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        access = self.gateway.access.get(username)
        fingerprint = key.get_fingerprint("sha256")
        if access is None or fingerprint not in access.fingerprints:
            return False
        self.username, self.fingerprint = username, fingerprint
        self.gateway.connections.add(self)
        return True

    def allowed(self) -> Access | None:
        access = self.gateway.access.get(self.username)
        if access is None or self.fingerprint not in access.fingerprints:
            return None
        return access

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        access = self.allowed()
        if access is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "access to this environment has ended"
            )
        if dest_host.lower() not in LOOPBACK or not 0 < dest_port < 65536:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "only the environment's own ports can be forwarded: use localhost:PORT",
            )
        family = socket.AF_INET6 if dest_host == "::1" else socket.AF_INET
        return self._forward(access, dest_port, family)

    async def _forward(self, access: Access, port: int, family: int) -> _ForwardSession:
        pid = 0
        if not access.unix_user:
            pid = await self.gateway.container_pid(access.container)
            if not pid:
                raise asyncssh.ChannelOpenError(
                    asyncssh.OPEN_CONNECT_FAILED, "the environment is not running"
                )
        try:
            # A tenant's forwards reach the host's own loopback (the machine is theirs).
            sock = await (
                connect_in_container(pid, port, family) if pid else _connect_local(port, family)
            )
        except OSError as exc:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, f"port {port} in the environment: {exc.strerror}"
            ) from exc
        session = _ForwardSession()
        await asyncio.get_running_loop().create_connection(lambda: session.side, sock=sock)
        self.gateway.forwarded += 1
        return session


@dataclass
class Gateway:
    """The gateway's listener, its access map and its live connections."""

    docker: DockerAPI
    host_key_path: Path
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    access: dict[str, Access] = field(default_factory=dict)
    connections: set[_Connection] = field(default_factory=set)
    forwarded: int = 0

    def __post_init__(self):
        self.key = load_host_key(self.host_key_path)
        self.server: asyncssh.SSHAcceptor | None = None

    @property
    def public_key(self) -> str:
        return self.key.export_public_key().decode().strip()

    @property
    def fingerprint(self) -> str:
        return self.key.get_fingerprint("sha256")

    async def start(self) -> None:
        # asyncssh logs every connection and channel at INFO: the agent's log keeps its own.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self.server = await asyncssh.listen(
            self.host,
            self.port,
            server_factory=lambda: _Connection(self),
            server_host_keys=[self.key],
            process_factory=self._process,
            sftp_factory=lambda chan: GatewaySFTPServer(chan, self),
            allow_scp=True,
            encoding=None,
            line_editor=False,
            agent_forwarding=False,
            x11_forwarding=False,
            keepalive_interval=30,
            login_timeout=30,
        )
        if self.port == 0:
            self.port = self.server.sockets[0].getsockname()[1]
        logger.info("SSH gateway on port %d (host key %s)", self.port, self.fingerprint)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for connection in list(self.connections):
            if connection.conn is not None:
                connection.conn.close()

    async def container_pid(self, container: str) -> int:
        try:
            return await self.docker.container_pid(container)
        except DockerAPIError:
            return 0

    # Access ----------------------------------------------------------------------------------

    def set_access(
        self, entries: Iterable[GatewayAccess], tenants: Iterable[TenantAccess] = ()
    ) -> int:
        """Replace the access map; end the connections it no longer allows (their number)."""
        access = {
            user_name(entry.environment_id): Access(
                entry.environment_id, entry.container, frozenset(entry.fingerprints)
            )
            for entry in entries
        }
        for tenant in tenants:
            if TENANT_USER.fullmatch(tenant.user):
                access[tenant.user] = Access(0, "", frozenset(tenant.fingerprints), tenant.user)
        self.access = access
        ended = 0
        for connection in list(self.connections):
            if connection.allowed() is None and connection.conn is not None:
                logger.info(
                    "ending %s's session (key %s): access withdrawn",
                    connection.username,
                    connection.fingerprint,
                )
                connection.conn.close()
                self.connections.discard(connection)
                ended += 1
        return ended

    def sessions(self) -> list[int]:
        """Environments with a connection open now."""
        return sorted(
            {
                access.environment_id
                for connection in self.connections
                if (access := connection.allowed()) is not None and access.environment_id
            }
        )

    # Shells and commands ---------------------------------------------------------------------

    async def _process(self, process: asyncssh.SSHServerProcess) -> None:
        username = process.get_extra_info("username")
        access = self.access.get(username)
        if access is None:
            process.stderr.write(b"access has ended\r\n")
            process.exit(255)
            return
        if process.subsystem:
            process.stderr.write(f"subsystem {process.subsystem} is not offered\r\n".encode())
            process.exit(1)
            return
        tty = process.term_type is not None
        cols, rows = _clamped(*(process.term_size[:2] if tty else (0, 0)))
        try:
            if access.unix_user:  # a whole-machine tenant: on the host, as its account
                stream = await HostSession.start(
                    access.unix_user,
                    process.command,
                    term=process.term_type or "",
                    rows=rows,
                    cols=cols,
                )
            else:
                command = (
                    LOGIN_SHELL if process.command is None else ["/bin/sh", "-c", process.command]
                )
                env = {"TERM": process.term_type} if tty else {}
                stream = await self.docker.exec(
                    access.container, command, tty=tty, env=env, rows=rows, cols=cols
                )
        except (DockerAPIError, OSError, KeyError) as exc:
            process.stderr.write(f"cannot start a session: {exc}\r\n".encode())
            process.exit(255)
            return
        feeder = asyncio.ensure_future(self._feed(process, stream))
        status = None
        try:
            if tty:
                while data := await stream.read():
                    process.stdout.write(data)
                    await process.stdout.drain()
            else:
                async for kind, data in stream.frames():
                    target = process.stderr if kind == STDERR else process.stdout
                    target.write(data)
                    await target.drain()
            # The output ended: the process is ending by itself. Its status first, then close
            # (closing first would hang up on what it is still starting, a nohup'd job).
            status = await stream.exit_code()
        except (asyncssh.BreakReceived, asyncssh.SignalReceived, ConnectionError):
            pass
        finally:
            feeder.cancel()
            stream.close()
        process.exit(255 if status is None else status)

    async def _feed(self, process: asyncssh.SSHServerProcess, stream) -> None:
        """Client input to the session; window changes to its TTY; end of input to its stdin."""
        while True:
            try:
                data = await process.stdin.read(65536)
            except asyncssh.TerminalSizeChanged as change:
                cols, rows = _clamped(change.width, change.height)
                if cols and rows:
                    await stream.resize(rows, cols)
                continue
            except (asyncssh.BreakReceived, asyncssh.SignalReceived):
                continue
            if not data:
                stream.close_stdin()
                return
            stream.write(data)
            await stream.drain()


def _clamped(cols: int, rows: int) -> tuple[int, int]:
    """A window size to pass on, or (0, 0) for one that makes no sense (0 or 100,000 wide)."""
    if terminal_size_ok(cols, rows):
        return cols, rows
    return 0, 0
