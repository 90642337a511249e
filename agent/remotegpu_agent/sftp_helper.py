"""The SSH gateway's file-system worker: one process per SFTP session, confined by the kernel.

SFTP names paths, and a path inside an environment has to be resolved the way the container
resolves it: ``/workspace`` is its volume, and a symbolic link to ``/etc/shadow`` written by
anyone in the container must mean the container's ``/etc/shadow``, never the host's. Mapping
paths in Python (asyncssh's ``chroot``) follows links out of the tree. So the gateway starts
this helper, which ``chroot``\\s into ``/proc/<pid>/root`` (the container's root with its
mounts, as its first process sees them) and resolves every path there. For a whole-machine
tenant it instead becomes the tenant's Unix user, so the host's permissions apply.

The gateway sends ``(operation, arguments)`` and gets back ``("ok", value)`` or
``("error", (kind, ...))``, pickled and length-prefixed over a Unix socket pair. ``open`` answers
with the open file's descriptor (``SCM_RIGHTS``): reads and writes, the bulk of a transfer, go
straight to the file from the gateway without a hop through here. Path operations are
asyncssh's own local ``SFTPServer`` methods, run inside the confinement.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import pwd
import socket
import struct
import sys

import asyncssh
from asyncssh.sftp import SFTPName

HEADER = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024
# The path operations the gateway may ask for; anything else is refused.
PATH_OPERATIONS = frozenset(
    {
        "lstat",
        "stat",
        "setstat",
        "lsetstat",
        "remove",
        "mkdir",
        "rmdir",
        "realpath",
        "rename",
        "posix_rename",
        "readlink",
        "symlink",
        "link",
        "statvfs",
    }
)
HOMES = ("/workspace", "/root")


def send_message(sock: socket.socket, value, fds: list[int] | None = None) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    payload = HEADER.pack(len(data)) + data
    if fds:
        socket.send_fds(sock, [payload[: HEADER.size]], fds)
        sock.sendall(payload[HEADER.size :])
    else:
        sock.sendall(payload)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise EOFError("the other end closed")
        chunks += chunk
    return bytes(chunks)


def receive_raw(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message's bytes and any descriptors that came with it."""
    header, fds, _flags, _address = socket.recv_fds(sock, HEADER.size, 4)
    if not header:
        raise EOFError("the other end closed")
    if len(header) < HEADER.size:
        header += _receive_exactly(sock, HEADER.size - len(header))
    (size,) = HEADER.unpack(header)
    if size > MAX_MESSAGE:
        raise EOFError("message too large")
    return _receive_exactly(sock, size), list(fds)


class Worker:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.server = asyncssh.SFTPServer(None)  # type: ignore[arg-type]
        self.loop = asyncio.new_event_loop()

    def scandir(self, path: bytes) -> list[SFTPName]:
        async def collect():
            return [name async for name in self.server.scandir(path)]

        return self.loop.run_until_complete(collect())

    def handle(self, operation: str, arguments: tuple):
        """``(value, file)``: the answer, and a file whose descriptor goes with it."""
        if operation == "open":
            return None, self.server.open(*arguments)
        if operation == "scandir":
            return self.scandir(*arguments), None
        if operation in PATH_OPERATIONS:
            return getattr(self.server, operation)(*arguments), None
        raise asyncssh.SFTPOpUnsupported(f"{operation} is not supported")

    def serve(self) -> None:
        while True:
            try:
                data, _ = receive_raw(self.sock)
            except (EOFError, ConnectionError):
                return
            operation, arguments = pickle.loads(data)  # noqa: S301 - from the gateway, our parent
            try:
                value, file = self.handle(operation, arguments)
            except (OSError, asyncssh.SFTPError) as exc:
                send_message(self.sock, ("error", _portable(exc)))
                continue
            except Exception as exc:
                send_message(self.sock, ("error", asyncssh.SFTPFailure(str(exc)[:200])))
                continue
            if file is None:
                send_message(self.sock, ("ok", value))
            else:
                with file:  # the gateway holds its own copy of the descriptor once sent
                    send_message(self.sock, ("ok", value), [file.fileno()])


def _portable(exc: Exception) -> tuple:
    """An error as plain values: ``("sftp", code, reason)`` or ``("os", errno, text, path)``."""
    if isinstance(exc, asyncssh.SFTPError):
        return ("sftp", exc.code, str(exc.reason))
    filename = exc.filename if isinstance(exc.filename, str | bytes) else None
    return ("os", exc.errno, exc.strerror or str(exc), filename)


def confine(root: str | None, user: str | None) -> None:
    """Enter the container's root, or become the tenant; then start in a sensible folder."""
    if root:
        os.chroot(root)
        home = next((path for path in HOMES if os.path.isdir(path)), "/")
        os.chdir(home)
    if user:
        account = pwd.getpwnam(user)
        os.initgroups(user, account.pw_gid)
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)
        os.chdir(account.pw_dir if os.path.isdir(account.pw_dir) else "/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="remotegpu_agent.sftp_helper")
    parser.add_argument("--fd", type=int, required=True)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--root", help="chroot here (a container's /proc/<pid>/root)")
    target.add_argument("--user", help="become this Unix user (a whole-machine tenant)")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    try:
        confine(args.root, args.user)
    except OSError as exc:
        send_message(
            sock, ("error", ("os", exc.errno, f"cannot open the file system: {exc}", None))
        )
        return 1
    send_message(sock, ("ok", "ready"))
    Worker(sock).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
