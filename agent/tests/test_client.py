"""The run loop against a real WebSocket server standing in for the control plane.

The stand-in parses everything it receives with ``protocol.parse``, exactly as the server does,
so a message the agent shapes wrongly fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import threading
import time
from http import HTTPStatus

import pytest
from websockets.asyncio.server import serve

from remotegpu_agent import cli, commands
from remotegpu_agent.client import Agent, backoff_delays
from remotegpu_agent.gpu import FakeBackend
from remotegpu_agent.protocol import (
    Command,
    CommandAck,
    CommandResult,
    ContainerInfo,
    Heartbeat,
    Inventory,
    Welcome,
    dump,
    parse,
)
from remotegpu_agent.state import AgentConfig, AgentStatus, StateDir

HOST = "127.0.0.1"
CREDENTIAL = "rhc_test_credential"


class ControlPlane:
    """Welcomes each connection, then follows ``script(plane, connection, session)``."""

    def __init__(self, script, refuse_handshake: HTTPStatus | None = None) -> None:
        self.script = script
        self.refuse_handshake = refuse_handshake
        self.handshakes: list[str | None] = []
        self.sessions = 0
        self.messages: list[tuple[int, object]] = []
        self.done = asyncio.Event()
        self.port = 0

    def process_request(self, connection, request):
        self.handshakes.append(request.headers.get("Authorization"))
        if self.refuse_handshake is not None:
            return connection.respond(self.refuse_handshake, "credential revoked\n")
        return None

    async def handler(self, connection) -> None:
        self.sessions += 1
        session = self.sessions
        await connection.send(dump(Welcome(host_id=7, host_name="gpu-01", heartbeat_interval=15)))
        await self.script(self, connection, session)

    async def receive_until(self, connection, session: int, predicate) -> object:
        """Record messages until one satisfies ``predicate``; return that one."""
        while True:
            message = parse(await connection.recv())
            self.messages.append((session, message))
            if predicate(message):
                return message

    def of(self, kind, session: int | None = None) -> list:
        return [
            message
            for number, message in self.messages
            if isinstance(message, kind) and session in (None, number)
        ]


@contextlib.asynccontextmanager
async def control_plane(script, **options):
    plane = ControlPlane(script, **options)
    async with serve(plane.handler, HOST, 0, process_request=plane.process_request) as server:
        plane.port = server.sockets[0].getsockname()[1]
        yield plane


def _state(tmp_path, port: int) -> tuple[StateDir, AgentConfig]:
    state = StateDir(tmp_path / "state")
    config = AgentConfig(
        server_url=f"http://{HOST}:{port}",
        websocket_url=f"ws://{HOST}:{port}/agent/ws/",
        host_id=7,
        host_name="gpu-01",
        credential=CREDENTIAL,
    )
    state.save_config(config)
    return state, config


def _agent(tmp_path, port: int, backend=None) -> Agent:
    state, config = _state(tmp_path, port)
    return Agent(
        config,
        state,
        backend or FakeBackend(count=2, seed=1),
        heartbeat_interval=0.2,
        initial_backoff=0.05,
    )


async def _run_until_done(plane: ControlPlane, agent: Agent, timeout: float = 15) -> int:
    run = asyncio.ensure_future(agent.run(handle_signals=False))
    finished, _ = await asyncio.wait(
        [run, asyncio.ensure_future(plane.done.wait())],
        timeout=timeout,
        return_when=asyncio.FIRST_COMPLETED,
    )
    assert finished, "the scenario did not finish in time"
    if run not in finished:
        agent.stop()
    return await asyncio.wait_for(run, 5)


def is_result(command_id):
    return lambda message: isinstance(message, CommandResult) and message.command_id == command_id


def test_backoff_is_jittered_exponential_from_1_to_60_seconds():
    delays = backoff_delays()
    first = [next(delays) for _ in range(12)]
    assert first[0] == 1.0
    for attempt, delay in enumerate(first[1:], start=1):
        ceiling = min(60.0, 2.0**attempt)
        assert ceiling / 2 <= delay <= ceiling
    assert max(first) <= 60
    assert first[-1] >= 30
    assert len({round(delay, 6) for delay in first[7:]}) > 1  # jittered, not lockstep


def test_reports_and_runs_a_resent_command_once(tmp_path, monkeypatch):
    executions = []
    ping = commands.HANDLERS["ping"]

    def counted_ping(payload, context):
        executions.append(payload)
        return ping(payload, context)

    monkeypatch.setitem(commands.HANDLERS, "ping", counted_ping)
    command = Command(command_id="cmd-1", kind="ping", deadline=time.time() + 60)

    async def script(plane, connection, session):
        if session == 1:
            count = 0

            def third_heartbeat(message):
                nonlocal count
                count += isinstance(message, Heartbeat)
                return count == 3

            await plane.receive_until(connection, session, third_heartbeat)
            await connection.send(dump(command))
            await plane.receive_until(connection, session, is_result("cmd-1"))
            await connection.close(1012, "server restart")
        else:
            await plane.receive_until(connection, session, lambda m: isinstance(m, Heartbeat))
            await connection.send(dump(command))  # resent after the reconnect
            await plane.receive_until(connection, session, is_result("cmd-1"))
            plane.done.set()
            await connection.wait_closed()

    async def scenario():
        async with control_plane(script) as plane:
            agent = _agent(tmp_path, plane.port)
            return plane, agent, await _run_until_done(plane, agent)

    plane, agent, exit_status = asyncio.run(scenario())

    assert exit_status == 0
    assert plane.handshakes == [f"Bearer {CREDENTIAL}"] * 2
    for session in (1, 2):
        received = [message for number, message in plane.messages if number == session]
        assert isinstance(received[0], Inventory)  # inventory first, on every connection
        assert len(received[0].gpus) == 2
        assert received[0].facts.gpu_backend == "fake"
        assert received[0].facts.heartbeat_interval == 0.2  # its own, not the welcome's 15
        assert len(plane.of(Inventory, session)) == 1  # unchanged: not resent
        kinds = [type(message) for message in received]
        assert kinds.index(CommandAck) < kinds.index(CommandResult)

    heartbeats = plane.of(Heartbeat, 1)
    assert len(heartbeats) == 3
    assert all(len(heartbeat.gpus) == 2 for heartbeat in heartbeats)
    # Paced by the interval (0.2 s): neither a burst nor a stall.
    times = [heartbeat.time for heartbeat in heartbeats]
    assert times[-1] - times[0] >= 0.25, times
    assert all(later - earlier < 2 for earlier, later in itertools.pairwise(times)), times

    assert [ack.command_id for ack in plane.of(CommandAck)] == ["cmd-1", "cmd-1"]
    first, second = plane.of(CommandResult)
    assert first.ok is True
    assert first.result["pong"] is True
    assert second.result == first.result  # the stored result, not a second run
    assert len(executions) == 1
    assert len({message.id for _, message in plane.messages}) == len(plane.messages)

    status = agent.state.load_status()
    assert (status.state, status.connected, status.connected_since) == ("stopped", False, None)
    assert status.last_heartbeat_at is not None


def test_inventory_is_resent_when_it_changes(tmp_path):
    control = tmp_path / "control.json"

    async def script(plane, connection, session):
        await plane.receive_until(connection, session, lambda m: isinstance(m, Heartbeat))
        await plane.receive_until(connection, session, lambda m: isinstance(m, Heartbeat))
        control.write_text(json.dumps({"count": 3}))
        await plane.receive_until(connection, session, lambda m: isinstance(m, Inventory))
        await plane.receive_until(connection, session, lambda m: isinstance(m, Heartbeat))
        plane.done.set()
        await connection.wait_closed()

    async def scenario():
        async with control_plane(script) as plane:
            agent = _agent(tmp_path, plane.port, FakeBackend(count=2, control_file=control))
            return plane, await _run_until_done(plane, agent)

    plane, exit_status = asyncio.run(scenario())
    assert exit_status == 0
    first, second = plane.of(Inventory)
    assert len(first.gpus) == 2
    assert len(second.gpus) == 3
    assert [gpu.uuid for gpu in second.gpus[:2]] == [gpu.uuid for gpu in first.gpus]
    assert isinstance(plane.messages[-2][1], Inventory)  # before the heartbeat that needs it
    assert len(plane.of(Heartbeat)[-1].gpus) == 3


@pytest.mark.parametrize(
    ("refuse_handshake", "close_code"),
    [
        (HTTPStatus.UNAUTHORIZED, None),
        (HTTPStatus.FORBIDDEN, None),
        (None, 4401),
        (None, 4403),
    ],
)
def test_a_refused_credential_stops_the_agent_with_status_3(tmp_path, refuse_handshake, close_code):
    async def script(plane, connection, session):
        await plane.receive_until(connection, session, lambda m: isinstance(m, Inventory))
        await connection.close(close_code, "host credential revoked")

    async def scenario():
        async with control_plane(script, refuse_handshake=refuse_handshake) as plane:
            agent = _agent(tmp_path, plane.port)
            exit_status = await _run_until_done(plane, agent)
            await asyncio.sleep(0.3)  # time enough for a retry, were there one
            return plane, agent, exit_status

    plane, agent, exit_status = asyncio.run(scenario())
    assert exit_status == 3
    assert len(plane.handshakes) == 1  # no hammering
    status = agent.state.load_status()
    assert (status.state, status.connected) == ("refused", False)
    expected = str(close_code) if close_code else f"HTTP {refuse_handshake.value}"
    assert expected in status.last_error
    assert "revoked" in status.last_error


# The real command, in its own process ------------------------------------------------------


async def _status() -> tuple[int, dict]:
    """``remotegpu-agent status --json``, as a separate process would see it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "remotegpu_agent",
        "status",
        "--json",
        "--state-dir",
        os.environ["AGENT_TEST_STATE_DIR"],
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    return process.returncode, json.loads(stdout)


