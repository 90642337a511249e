"""The SSH side of onboarding: keys and fingerprints, the paramiko seam, and the shell the
server being onboarded runs. Nothing here touches the database."""

from __future__ import annotations

import base64
import codecs
import hashlib
import io
import shlex
import socket
import time
from collections.abc import Callable

import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.utils.translation import gettext as _

from remotegpu.core.errors import ValidationError

CONNECT_TIMEOUT = 15  # seconds, TCP connect and SSH negotiation


class SshSecret:
    """A password, or a private key with its optional passphrase. Its repr shows neither."""

    __slots__ = ("passphrase", "password", "private_key")

    def __init__(self, *, password: str = "", private_key: str = "", passphrase: str = ""):
        self.password = password
        self.private_key = private_key
        self.passphrase = passphrase

    def __repr__(self) -> str:
        return "SshSecret(<hidden>)"

    @property
    def values(self) -> list[str]:
        """What must never appear in stored output (short strings would redact too much)."""
        return [value for value in (self.password, self.passphrase) if len(value) >= 4]


# Keys --------------------------------------------------------------------------------------


def host_key_fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:`` and the unpadded base64 of the key's SHA-256, as ``ssh-keygen -lf`` prints."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


_KEY_CLASSES = (
    (rsa.RSAPrivateKey, paramiko.RSAKey),
    (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key),
    (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey),
)


def _invalid_key(message) -> ValidationError:
    return ValidationError.for_field("private_key", message)


def _load_private_key(data: bytes, password: bytes | None):
    for loader in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
        try:
            return loader(data, password)
        except (ValueError, UnsupportedAlgorithm):
            continue
    return None


def private_key_load(text: str, passphrase: str = "") -> paramiko.PKey:
    """A private key (OpenSSH or PEM text) as paramiko uses it; a ValidationError otherwise."""
    text = text.strip() + "\n"
    data = text.encode()
    password = passphrase.encode() or None
    try:
        loaded = _load_private_key(data, password)
    except TypeError as exc:  # encrypted without a passphrase, or a passphrase for a plain key
        if password is None:
            raise _invalid_key(_("This key is encrypted: give its passphrase.")) from exc
        loaded, passphrase = _load_private_key(data, None), ""
    if loaded is None:
        raise _invalid_key(
            _("This is not an OpenSSH or PEM private key, or the passphrase is wrong.")
        )
    key_class = next((cls for kind, cls in _KEY_CLASSES if isinstance(loaded, kind)), None)
    if key_class is None:
        raise _invalid_key(_("Only RSA, ECDSA and Ed25519 keys are supported."))
    try:
        return key_class.from_private_key(io.StringIO(text), password=passphrase or None)
    except (paramiko.SSHException, ValueError) as exc:
        raise _invalid_key(
            _("This private key cannot be used: %(error)s") % {"error": exc}
        ) from exc


# The SSH seam ------------------------------------------------------------------------------


class AuthenticationFailed(Exception):
    pass


class CommandTimedOut(Exception):
    pass


CONNECT_ERRORS = (OSError, paramiko.SSHException, EOFError)


def connect_error_reason(error: BaseException) -> str:
    if isinstance(error, socket.gaierror):
        return _("the address cannot be resolved")
    if isinstance(error, ConnectionRefusedError):
        return _("the connection was refused")
    if isinstance(error, TimeoutError):
        return _("the connection timed out")
    if isinstance(error, paramiko.SSHException | EOFError):
        return _("the SSH handshake failed: %(error)s") % {"error": error or type(error).__name__}
    return _("the connection failed: %(error)s") % {"error": error.strerror or error}


class SshConnection:
    """One paramiko transport to the server being onboarded.

    It trusts nothing by itself: a caller compares ``host_key()`` with what an operator
    confirmed before it calls ``authenticate``.
    """

    def __init__(self, address: str, port: int, *, timeout: float = CONNECT_TIMEOUT):
        sock = socket.create_connection((address, port), timeout=timeout)
        self.transport = paramiko.Transport(sock)
        try:
            self.transport.start_client(timeout=timeout)
        except BaseException:
            self.transport.close()
            raise

    def host_key(self) -> paramiko.PKey:
        return self.transport.get_remote_server_key()

    def authenticate(self, username: str, secret: SshSecret) -> None:
        try:
            if secret.private_key:
                key = private_key_load(secret.private_key, secret.passphrase)
                self.transport.auth_publickey(username, key)
            else:
                self.transport.auth_password(username, secret.password)
        except paramiko.AuthenticationException as exc:
            raise AuthenticationFailed from exc
        if not self.transport.is_authenticated():
            raise AuthenticationFailed

    def run(
        self,
        command: str,
        *,
        timeout: float,
        on_output: Callable[[str], None],
        stdin: str = "",
    ) -> int:
        """Run ``command`` (through the user's shell) with ``stdin`` on its standard input,
        then end of file, streaming stdout and stderr; its exit status. CommandTimedOut after
        ``timeout`` seconds. Secrets go on stdin: the command line is in the server's process
        list for anyone there to read."""
        deadline = time.monotonic() + timeout
        channel = self.transport.open_session(timeout=CONNECT_TIMEOUT)
        try:
            channel.set_combine_stderr(True)
            channel.settimeout(1.0)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin.encode())
            channel.shutdown_write()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            while True:
                try:
                    data = channel.recv(32768)
                except TimeoutError:
                    if time.monotonic() > deadline:
                        raise CommandTimedOut from None
                    continue
                if not data:
                    break
                on_output(decoder.decode(data))
            on_output(decoder.decode(b"", final=True))
            if not channel.status_event.wait(max(deadline - time.monotonic(), 1.0)):
                raise CommandTimedOut
            return channel.exit_status
        finally:
            channel.close()

    def close(self) -> None:
        self.transport.close()


