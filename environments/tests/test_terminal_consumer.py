"""The web terminal's browser socket: who gets in, what it tells the agent's socket, what it
refuses. The agent's end is played by a channel in the host's group (the real Redis layer)."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from accounts.choices import Role
from accounts.tests.factories import MembershipFactory, UserFactory
from environments.choices import EnvironmentStatus as S
from environments.consumers import TerminalConsumer
from machines.services.realtime import agent_group

from .factories import EnvironmentFactory, host_with_gpus

TIMEOUT = 10  # a bound on waits for what must come, not a pace: CI machines are loaded
pytestmark = pytest.mark.django_db(transaction=True)


def _communicator(user, environment_id, query="cols=100&rows=30"):
    consumer = TerminalConsumer.as_asgi()

    async def application(scope, receive, send):
        scope = {
            **scope,
            "user": user,
            "url_route": {"kwargs": {"environment_id": environment_id}},
        }
        return await consumer(scope, receive, send)

    return WebsocketCommunicator(
        application, f"/ws/environments/{environment_id}/terminal/?{query}"
    )


def _json(**fields) -> str:
    return json.dumps(fields)


@pytest.fixture
def running():
    host = host_with_gpus(1, connected=True)
    owner = MembershipFactory(role=Role.OWNER)
    environment = EnvironmentFactory(
        organization=owner.organization,
        created_by=owner.user,
        host=host,
        status=S.RUNNING,
        container_id="c0ffee",
    )
    return environment, owner


class FakeAgent:
    """A channel in the host's agent group: what the consumer sends the agent lands here."""

    def __init__(self, host_id):
        self.layer = get_channel_layer()
        self.group = agent_group(host_id)

    async def __aenter__(self):
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(self.group, self.channel)
        return self

    async def __aexit__(self, *exc):
        await self.layer.group_discard(self.group, self.channel)

    async def receive(self):
        return await self.layer.receive(self.channel)


@pytest.mark.parametrize("who", ["anonymous", "outsider", "member", "operator"])
def test_those_who_may_not_open_it_are_refused_before_accept(running, who):
    environment, owner = running
    user = {
        "anonymous": AnonymousUser(),
        "outsider": MembershipFactory(role=Role.OWNER).user,
        "member": MembershipFactory(organization=owner.organization, role=Role.MEMBER).user,
        "operator": UserFactory(is_staff=True),
    }[who]

    async def scenario():
        communicator = _communicator(user, environment.pk)
        connected, code = await communicator.connect(timeout=TIMEOUT)
        await communicator.disconnect()
        return connected, code

    connected, code = async_to_sync(scenario)()
    assert connected is False
    assert code in (4401, 4404)


def test_a_stopped_environment_or_an_offline_host_opens_nothing(running):
    environment, owner = running
    environment.host.connected = False
    environment.host.save()

    async def scenario():
        communicator = _communicator(owner.user, environment.pk)
        connected, _ = await communicator.connect(timeout=TIMEOUT)
        return connected

    assert async_to_sync(scenario)() is False


