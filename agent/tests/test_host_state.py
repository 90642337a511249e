"""Host facts and figures; the state folder (config mode, status, lock, command store)."""

from __future__ import annotations

import os
import platform
import socket
import stat

import pytest

from remotegpu_agent import __version__, host
from remotegpu_agent.state import (
    AgentConfig,
    AgentStatus,
    CommandStore,
    StateDir,
    StateError,
    default_state_dir,
)

# Host ---------------------------------------------------------------------------------------


def test_host_facts_describe_this_machine():
    facts = host.host_facts("/", gpu_backend="fake")
    assert facts.hostname == socket.gethostname()
    assert facts.cpu_model
    assert facts.cpu_cores == os.cpu_count()
    assert facts.memory_total > 2**28
    assert facts.disk_total == os.statvfs("/").f_blocks * os.statvfs("/").f_frsize
    assert facts.os
    assert facts.kernel == platform.release()
    assert facts.agent_version == __version__
    assert facts.gpu_backend == "fake"
    assert isinstance(facts.docker_version, str)


def test_host_sample_is_sane():
    sample = host.host_sample("/")
    assert 0 <= sample.cpu_percent <= 100
    assert 0 < sample.memory_used <= sample.memory_total
    assert 0 < sample.disk_used <= sample.disk_total
    assert sample.load1 >= 0


def test_cpu_model_and_os_name_come_from_their_files(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9654\n")
    assert host.cpu_model(cpuinfo) == "AMD EPYC 9654"
    os_release = tmp_path / "os-release"
    os_release.write_text('NAME="Ubuntu"\nPRETTY_NAME="Ubuntu 24.04.1 LTS"\nID=ubuntu\n')
    assert host.os_name(os_release) == "Ubuntu 24.04.1 LTS"
    # Missing files fall back to what the platform module says.
    assert host.cpu_model(tmp_path / "missing") in (platform.processor(), platform.machine())
    assert host.os_name(tmp_path / "missing") == platform.platform()


def _fake_docker(tmp_path, monkeypatch, script: str) -> None:
    docker = tmp_path / "docker"
    docker.write_text(f"#!/bin/sh\n{script}\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(host, "_docker_cache", None)


def test_docker_version_asks_the_daemon(tmp_path, monkeypatch):
    _fake_docker(
        tmp_path, monkeypatch, 'test "$*" = "version --format {{.Server.Version}}" && echo 27.3.1'
    )
    assert host.docker_version() == "27.3.1"


def test_docker_version_is_empty_without_a_daemon_or_when_it_hangs(tmp_path, monkeypatch):
    _fake_docker(tmp_path, monkeypatch, "echo 'Cannot connect to the Docker daemon' >&2; exit 1")
    assert host.docker_version() == ""
    _fake_docker(tmp_path, monkeypatch, "exec sleep 5")
    monkeypatch.setattr(host, "DOCKER_TIMEOUT", 0.2)
    assert host.docker_version() == ""


# State folder -------------------------------------------------------------------------------


def test_default_state_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("REMOTEGPU_AGENT_STATE_DIR", str(tmp_path / "here"))
    assert default_state_dir() == tmp_path / "here"
    monkeypatch.delenv("REMOTEGPU_AGENT_STATE_DIR")
    expected = "/var/lib/remotegpu-agent" if os.geteuid() == 0 else "remotegpu-agent"
    assert str(default_state_dir()).endswith(expected)


def _config(**overrides) -> AgentConfig:
    values = {
        "server_url": "http://127.0.0.1:8000",
        "websocket_url": "ws://127.0.0.1:8000/agent/ws/",
        "host_id": 7,
        "host_name": "gpu-01",
        "credential": "rhc_secret",
    }
    return AgentConfig(**{**values, **overrides})


def test_config_is_private_and_round_trips(tmp_path):
    state = StateDir(tmp_path / "state")
    old_umask = os.umask(0)  # even a careless umask does not widen it
    try:
        state.save_config(_config())
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(state.config_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    assert state.load_config() == _config()
    state.save_config(_config(credential="rhc_new"))
    assert stat.S_IMODE(state.config_path.stat().st_mode) == 0o600
    assert state.load_config().credential == "rhc_new"
    assert [p.name for p in state.path.iterdir()] == ["config.json"]  # no temporary file left


def test_missing_config_says_how_to_join(tmp_path):
    with pytest.raises(StateError, match="remotegpu-agent join"):
        StateDir(tmp_path).load_config()


def test_status_round_trips(tmp_path):
    state = StateDir(tmp_path)
    assert state.load_status() is None
    status = AgentStatus(pid=123, started_at="2025-01-01T00:00:00+00:00", connected=True)
    state.save_status(status)
    assert state.load_status() == status


def test_one_agent_per_state_folder(tmp_path):
    state = StateDir(tmp_path)
    held = state.lock()
    try:
        with pytest.raises(StateError, match=f"pid {os.getpid()}"):
            StateDir(tmp_path).lock()
    finally:
        held.close()
    StateDir(tmp_path).lock().close()  # free again once released


def test_command_store_remembers_across_restarts(tmp_path):
    path = tmp_path / "commands.sqlite3"
    store = CommandStore(path)
    assert store.get("c1") is None
    assert store.start("c1", "ping") is True
    assert store.start("c1", "ping") is False  # a resend
    running = store.get("c1")
    assert running.kind == "ping"
    assert running.finished is False
    store.finish("c1", True, {"pong": True}, "")
    store.start("c2", "collect_diagnostics")
    store.close()

    store = CommandStore(path)  # the agent restarted
    done = store.get("c1")
    assert (done.finished, done.ok, done.result, done.error) == (True, True, {"pong": True}, "")
    assert store.fail_interrupted() == 1
    interrupted = store.get("c2")
    assert (interrupted.finished, interrupted.ok) == (True, False)
    assert "not run again" in interrupted.error
    assert store.get("c1").ok is True
    store.close()


def test_an_interrupted_idempotent_command_is_forgotten_so_its_resend_runs(tmp_path):
    path = tmp_path / "commands.sqlite3"
    store = CommandStore(path)
    store.start("run", "environment_run")
    store.start("diag", "collect_diagnostics")
    store.close()

    store = CommandStore(path)  # the agent was killed while both ran
    assert store.fail_interrupted(frozenset({"environment_run"})) == 1
    assert store.get("run") is None  # the resend will run it again
    assert store.get("diag").ok is False
    store.close()