# What runs on the server -------------------------------------------------------------------

PYTHON_CHECK = "python3 -c 'import sys; print(sys.version_info[:2])'"

DOCKER_CHECK = "docker --version"

# The agent in its own venv; its dependencies come from the host's configured package index.
INSTALL_SCRIPT = """set -e
dir="$HOME/.remotegpu-agent"
mkdir -p "$dir"
python3 -m venv "$dir/venv"
"$dir/venv/bin/python" -m pip uninstall --yes --quiet remotegpu-agent >/dev/null 2>&1 || true
"$dir/venv/bin/python" -m pip install --disable-pip-version-check --no-input "$wheel_url"
"$dir/venv/bin/remotegpu-agent" version
"""

# The join token comes on standard input (``--token -``), never on a command line.
JOIN_SCRIPT = """set -e
dir="$HOME/.remotegpu-agent"
"$dir/venv/bin/remotegpu-agent" join --server "$server_url" --token - \\
  --name "$name" --state-dir "$dir/state"
"""

# Exit statuses of ``remotegpu-agent run`` after which restarting cannot help (see
# docs/agent-protocol.md §6-7): 2, the configuration is missing or unusable; 3, the server
# refused the credential (revoked, host retired). The agent then stays stopped until the operator
# joins it again (or fixes it) and starts it.
AGENT_FINAL_EXIT_STATUSES = "2 3"

# The loop that keeps the agent running without systemd: it restarts it 5 s after it exits,
# except after a final status, when it logs why to agent.log and ends. Stop: kill its pid
# (agent.pid).
SUPERVISE_SCRIPT = """#!/bin/sh
# Keeps remotegpu-agent running: restarts it 5 s after it exits, but not after exit status 2
# (bad configuration) or 3 (credential refused). Stop: kill "$(cat agent.pid)".
dir="$HOME/.remotegpu-agent"
echo $$ > "$dir/agent.pid"
child=
stop() {
  if [ -n "$child" ]; then kill "$child" 2>/dev/null; wait "$child"; fi
  rm -f "$dir/agent.pid"
  exit 0
}
trap stop TERM INT HUP
while :; do
  "$dir/venv/bin/remotegpu-agent" run --state-dir "$dir/state" --log-file "$dir/agent.log" \\
    >/dev/null 2>&1 &
  child=$!
  status=0
  wait "$child" || status=$?
  child=
  case "$status" in
    2) why="its configuration is missing or unusable" ;;
    3) why="the server refused its credential; join again with a new token" ;;
    *) why= ;;
  esac
  if [ -n "$why" ]; then
    echo "$(date '+%Y-%m-%d %H:%M:%S') ERROR supervise.sh: remotegpu-agent exited with" \\
      "status $status, $why: not restarting it" >> "$dir/agent.log"
    rm -f "$dir/agent.pid"
    exit "$status"
  fi
  sleep 5 &
  wait $! || true
done
"""

# systemd where it runs and we are root; otherwise SUPERVISE_SCRIPT, detached from the SSH
# session, its pid in agent.pid (kill it to stop the agent). Either restarts the agent unless it
# exits with a final status.
START_SCRIPT = (
    """set -e
dir="$HOME/.remotegpu-agent"
if [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
then
  cat > /etc/systemd/system/remotegpu-agent.service <<UNIT
[Unit]
Description=RemoteGPU host agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$dir/venv/bin/remotegpu-agent run --state-dir $dir/state
Restart=always
RestartSec=5
RestartPreventExitStatus="""
    + AGENT_FINAL_EXIT_STATUSES
    + """

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable remotegpu-agent.service
  systemctl restart remotegpu-agent.service
  echo "started remotegpu-agent.service (systemd)"
  exit 0
fi
if [ -f "$dir/agent.pid" ] && kill -0 "$(cat "$dir/agent.pid")" 2>/dev/null; then
  kill "$(cat "$dir/agent.pid")" 2>/dev/null || true
  sleep 1
fi
cat > "$dir/supervise.sh" <<'LOOP'
"""
    + SUPERVISE_SCRIPT
    + """LOOP
chmod 700 "$dir/supervise.sh"
rm -f "$dir/agent.pid"
if command -v setsid >/dev/null 2>&1; then
  setsid nohup sh "$dir/supervise.sh" >/dev/null 2>&1 </dev/null &
else
  nohup sh "$dir/supervise.sh" >/dev/null 2>&1 </dev/null &
fi
for _ in 1 2 3 4 5 6 7 8 9 10; do
  [ -s "$dir/agent.pid" ] && break
  sleep 0.5
done
[ -s "$dir/agent.pid" ] || { echo "the supervisor did not start" >&2; exit 1; }
echo "started as a background process: supervisor pid $(cat "$dir/agent.pid"), $dir/supervise.sh"
"""
)

AGENT_LOG_TAIL = 'tail -n 20 "$HOME/.remotegpu-agent/agent.log" 2>/dev/null || true'


def shell_script(body: str, **variables: str) -> str:
    """``body`` with shell variables set first, each value quoted."""
    lines = [f"{name}={shlex.quote(value)}" for name, value in variables.items()]
    return "\n".join([*lines, body])
