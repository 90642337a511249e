"""The state folder's modes: the folder 0700 (also when it already exists), config.json and
the command store's SQLite files 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from remotegpu_agent.state import CommandStore, StateDir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def careless_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("existing", [0o755, 0o777, 0o500], ids=oct)
def test_ensure_makes_an_existing_folder_private(tmp_path, careless_umask, existing):
    folder = tmp_path / "state"
    folder.mkdir()
    folder.chmod(existing)
    StateDir(folder).ensure()
    assert _mode(folder) == 0o700


def test_ensure_makes_a_new_folder_private_under_any_umask(tmp_path):
    old = os.umask(0o277)  # would make the folder 0500: the agent could not write in it
    try:
        StateDir(tmp_path / "a" / "state").ensure()
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a" / "state") == 0o700


def test_ensure_leaves_a_folder_it_does_not_own_alone(tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o755)
    owner = folder.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    StateDir(folder).ensure()
    assert _mode(folder) == 0o755


def test_the_command_store_is_private(tmp_path, careless_umask):
    state = StateDir(tmp_path / "state")
    state.ensure()
    store = CommandStore(state.commands_path)
    store.start("c1", "ping")
    assert _mode(state.commands_path) == 0o600
    # SQLite gives its side files the database's mode.
    store._db.execute("PRAGMA journal_mode=WAL")
    store.finish("c1", True, {"pong": True}, "")
    wal = state.path / "commands.sqlite3-wal"
    assert wal.exists()
    assert _mode(wal) == 0o600
    store.close()


def test_an_existing_command_store_and_its_journal_are_made_private(tmp_path, careless_umask):
    state = StateDir(tmp_path / "state")
    state.ensure()
    CommandStore(state.commands_path).close()  # as an older agent left it
    state.commands_path.chmod(0o644)
    journal = state.path / "commands.sqlite3-journal"
    journal.touch(0o644)

    store = CommandStore(state.commands_path)

    assert _mode(state.commands_path) == 0o600
    assert not journal.exists() or _mode(journal) == 0o600
    assert store.start("c1", "ping") is True
    store.close()