def test_open_input_resize_ack_close_reach_the_agent_and_output_comes_back(running):
    environment, owner = running

    async def scenario():
        async with FakeAgent(environment.host_id) as agent:
            communicator = _communicator(owner.user, environment.pk)
            connected, _ = await communicator.connect(timeout=TIMEOUT)
            assert connected
            opened = await agent.receive()
            session = opened["session"]
            await communicator.send_to(bytes_data=b"ls\r")
            typed = await agent.receive()
            await communicator.send_to(
                text_data=json.dumps({"type": "resize", "cols": 132, "rows": 40})
            )
            resized = await agent.receive()
            await communicator.send_to(
                text_data=json.dumps({"type": "ack", "bytes": 10, "frames": 2})
            )
            acked = await agent.receive()
            # The agent's socket relays output and events to the browser's channel.
            layer = get_channel_layer()
            await layer.send(opened["reply"], {"type": "terminal.output", "data": b"\x1b[1mhi"})
            output = await communicator.receive_from(timeout=TIMEOUT)
            await layer.send(
                opened["reply"],
                {"type": "terminal.event", "event": "closed", "message": "bye", "exit_code": 0},
            )
            closed = json.loads(await communicator.receive_from(timeout=TIMEOUT))
            ended = await communicator.receive_output(timeout=TIMEOUT)
            return session, opened, typed, resized, acked, output, closed, ended

    session, opened, typed, resized, acked, output, closed, ended = async_to_sync(scenario)()
    assert opened["type"] == "agent.terminal.open"
    assert len(session) == 32
    assert opened["environment_id"] == environment.pk
    assert opened["container"] == "c0ffee"
    assert opened["user"] == str(owner.user.pk)
    assert (opened["cols"], opened["rows"]) == (100, 30)
    assert typed == {"type": "agent.terminal.input", "session": session, "data": b"ls\r"}
    assert (resized["type"], resized["cols"], resized["rows"]) == ("agent.terminal.resize", 132, 40)
    assert (acked["type"], acked["bytes"], acked["frames"]) == ("agent.terminal.ack", 10, 2)
    assert output == b"\x1b[1mhi"
    assert closed == {"type": "closed", "message": "bye", "exit_code": 0}
    assert ended == {"type": "websocket.close", "code": 4000}


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        ({"bytes_data": b"x" * (64 * 1024 + 1)}, "64 KiB"),
        ({"text_data": json.dumps({"type": "resize", "cols": 0, "rows": 24})}, "1 to 1000"),
        ({"text_data": json.dumps({"type": "resize", "cols": 100_000, "rows": 24})}, "1 to 1000"),
        ({"text_data": json.dumps({"type": "resize", "cols": "wide", "rows": 24})}, "1 to 1000"),
        ({"text_data": json.dumps({"type": "ack", "bytes": -1})}, "acknowledgement"),
        ({"text_data": json.dumps({"type": "exec", "command": "rm"})}, "Not a terminal"),
        ({"text_data": "not json"}, "Not a terminal"),
    ],
    ids=["oversized", "zero-cols", "huge-cols", "text-cols", "negative-ack", "unknown", "garbage"],
)
def test_abuse_is_refused_and_the_terminal_goes_on(running, frame, error):
    environment, owner = running

    async def scenario():
        async with FakeAgent(environment.host_id) as agent:
            communicator = _communicator(owner.user, environment.pk)
            connected, _ = await communicator.connect(timeout=TIMEOUT)
            assert connected
            await agent.receive()  # open
            await communicator.send_to(**frame)
            answer = json.loads(await communicator.receive_from(timeout=TIMEOUT))
            await communicator.send_to(bytes_data=b"still\r")
            after = await agent.receive()
            await communicator.disconnect()
            closed = await agent.receive()
            return answer, after, closed

    answer, after, closed = async_to_sync(scenario)()
    assert answer["type"] == "error"
    assert error in answer["message"]
    assert after["data"] == b"still\r"  # nothing else reached the agent, and it goes on
    assert closed["type"] == "agent.terminal.close"


def test_the_route_takes_the_session_only_from_an_allowed_origin(running, client):
    """Through the project's ASGI stack: Origin and session are checked before the upgrade."""
    from remotegpu.asgi import application

    environment, owner = running
    client.force_login(owner.user)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def connect(origin: bytes, cookie: bytes = cookie):
        async with FakeAgent(environment.host_id) as agent:
            communicator = WebsocketCommunicator(
                application,
                f"/ws/environments/{environment.pk}/terminal/",
                headers=[(b"origin", origin), (b"cookie", cookie), (b"host", b"testserver")],
            )
            connected, _ = await communicator.connect(timeout=TIMEOUT)
            opened = (await agent.receive())["type"] if connected else None
            await communicator.disconnect()
            return connected, opened

    async def scenario():  # one event loop for the three: the channel layer's locks are per loop
        return [
            await connect(b"http://testserver"),
            await connect(b"http://evil.example"),
            await connect(b"http://testserver", b"sessionid=forged"),
        ]

    assert async_to_sync(scenario)() == [
        (True, "agent.terminal.open"),
        (False, None),
        (False, None),
    ]