async def _eventually(check, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def _start_agent(state: StateDir, *extra: str):
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "remotegpu_agent",
        "run",
        "--state-dir",
        str(state.path),
        "--gpu-backend",
        "fake",
        "--heartbeat-interval",
        "0.2",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _listen(plane, connection, session):
    with contextlib.suppress(Exception):
        await plane.receive_until(connection, session, lambda message: False)


def test_status_tells_the_truth_about_a_running_agent(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGENT_TEST_STATE_DIR", str(tmp_path / "state"))
    log_file = tmp_path / "agent.log"

    async def connected_status():
        code, report = await _status()
        return (code, report) if report["connected"] and report["last_heartbeat_at"] else None

    async def disconnected_status():
        code, report = await _status()
        return (code, report) if report["running"] and not report["connected"] else None

    async def scenario():
        async with control_plane(_listen) as plane:
            state, _ = _state(tmp_path, plane.port)
            process = await _start_agent(state, "--log-file", str(log_file))
            try:
                connected = await _eventually(connected_status)
            except AssertionError:
                process.kill()
                raise AssertionError((await process.communicate())[1].decode()) from None
        # The control plane is gone: still running, no longer connected.
        disconnected = await _eventually(disconnected_status)
        process.send_signal(signal.SIGTERM)
        exit_status = await asyncio.wait_for(process.wait(), 10)
        return process.pid, connected, disconnected, exit_status, await _status()

    pid, connected, disconnected, exit_status, stopped = asyncio.run(scenario())

    code, report = connected
    assert code == 0
    assert report["running"] is True
    assert report["pid"] == pid
    assert report["host_name"] == "gpu-01"
    assert report["host_id"] == 7
    assert report["connected_since"] is not None
    assert report["last_heartbeat_age_seconds"] < 5
    assert report["last_error"] == ""

    code, report = disconnected
    assert code == 1
    assert report["pid"] == pid
    assert report["last_error"]

    assert exit_status == 0  # SIGTERM is a clean stop
    code, report = stopped
    assert code == 1
    assert (report["running"], report["connected"], report["pid"]) == (False, False, None)
    assert "connected to" in log_file.read_text()

    # The human-readable form says the same.
    assert cli.main(["status", "--state-dir", str(tmp_path / "state")]) == 1
    output = capsys.readouterr().out
    assert "not running" in output
    assert "connected:      no" in output
    assert CREDENTIAL not in output


def test_status_is_not_fooled_by_a_stale_file(tmp_path, capsys):
    state, _ = _state(tmp_path, 1)
    # This pid is alive (the test itself) but began long after the agent that wrote the file.
    state.save_status(
        AgentStatus(
            pid=os.getpid(),
            started_at="2001-01-01T00:00:00+00:00",
            connected=True,
            connected_since="2001-01-01T00:00:00+00:00",
        )
    )
    assert cli.main(["status", "--json", "--state-dir", str(state.path)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["running"], report["connected"]) == (False, False)


def test_the_command_exits_3_when_its_credential_is_revoked(tmp_path):
    async def script(plane, connection, session):
        await plane.receive_until(connection, session, lambda m: isinstance(m, Inventory))
        await connection.close(4403, "host credential revoked")

    async def scenario():
        async with control_plane(script) as plane:
            state, _ = _state(tmp_path, plane.port)
            process = await _start_agent(state)
            _, stderr = await asyncio.wait_for(process.communicate(), 20)
            return plane, process.returncode, stderr.decode()

    plane, exit_status, stderr = asyncio.run(scenario())
    assert exit_status == 3, stderr
    assert "code 4403" in stderr
    assert "revoked" in stderr
    assert "remotegpu-agent join" in stderr
    assert CREDENTIAL not in stderr
    assert len(plane.handshakes) == 1


def test_after_a_docker_event_the_inventory_waits_for_quiet_and_for_container_work(
    tmp_path, monkeypatch
):
    """A burst of Docker events, and a container-changing command in flight, hold the next
    inventory back (listing containers while dockerd starts one slows the start), never
    beyond the cap."""
    from remotegpu_agent import client

    monkeypatch.setattr(client, "EVENTS_QUIET_S", 0.05)
    monkeypatch.setattr(client, "EVENTS_SETTLE_MAX_S", 0.6)

    async def scenario():
        agent = _agent(tmp_path, 1)
        agent._wake = asyncio.Event()
        loop = asyncio.get_running_loop()

        # Quiet at once: returns after one quiet spell.
        started = loop.time()
        await agent._settle()
        quiet = loop.time() - started

        # Events every 30 ms for 0.2 s: returns one quiet spell after the last.
        for delay in (0.03, 0.06, 0.09, 0.12, 0.15, 0.18):
            loop.call_later(delay, agent._wake.set)
        started = loop.time()
        await agent._settle()
        burst = loop.time() - started

        # A container-changing command runs for 0.3 s: returns after it ends.
        agent._changing_containers = 1

        def command_ends():
            agent._changing_containers = 0
            agent._wake.set()

        loop.call_later(0.3, command_ends)
        started = loop.time()
        await agent._settle()
        working = loop.time() - started

        # One that never ends: the cap.
        agent._changing_containers = 1
        started = loop.time()
        await agent._settle()
        capped = loop.time() - started
        return quiet, burst, working, capped

    quiet, burst, working, capped = asyncio.run(scenario())
    assert 0.04 <= quiet < 0.2
    assert 0.2 <= burst < 0.45
    assert 0.3 <= working < 0.5
    assert 0.55 <= capped < 0.9


class HangingDocker:
    """A Docker whose container list hangs until released: the heartbeat must not wait."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def managed_containers(self):
        self.calls += 1
        self.release.wait(10)
        return [ContainerInfo(id="c1", name="rgpu-env-1", environment="1", state="running")]

    def image_tags(self):
        return ["busybox:latest"]

    def events(self, stop):
        stop.wait()
        return iter(())


def test_a_hanging_docker_holds_neither_heartbeats_nor_a_second_listing(tmp_path):
    docker = HangingDocker()

    async def script(plane, connection, session):
        def fifth_heartbeat(message):
            return len(plane.of(Heartbeat, session)) >= 5

        await plane.receive_until(connection, session, fifth_heartbeat)
        docker.release.set()
        await plane.receive_until(
            connection, session, lambda m: isinstance(m, Inventory) and m.containers_known
        )
        plane.done.set()
        await connection.wait_closed()

    async def scenario():
        async with control_plane(script) as plane:
            state, config = _state(tmp_path, plane.port)
            agent = Agent(
                config,
                state,
                FakeBackend(count=1, seed=1),
                heartbeat_interval=0.2,
                initial_backoff=0.05,
                docker=docker,
            )
            return plane, await _run_until_done(plane, agent)

    plane, exit_status = asyncio.run(scenario())
    assert exit_status == 0
    first, last = plane.of(Inventory)[0], plane.of(Inventory)[-1]
    assert first.containers_known is False  # unknown while Docker hangs, not empty
    assert [c.id for c in last.containers] == ["c1"]
    assert last.images == ["busybox:latest"]
    assert docker.calls == 1  # one listing at a time: no pile of stuck threads
    times = [heartbeat.time for heartbeat in plane.of(Heartbeat)[:5]]
    assert all(later - earlier < 1 for earlier, later in itertools.pairwise(times)), times
