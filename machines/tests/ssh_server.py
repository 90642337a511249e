"""An in-process SSH server (paramiko's server mode) on a loopback port: the other side of the
onboarding's SSH seam for unit tests. Real SSH on the wire (key exchange, host key, password
and public-key authentication, exec channels); the commands are answered by a Python callable
instead of a shell."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.db import connections

# (command, what the client sent on its standard input) -> (exit status, output)
Responder = Callable[[str, str], tuple[int, str]]


def ed25519_key() -> paramiko.Ed25519Key:
    """A fresh Ed25519 key as paramiko holds it (paramiko cannot generate Ed25519 itself)."""
    return paramiko.Ed25519Key.from_private_key(io.StringIO(ed25519_private_pem()))


def ed25519_private_pem(passphrase: str = "") -> str:
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption)
        .decode()
    )


class _Interface(paramiko.ServerInterface):
    def __init__(self, server: FakeSshServer):
        self.server = server

    def get_allowed_auths(self, username):
        return "password,publickey"

    def check_auth_password(self, username, password):
        self.server.auth_attempts.append((username, "password"))
        if self.server.password is not None and (username, password) == (
            self.server.username,
            self.server.password,
        ):
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_auth_publickey(self, username, key):
        self.server.auth_attempts.append((username, "publickey"))
        allowed = self.server.public_key
        if (
            allowed is not None
            and username == self.server.username
            and key.asbytes() == allowed.asbytes()
        ):
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        text = command.decode()
        self.server.commands.append(text)
        threading.Thread(target=self.server.answer, args=(channel, text), daemon=True).start()
        return True


class FakeSshServer:
    """Accepts SSH connections on 127.0.0.1:``port``. ``host_key`` is read per connection, so
    replacing it makes the next connection present another key."""

    def __init__(
        self,
        respond: Responder,
        *,
        username: str = "root",
        password: str | None = None,
        public_key: paramiko.PKey | None = None,
    ):
        self.respond = respond
        self.username = username
        self.password = password
        self.public_key = public_key
        self.host_key = ed25519_key()
        self.auth_attempts: list[tuple[str, str]] = []
        self.commands: list[str] = []
        self._transports: list[paramiko.Transport] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._closed = threading.Event()
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            transport = paramiko.Transport(client)
            transport.add_server_key(self.host_key)
            self._transports.append(transport)
            try:
                transport.start_server(server=_Interface(self))
            except (paramiko.SSHException, EOFError, OSError):
                transport.close()

    def answer(self, channel: paramiko.Channel, command: str) -> None:
        try:
            stdin = channel.makefile("rb").read().decode()  # until the client's EOF
            status, output = self.respond(command, stdin)
            if output:
                channel.sendall(output.encode())
            channel.send_exit_status(status)
            # EOF, then let the client close: closing first could beat the exec request's
            # reply, which the client would read as a closed channel.
            channel.shutdown_write()
            deadline = time.monotonic() + 10
            while not channel.closed and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            channel.close()
            connections.close_all()  # this thread's database connections, if it opened any

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for transport in self._transports:
            transport.close()
