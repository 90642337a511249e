"""Web terminals in the agent: credit-based flow control and who may keep a session, with a
fake exec stream (the real one runs in tests/integration and tests/e2e)."""

from __future__ import annotations

import asyncio

from remotegpu_agent import terminal
from remotegpu_agent.protocol import TERMINAL_HEADER, TerminalOpen, terminal_unframe
from remotegpu_agent.terminal import MAX_FRAMES, WINDOW, Terminals

SESSION = "ab" * 16


class Writer:
    class transport:  # noqa: N801 - mimics asyncio's attribute
        @staticmethod
        def get_write_buffer_size():
            return 0


class EndlessStream:
    """``yes``: as much output as anyone reads, and a count of what was read."""

    exec_id = "exec-1"

    def __init__(self):
        self.read_bytes = 0
        self.written = b""
        self.writer = Writer()
        self.closed = False

    async def read(self, size):
        await asyncio.sleep(0)
        self.read_bytes += size
        return b"y\n" * (size // 2)

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True


class FakeDocker:
    def __init__(self):
        self.stream = EndlessStream()
        self.resized = []

    async def exec(self, container, command, **kwargs):
        return self.stream

    async def exec_resize(self, exec_id, rows, cols):
        self.resized.append((rows, cols))

    async def exec_exit_code(self, exec_id):
        return 0


def _open(user="9", session=SESSION):
    return TerminalOpen(session=session, environment_id=5, container="c", user=user)


def test_output_stops_at_the_window_and_resumes_on_ack():
    docker = FakeDocker()
    frames, events = [], []

    async def send_frame(frame):
        frames.append(frame)

    async def send_event(event):
        events.append(event)

    async def scenario():
        terminals = Terminals(docker, send_frame, send_event)
        await terminals.open(_open(), frozenset({"9"}))
        for _ in range(50):
            await asyncio.sleep(0)
        stalled_at = docker.stream.read_bytes
        for _ in range(50):  # no ack: nothing more is read
            await asyncio.sleep(0)
        assert docker.stream.read_bytes == stalled_at
        sent = sum(len(terminal_unframe(frame)[1]) for frame in frames)
        terminals.ack(SESSION, sent, len(frames))
        for _ in range(50):
            await asyncio.sleep(0)
        resumed = docker.stream.read_bytes > stalled_at
        terminals.input(SESSION, b"q")
        await terminals.resize(SESSION, 132, 40)
        await terminals.resize(SESSION, 100_000, 40)  # ignored
        terminals.close(SESSION)
        await asyncio.sleep(0.01)
        return stalled_at, sent, resumed

    stalled_at, sent, resumed = asyncio.run(scenario())
    assert stalled_at <= WINDOW
    assert sent <= WINDOW
    assert resumed
    assert docker.stream.written == b"q"
    assert docker.resized == [(40, 132)]
    assert docker.stream.closed
    assert [event.event for event in events] == ["opened", "closed"]


def test_many_small_frames_are_bounded_too(monkeypatch):
    docker = FakeDocker()

    async def tiny(size):
        await asyncio.sleep(0)
        return b"."

    docker.stream.read = tiny
    frames = []

    async def send_frame(frame):
        frames.append(frame)

    async def send_event(event):
        pass

    async def scenario():
        terminals = Terminals(docker, send_frame, send_event)
        await terminals.open(_open(), frozenset({"9"}))
        for _ in range(MAX_FRAMES * 4):
            await asyncio.sleep(0)
        terminals.close_all("done")
        await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert len(frames) == MAX_FRAMES


def test_sessions_are_refused_or_ended_by_access():
    events = []

    async def send_event(event):
        events.append(event)

    async def send_frame(frame):
        pass

    async def scenario():
        terminals = Terminals(FakeDocker(), send_frame, send_event)
        await terminals.open(_open(user="8"), frozenset({"9"}))  # not among the allowed
        await terminals.open(_open(session="not-hex"), frozenset({"9"}))
        await terminals.open(_open(), None)  # the environment is not in the map
        refused = [event.message for event in events]
        events.clear()
        await terminals.open(_open(), frozenset({"9"}))
        await asyncio.sleep(0)
        assert terminals.environments() == [5]
        ended = terminals.enforce({5: frozenset({"7"})})
        await asyncio.sleep(0.01)
        return refused, ended, terminals.environments()

    refused, ended, left = asyncio.run(scenario())
    assert refused == [
        "access to this environment has ended",
        "bad session id",
        "access to this environment has ended",
    ]
    assert ended == 1
    assert left == []
    assert events[-1].event == "closed"
    assert events[-1].message == "access to this environment has ended"


def test_limits_are_what_the_server_relies_on():
    # The server's channels hold 100 messages: the frames in flight must stay below.
    assert terminal.MAX_FRAMES < 100
    # daphne drops a socket that sends a message over 1 MiB: a frame (header and data) fits.
    assert TERMINAL_HEADER + terminal.READ_CHUNK < 1024 * 1024
