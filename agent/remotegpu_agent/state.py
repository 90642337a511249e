"""What the agent keeps on disk, all in one state folder (mode 0700, reset on every use when
the folder is ours).

- ``config.json`` (mode 0600): where the server is and the host's credential, written by
  ``join``.
- ``status.json``: what the running agent is doing, for ``remotegpu-agent status``.
- ``commands.sqlite3`` (mode 0600, as its -journal/-wal/-shm files): the commands already run
  and their results, so a command the server resends after a reconnect is answered again
  without running twice.
- ``agent.lock``: held by the running agent, so two agents never share one folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import stat
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "REMOTEGPU_AGENT_STATE_DIR"


class StateError(Exception):
    """The state folder is missing something or holds something unreadable."""


def default_state_dir() -> Path:
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    if os.geteuid() == 0:
        return Path("/var/lib/remotegpu-agent")
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "remotegpu-agent"


def write_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` atomically; the file never exists, even briefly, with a wider mode."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(descriptor, mode)  # the umask may have narrowed it; make it exactly ``mode``
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink()
        raise
    os.replace(temporary, path)


def restrict_mode(path: Path, mode: int) -> None:
    """Give ``path`` exactly ``mode`` if it exists and belongs to this user (a folder someone
    else owns, such as a shared parent, is left as it is)."""
    try:
        info = os.stat(path)
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
            os.chmod(path, mode)
    except FileNotFoundError:  # a journal SQLite has just removed
        pass


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@dataclass
class AgentConfig:
    server_url: str
    websocket_url: str
    host_id: int
    host_name: str
    credential: str
    heartbeat_interval: int = 15


@dataclass
class AgentStatus:
    pid: int
    started_at: str
    server: str = ""
    state: str = "starting"  # starting, connecting, connected, waiting, refused, stopped
    connected: bool = False
    connected_since: str | None = None
    last_heartbeat_at: str | None = None
    heartbeat_interval: float = 0
    last_error: str = ""


class StateDir:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else default_state_dir()

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def commands_path(self) -> Path:
        return self.path / "commands.sqlite3"

    @property
    def lock_path(self) -> Path:
        return self.path / "agent.lock"

    def ensure(self) -> None:
        """The folder exists with mode 0700, also one an older agent or a careless umask left
        wider (or narrower)."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        restrict_mode(self.path, 0o700)

    # config.json

    def save_config(self, config: AgentConfig) -> None:
        self.ensure()
        write_file(self.config_path, json.dumps(asdict(config), indent=2) + "\n", 0o600)

    def load_config(self) -> AgentConfig:
        try:
            data = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise StateError(
                f"this host has not joined a server ({self.config_path} does not exist); "
                "run `remotegpu-agent join --server URL --token TOKEN` first"
            ) from None
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {self.config_path}: {exc}") from exc
        known = {f.name for f in fields(AgentConfig)}
        try:
            return AgentConfig(**{key: value for key, value in data.items() if key in known})
        except TypeError as exc:
            raise StateError(f"{self.config_path} is incomplete: {exc}") from exc

    # status.json

    def save_status(self, status: AgentStatus) -> None:
        self.ensure()
        write_file(self.status_path, json.dumps(asdict(status), indent=2) + "\n", 0o644)

    def load_status(self) -> AgentStatus | None:
        try:
            data = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None
        known = {f.name for f in fields(AgentStatus)}
        try:
            return AgentStatus(**{key: value for key, value in data.items() if key in known})
        except TypeError:
            return None

    # agent.lock

    def lock(self):
        """Hold the folder for this process; ``StateError`` names the holder if another has it.
        The lock goes with the process, however it ends."""
        self.ensure()
        handle = open(self.lock_path, "a+")  # noqa: SIM115 - held for the process's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StateError(f"another agent (pid {holder}) is running on {self.path}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle


@dataclass
class StoredCommand:
    command_id: str
    kind: str
    finished: bool
    ok: bool
    result: dict[str, Any]
    error: str


class CommandStore:
    """Command ids the agent has started, with their results once finished.

    Commands are durable server-side and resent after every reconnect; this is how the agent
    tells a resend from a new command. Rows older than ``KEEP_SECONDS`` are dropped on open.
    """

    KEEP_SECONDS = 30 * 24 * 3600
    INTERRUPTED = "the agent stopped while this command was running; it was not run again"

    SIDE_FILES = ("-journal", "-wal", "-shm")

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        # Created 0600 before SQLite opens it (SQLite would use 0644); SQLite gives its journal
        # files the database's mode. Files an older agent left wider are narrowed.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        restrict_mode(path, 0o600)
        for suffix in self.SIDE_FILES:
            restrict_mode(path.with_name(path.name + suffix), 0o600)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS commands ("
            " command_id TEXT PRIMARY KEY, kind TEXT NOT NULL, started_at REAL NOT NULL,"
            " finished_at REAL, ok INTEGER, result TEXT, error TEXT)"
        )
        self._db.execute(
            "DELETE FROM commands WHERE started_at < ?", (time.time() - self.KEEP_SECONDS,)
        )

    def close(self) -> None:
        self._db.close()

    def get(self, command_id: str) -> StoredCommand | None:
        row = self._db.execute(
            "SELECT command_id, kind, finished_at, ok, result, error FROM commands"
            " WHERE command_id = ?",
            (command_id,),
        ).fetchone()
        if row is None:
            return None
        return StoredCommand(
            command_id=row[0],
            kind=row[1],
            finished=row[2] is not None,
            ok=bool(row[3]),
            result=json.loads(row[4]) if row[4] else {},
            error=row[5] or "",
        )

    def start(self, command_id: str, kind: str) -> bool:
        """Record that the command starts now; False if it was started before."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO commands (command_id, kind, started_at) VALUES (?, ?, ?)",
            (command_id, kind, time.time()),
        )
        return cursor.rowcount == 1

    def finish(self, command_id: str, ok: bool, result: dict[str, Any], error: str) -> None:
        self._db.execute(
            "UPDATE commands SET finished_at = ?, ok = ?, result = ?, error = ?"
            " WHERE command_id = ?",
            (time.time(), int(ok), json.dumps(result), error, command_id),
        )

    def fail_interrupted(self, rerunnable: frozenset[str] = frozenset()) -> int:
        """Commands a previous run started and never finished fail rather than run twice;
        those of a ``rerunnable`` kind (idempotent: running one again finds what the first
        try made) are forgotten instead, so that the server's resend runs them again."""
        kinds = sorted(rerunnable)
        marks = ",".join("?" * len(kinds)) or "''"
        self._db.execute(
            f"DELETE FROM commands WHERE finished_at IS NULL AND kind IN ({marks})",  # noqa: S608
            kinds,
        )
        cursor = self._db.execute(
            "UPDATE commands SET finished_at = ?, ok = 0, result = '{}', error = ?"
            " WHERE finished_at IS NULL",
            (time.time(), self.INTERRUPTED),
        )
        return cursor.rowcount
