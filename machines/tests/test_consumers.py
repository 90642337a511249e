"""The agent's WebSocket over the real ASGI application and the real Redis channel layer.

Every scenario runs through ``remotegpu.asgi.application`` (routing, no Origin check on agent
routes), authenticates with a real host credential and talks ``remotegpu_agent.protocol``.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.utils import timezone
from remotegpu_agent import protocol

from accounts.services.tokens import token_create
from accounts.tests.factories import OperatorFactory
from machines.choices import CommandStatus, GPUHealth, HostStatus
from machines.models import GPU, AgentCommand, GPUSample, Host, HostSample
from machines.services import join as join_services
from machines.services.commands import command_create
from machines.services.heartbeats import batcher
from machines.services.hosts import host_set_status
from machines.services.realtime import agent_group
from remotegpu.asgi import application

from .factories import GIB, AgentCommandFactory, GPUFactory, host_joined, join_token_issue

PATH = "/agent/ws/"
TIMEOUT = 10  # a bound on waits for what must come, not a pace: CI machines are loaded
T0 = 1_800_000_000.0  # the agent's clock; each test sets it to now (the server's clock)

# Sockets only see committed rows, and commands and disconnections are sent on commit.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _agent_clock_in_step(monkeypatch):
    """Heartbeats carry the agent's time, which the server keeps only within 30 s of its own."""
    monkeypatch.setitem(globals(), "T0", float(int(time.time())))


def _run(coroutine_function):
    return async_to_sync(coroutine_function)()


class Agent:
    """A fake agent on a ``WebsocketCommunicator``."""

    def __init__(self, credential: str | None, headers=()):
        if credential is not None:
            headers = [(b"authorization", f"Bearer {credential}".encode()), *headers]
        self.communicator = WebsocketCommunicator(application, PATH, headers=list(headers))
        self.accepted = False

    async def connect(self):
        result = await self.communicator.connect(timeout=TIMEOUT)
        self.accepted = result[0]
        return result

    async def send(self, message: protocol.Message):
        await self.communicator.send_to(text_data=protocol.dump(message))

    async def send_raw(self, text=None, data=None):
        await self.communicator.send_to(text_data=text, bytes_data=data)

    async def receive(self, timeout=TIMEOUT) -> protocol.Message:
        return protocol.parse(await self.communicator.receive_from(timeout=timeout))

    async def settle(self):
        """Send a message the server refuses and wait for the refusal: the consumer handles
        messages in order, so everything sent before has been handled."""
        await self.send_raw(text="settle")
        reply = await self.receive()
        assert isinstance(reply, protocol.Error), reply

    async def receive_nothing(self, timeout=0.3) -> bool:
        return await self.communicator.receive_nothing(timeout=timeout)

    async def still_open(self) -> bool:
        """Nothing more was sent, the socket was not closed and the consumer did not crash."""
        quiet = await self.receive_nothing()
        return quiet and not self.communicator.future.done()

    async def close(self):
        # Time for an accepted consumer's own goodbye (a database write): cancelling it half-way
        # through a thread-sensitive call can leave the test's event loop unable to close. A
        # refused one has nothing to say goodbye with and is cancelled after a second.
        await self.communicator.disconnect(timeout=10 if self.accepted else 1)


async def _connected(credential: str) -> tuple[Agent, protocol.Welcome]:
    agent = Agent(credential)
    connected, _ = await agent.connect()
    assert connected
    welcome = await agent.receive()
    assert isinstance(welcome, protocol.Welcome)
    access = await agent.receive()  # the SSH gateway's map comes next, before any command
    assert isinstance(access, protocol.AccessMap)
    agent.access_map = access
    return agent, welcome


def _facts() -> protocol.HostFacts:
    return protocol.HostFacts(
        hostname="gpu-01.lan",
        cpu_model="AMD EPYC 9654",
        cpu_cores=96,
        memory_total=768 * GIB,
        disk_total=7000 * GIB,
        os="Ubuntu 22.04",
        kernel="5.15.0",
        docker_version="24.0.7",
        agent_version="0.1.0",
        gpu_backend="fake",
    )


def _inventory(*uuids: str) -> protocol.Inventory:
    gpus = [
        protocol.GPUInfo(uuid=uuid, index=index, name="NVIDIA L40S", memory_total=48 * GIB)
        for index, uuid in enumerate(uuids)
    ]
    return protocol.Inventory(facts=_facts(), gpus=gpus, containers=[])


def _heartbeat(at: float | None = None, *uuids: str) -> protocol.Heartbeat:
    return protocol.Heartbeat(
        time=T0 if at is None else at,
        cpu_percent=42.0,
        memory_used=100 * GIB,
        memory_total=768 * GIB,
        disk_used=10 * GIB,
        disk_total=7000 * GIB,
        gpus=[
            protocol.GPUSample(
                uuid=uuid,
                utilization=77.0,
                memory_used=GIB,
                memory_total=48 * GIB,
                temperature=70.0,
                power_draw=300.0,
                power_limit=350.0,
            )
            for uuid in uuids
        ],
    )


@database_sync_to_async
def _committed(function, *args, **kwargs):
    with transaction.atomic():
        return function(*args, **kwargs)


# Handshake --------------------------------------------------------------------------------


def test_valid_credential_gets_welcome_and_host_goes_online():
    joined = host_joined("gpu-01")

    async def scenario():
        agent, welcome = await _connected(joined.credential)
        online = await database_sync_to_async(Host.objects.get)(pk=joined.host.pk)
        await agent.close()
        return welcome, online

    welcome, online = _run(scenario)

    assert (welcome.host_id, welcome.host_name, welcome.heartbeat_interval) == (
        joined.host.pk,
        "gpu-01",
        15,
    )
    assert welcome.v == protocol.VERSION
    assert (online.status, online.connected) == (HostStatus.ONLINE, True)
    assert online.last_seen_at is not None
    joined.host.refresh_from_db()
    assert joined.host.connected is False  # the socket closed
    assert joined.host.status == HostStatus.ONLINE  # until heartbeats are missed


def test_agent_route_needs_no_origin_and_ignores_a_foreign_one():
    joined = host_joined()

    async def scenario():
        agent = Agent(joined.credential, headers=[(b"origin", b"https://evil.example")])
        connected, _ = await agent.connect()
        await agent.close()
        return connected

    assert _run(scenario) is True


def _revoked(joined):
    join_services.credential_revoke(operator=OperatorFactory(), host=joined.host)
    return joined.credential


def _retired(joined):
    Host.objects.filter(pk=joined.host.pk).update(status=HostStatus.RETIRED)
    return joined.credential


@pytest.mark.parametrize(
    "make_credential",
    [
        lambda joined: None,
        lambda joined: "",
        lambda joined: "rhc_garbage",
        # Another last character (one time in 64 the last one is "x" already).
        lambda joined: joined.credential[:-1] + ("y" if joined.credential.endswith("x") else "x"),
        lambda joined: token_create(user=OperatorFactory(), name="api").plaintext,
        lambda joined: join_token_issue().plaintext,
        _revoked,
        _retired,
    ],
    ids=[
        "absent",
        "empty",
        "garbage",
        "wrong-secret",
        "api-token",
        "join-token",
        "revoked",
        "retired-host",
    ],
)
def test_bad_or_absent_credential_is_refused(make_credential, caplog):
    joined = host_joined()
    Host.objects.filter(pk=joined.host.pk).update(status=HostStatus.OFFLINE, connected=False)
    credential = make_credential(joined)

    async def scenario():
        agent = Agent(credential)
        result = await agent.connect()
        await agent.close()
        return result

    with caplog.at_level(logging.WARNING, logger="machines.consumers.agent"):
        assert _run(scenario) == (False, 4401)

    host = Host.objects.get(pk=joined.host.pk)
    assert host.connected is False
    assert host.status in (HostStatus.OFFLINE, HostStatus.RETIRED)
    assert "invalid credential" in caplog.text


def test_basic_scheme_is_not_bearer():
    joined = host_joined()

    async def scenario():
        headers = [(b"authorization", f"Basic {joined.credential}".encode())]
        agent = Agent(None, headers=headers)
        result = await agent.connect()
        await agent.close()
        return result

    assert _run(scenario) == (False, 4401)


# Inventory and heartbeats -----------------------------------------------------------------


def test_inventory_is_stored():
    joined = host_joined()

    async def scenario():
        agent, _ = await _connected(joined.credential)
        await agent.send(_inventory("GPU-1", "GPU-2"))
        await agent.settle()
        quiet = await agent.still_open()
        await agent.close()
        return quiet

    assert _run(scenario)
    host = Host.objects.get(pk=joined.host.pk)
    assert (host.cpu_model, host.cpu_cores, host.gpu_backend) == ("AMD EPYC 9654", 96, "fake")
    assert sorted(host.gpus.values_list("uuid", "index")) == [("GPU-1", 0), ("GPU-2", 1)]


def test_heartbeats_are_stored_once_after_a_flush():
    joined = host_joined()

    async def scenario():
        agent, _ = await _connected(joined.credential)
        await agent.send(_inventory("GPU-1"))
        await agent.send(_heartbeat(T0, "GPU-1"))
        await agent.send(_heartbeat(T0 + 15, "GPU-1"))
        await agent.send(_heartbeat(T0 + 15, "GPU-1"))  # resent after a reconnect
        await agent.settle()
        await batcher.flush()
        await agent.close()

    _run(scenario)

    assert HostSample.objects.filter(host=joined.host).count() == 2
    assert GPUSample.objects.filter(gpu__host=joined.host).count() == 2
    host = Host.objects.get(pk=joined.host.pk)
    assert host.cpu_percent == 42.0
    assert GPU.objects.get(uuid="GPU-1").utilization == 77.0


def test_figures_a_gpu_cannot_give_arrive_as_null_and_are_stored_as_null():
    joined = host_joined()
    unknown = dict.fromkeys(
        ("utilization", "temperature", "power_draw", "power_limit", "ecc_errors")
    )

    async def scenario():
        agent, _ = await _connected(joined.credential)
        await agent.send(_inventory("GPU-1"))
        await agent.send_raw(text=_gpu_figures(**unknown))
        await agent.settle()
        accepted = await agent.still_open()  # the settling refusal was the only reply
        await batcher.flush()
        await agent.close()
        return accepted

    assert _run(scenario)
    gpu = GPU.objects.get(uuid="GPU-1")
    assert [getattr(gpu, name) for name in unknown] == [None] * 5
    assert gpu.memory_used == GIB
    figures = ("utilization", "temperature", "power_draw", "ecc_errors")
    assert GPUSample.objects.filter(gpu=gpu).values_list(*figures).get() == (None,) * 4


# Refused messages -------------------------------------------------------------------------


def _message(**fields) -> str:
    base = {"type": "heartbeat", "id": "m1", "v": protocol.VERSION}
    beat = json.loads(protocol.dump(_heartbeat(T0)))
    return json.dumps({**beat, **base, **fields})


def _gpu_figures(**figures) -> str:
    """A heartbeat with one GPU whose figures ``figures`` replace (as JSON values)."""
    message = json.loads(protocol.dump(_heartbeat(T0, "GPU-1")))
    message["gpus"][0].update(figures)
    return json.dumps(message)


def _inventory_with(**facts) -> str:
    message = json.loads(protocol.dump(_inventory("GPU-1")))
    message["facts"].update(facts)
    return json.dumps(message)


def _inventory_with_gpu_index(index: int) -> str:
    message = json.loads(protocol.dump(_inventory("GPU-1")))
    message["gpus"][0]["index"] = index
    return json.dumps(message)


REFUSED = {
    "not-json": "{not json",
    "not-an-object": "[1, 2, 3]",
    "oversized": json.dumps({"type": "heartbeat", "pad": "x" * protocol.MAX_MESSAGE_BYTES}),
    "oversized-multibyte": '"' + "é" * (protocol.MAX_MESSAGE_BYTES // 2) + '"',
    "unknown-type": _message(type="launch_missiles"),
    "no-type": json.dumps({"id": "x", "v": 1}),
    "wrong-version": _message(v=99),
    "no-id": json.dumps({"type": "heartbeat", "v": 1}),
    "unknown-field": _message(extra=1),
    "missing-field": json.dumps({"type": "heartbeat", "id": "x", "v": 1, "time": T0}),
    "wrong-type": _message(cpu_percent="lots"),
    "nan": _message(cpu_percent=float("nan")),
    "infinite-time": _message(time=float("inf")),
    "huge-integer": _message(memory_used=10**30),
    "huge-integer-for-float": _message(time=10**400),
    "impossible-time": _message(time=1e300),
    "server-only-welcome": protocol.dump(
        protocol.Welcome(host_id=1, host_name="x", heartbeat_interval=1)
    ),
    "server-only-command": protocol.dump(protocol.Command(command_id="x", kind="ping")),
    "server-only-error": protocol.dump(protocol.Error(reason="x")),
    # Null is "the GPU cannot give it" for the optional GPU figures only.
    "null-host-figure": _message(cpu_percent=None),
    "null-gpu-memory": _gpu_figures(memory_used=None),
    "null-gpu-uuid": _gpu_figures(uuid=None),
    "gpu-figure-wrong-type": _gpu_figures(temperature="hot"),
    "gpu-figure-bool": _gpu_figures(power_draw=True),
    "gpu-figure-nan": _gpu_figures(temperature=float("nan")),
    "gpu-figure-huge-integer-for-float": _gpu_figures(power_limit=10**400),
    "gpu-ecc-not-an-integer": _gpu_figures(ecc_errors=1.5),
    "negative-host-memory": _message(memory_used=-1),
    "cpu-above-100-percent": _message(cpu_percent=100.5),
    "gpu-utilization-above-100-percent": _gpu_figures(utilization=250),
    "negative-gpu-power": _gpu_figures(power_draw=-3.5),
    "negative-gpu-ecc": _gpu_figures(ecc_errors=-1),
    "inventory-cores-out-of-range": _inventory_with(cpu_cores=2**40),
    "inventory-gpu-index-out-of-range": _inventory_with_gpu_index(10**6),
    "inventory-negative-memory": _inventory_with(memory_total=-1),
    "nul-character": _inventory_with(hostname="gpu\x00host"),
    "deeply-nested": "[" * 100_000,
    "unhashable-type": json.dumps({"type": ["heartbeat"], "id": "x", "v": 1}),
    "nan-inside-a-result": (
        '{"type": "command_result", "id": "x", "v": 1, "command_id": "x", "ok": true, '
        '"result": {"figures": [NaN]}}'
    ),
}


@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
def test_refused_message_gets_an_error_and_changes_nothing(raw, caplog):
    joined = host_joined()
    before = Host.objects.values().get(pk=joined.host.pk)

    async def scenario():
        agent, _ = await _connected(joined.credential)
        await agent.send_raw(text=raw)
        reply = await agent.receive()
        still_open = await agent.still_open()
        # The socket still works.
        await agent.send(_heartbeat(T0))
        await agent.settle()
        await batcher.flush()
        await agent.close()
        return reply, still_open

    with caplog.at_level(logging.WARNING, logger="machines.consumers.agent"):
        reply, still_open = _run(scenario)

    assert isinstance(reply, protocol.Error)
    assert reply.reason
    assert still_open
    assert f"host {joined.host.pk}" in caplog.text
    assert reply.reason[:40] in caplog.text
    # Nothing but the one good heartbeat was stored.
    assert list(HostSample.objects.values_list("time", flat=True)) == [
        datetime.fromtimestamp(T0, tz=UTC)
    ]
    after = Host.objects.values().get(pk=joined.host.pk)
    for field in ("cpu_model", "cpu_cores", "memory_total", "hostname"):
        assert after[field] == before[field]
    assert not GPU.objects.exists()


def test_binary_frame_is_parsed_like_text():
    joined = host_joined()

    async def scenario():
        agent, _ = await _connected(joined.credential)
        await agent.send_raw(data=protocol.dump(_inventory("GPU-1")).encode())
        await agent.send_raw(data=b"\xff\xfe")
        reply = await agent.receive()
        still_open = await agent.still_open()
        await agent.close()
        return reply, still_open

    reply, still_open = _run(scenario)
    assert isinstance(reply, protocol.Error)
    assert still_open
    assert GPU.objects.filter(host=joined.host, uuid="GPU-1").exists()


# Commands ---------------------------------------------------------------------------------


def test_pending_commands_are_sent_on_connect_oldest_first():
    joined = host_joined()
    first = AgentCommandFactory(host=joined.host, kind="ping")
    second = AgentCommandFactory(host=joined.host, kind="collect_diagnostics", payload={"a": 1})
    AgentCommandFactory(host=joined.host, deadline=timezone.now() - timedelta(seconds=1))
    AgentCommandFactory(host=joined.host, status=CommandStatus.SUCCEEDED)
    AgentCommandFactory()  # another host's

    async def scenario():
        agent, _ = await _connected(joined.credential)
        commands = [await agent.receive(), await agent.receive()]
        nothing_more = await agent.still_open()
        await agent.close()
        return commands, nothing_more

    commands, nothing_more = _run(scenario)

    assert [type(c) for c in commands] == [protocol.Command, protocol.Command]
    assert [c.command_id for c in commands] == [str(first.pk), str(second.pk)]
    assert [c.kind for c in commands] == ["ping", "collect_diagnostics"]
    assert commands[1].payload == {"a": 1}
    assert commands[0].deadline == pytest.approx(first.deadline.timestamp())
    assert nothing_more
    for command in (first, second):
        command.refresh_from_db()
        assert (command.status, command.attempts) == (CommandStatus.SENT, 1)
        assert command.sent_at is not None


def test_command_created_while_connected_is_pushed():
    joined = host_joined()
    operator = OperatorFactory()

    async def scenario():
        agent, _ = await _connected(joined.credential)
        assert await agent.receive_nothing()
        command = await _committed(
            command_create, host=joined.host, kind="ping", requested_by=operator
        )
        pushed = await agent.receive()
        await agent.close()
        return command, pushed

    command, pushed = _run(scenario)

    assert isinstance(pushed, protocol.Command)
    assert (pushed.command_id, pushed.kind) == (str(command.pk), "ping")
    command.refresh_from_db()
    assert (command.status, command.attempts) == (CommandStatus.SENT, 1)


def test_ack_and_result_update_the_row_once():
    joined = host_joined()
    command = AgentCommandFactory(host=joined.host)

    async def scenario():
        agent, _ = await _connected(joined.credential)
        sent = await agent.receive()
        await agent.send(protocol.CommandAck(command_id=sent.command_id))
        await agent.send(protocol.CommandAck(command_id=sent.command_id))
        await agent.settle()
        assert await agent.still_open()
        acked = await database_sync_to_async(AgentCommand.objects.get)(pk=command.pk)
        await agent.send(
            protocol.CommandResult(command_id=sent.command_id, ok=True, result={"pong": True})
        )
        await agent.send(protocol.CommandResult(command_id=sent.command_id, ok=False, error="x"))
        await agent.settle()
        assert await agent.still_open()
        await agent.close()
        return acked

    acked = _run(scenario)

    assert acked.status == CommandStatus.ACKED
    assert acked.acked_at is not None
    command.refresh_from_db()
    assert (command.status, command.result, command.error) == (
        CommandStatus.SUCCEEDED,
        {"pong": True},
        "",
    )
    assert command.finished_at is not None


@pytest.mark.parametrize("command_id", ["not-a-uuid", "", "0" * 64])
def test_garbage_command_ids_change_nothing_and_keep_the_socket(command_id):
    joined = host_joined()
    command = AgentCommandFactory(host=joined.host, status=CommandStatus.SENT)

    async def scenario():
        agent, _ = await _connected(joined.credential)
        await agent.receive()
        await agent.send(protocol.CommandAck(command_id=command_id))
        await agent.send(protocol.CommandResult(command_id=command_id, ok=True))
        await agent.settle()
        still_open = await agent.still_open()
        await agent.close()
        return still_open

    assert _run(scenario)
    command.refresh_from_db()
    assert command.status == CommandStatus.SENT


# Revocation -------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["revoke", "rotate", "retire"])
def test_revocation_closes_the_socket_with_4403_within_a_second(how):
    joined = host_joined()
    operator = OperatorFactory()
    action = {
        "revoke": lambda: join_services.credential_revoke(operator=operator, host=joined.host),
        "rotate": lambda: join_services.credential_rotate(operator=operator, host=joined.host),
        "retire": lambda: host_set_status(
            operator=operator, host=joined.host, status=HostStatus.RETIRED
        ),
    }[how]

    async def scenario():
        agent, _ = await _connected(joined.credential)
        started = time.monotonic()
        await _committed(action)
        closed = await agent.communicator.receive_output(timeout=1)
        elapsed = time.monotonic() - started
        await agent.close()  # what daphne tells the consumer once the socket is closed
        reconnect = await Agent(joined.credential).connect()
        return closed, elapsed, reconnect

    closed, elapsed, reconnect = _run(scenario)

    assert closed == {"type": "websocket.close", "code": 4403}
    assert elapsed < 1
    assert reconnect == (False, 4401)
    assert Host.objects.get(pk=joined.host.pk).connected is False


def test_a_revocation_whose_close_message_was_lost_is_caught_at_the_next_resync(monkeypatch):
    """Redis restarted (groups wiped) when the operator revoked: the group message never
    arrives, so the once-a-minute resync checks the credential again and closes the socket
    instead of joining the group again."""
    from channels.layers import get_channel_layer

    from machines.consumers import agent as agent_consumer
    from machines.services.realtime import agent_group

    monkeypatch.setattr(agent_consumer, "RESYNC_INTERVAL", 0)  # every heartbeat resyncs
    joined = host_joined()
    operator = OperatorFactory()

    async def scenario():
        agent, _ = await _connected(joined.credential)
        channel = await database_sync_to_async(
            lambda: Host.objects.get(pk=joined.host.pk).agent_connection
        )()
        await get_channel_layer().group_discard(agent_group(joined.host.pk), channel)
        await _committed(join_services.credential_revoke, operator=operator, host=joined.host)
        await agent.send(_heartbeat(T0))
        closed = await agent.communicator.receive_output(timeout=TIMEOUT)
        await agent.close()
        return closed

    assert _run(scenario) == {"type": "websocket.close", "code": 4403}
    assert Host.objects.get(pk=joined.host.pk).connected is False


# One host cannot touch another's data ------------------------------------------------------


def test_a_host_cannot_touch_another_hosts_rows():
    intruder = host_joined("intruder")
    victim = host_joined("victim")
    victim_gpu = GPUFactory(host=victim.host, uuid="GPU-victim", utilization=5.0)
    victim_command = AgentCommandFactory(host=victim.host, status=CommandStatus.SENT)
    operator = OperatorFactory()

    async def scenario():
        agent, _ = await _connected(intruder.credential)
        await agent.send(protocol.CommandAck(command_id=str(victim_command.pk)))
        await agent.send(
            protocol.CommandResult(
                command_id=str(victim_command.pk), ok=False, error="forged", result={"x": 1}
            )
        )
        await agent.send(_inventory("GPU-victim", "GPU-intruder"))
        await agent.send(_heartbeat(T0, "GPU-victim", "GPU-intruder"))
        await agent.settle()
        assert await agent.still_open()
        await batcher.flush()
        # A command for the victim is not pushed to the intruder.
        await _committed(command_create, host=victim.host, kind="ping", requested_by=operator)
        nothing = await agent.still_open()
        await agent.close()
        return nothing

    assert _run(scenario)

    victim_command.refresh_from_db()
    assert (victim_command.status, victim_command.result, victim_command.error) == (
        CommandStatus.SENT,
        {},
        "",
    )
    victim_gpu.refresh_from_db()
    assert (victim_gpu.host_id, victim_gpu.utilization, victim_gpu.health) == (
        victim.host.pk,
        5.0,
        GPUHealth.OK,
    )
    assert not GPUSample.objects.filter(gpu=victim_gpu).exists()
    assert not HostSample.objects.filter(host=victim.host).exists()
    # The intruder's own figures are stored, for the intruder.
    assert GPUSample.objects.filter(gpu__uuid="GPU-intruder").count() == 1
    assert HostSample.objects.filter(host=intruder.host).count() == 1
    assert AgentCommand.objects.filter(host=victim.host, status=CommandStatus.PENDING).count() == 1


# The SSH gateway and web terminals ----------------------------------------------------------


def test_the_access_map_follows_welcome_and_an_access_event(monkeypatch):
    from machines.services import gateway

    joined = host_joined()
    entry = protocol.GatewayAccess(environment_id=7, container="c", fingerprints=["SHA256:x"])
    monkeypatch.setattr(gateway, "_providers", [lambda host_id: [entry]])

    async def scenario():
        agent, _ = await _connected(joined.credential)
        first = agent.access_map
        await get_channel_layer().group_send(agent_group(joined.host.pk), {"type": "agent.access"})
        again = await agent.receive()
        await agent.close()
        return first, again

    first, again = _run(scenario)
    assert first.environments == [entry]
    assert isinstance(again, protocol.AccessMap)
    assert again.environments == [entry]


def test_inventory_carries_the_gateway_and_heartbeats_its_sessions():
    joined = host_joined()
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"

    async def scenario():
        agent, _ = await _connected(joined.credential)
        inventory = _inventory("GPU-1")
        inventory.ssh_port, inventory.ssh_host_key = 2222, key + " gateway"
        await agent.send(inventory)
        heartbeat = _heartbeat(T0, "GPU-1")
        heartbeat.sessions = ["12", "13", "not-a-number"]
        await agent.send(heartbeat)
        await agent.settle()
        await agent.close()

    _run(scenario)
    host = Host.objects.get(pk=joined.host.pk)
    assert (host.ssh_port, host.ssh_host_key) == (2222, key)
    assert host.ssh_host_key_fingerprint.startswith("SHA256:")
    assert host.session_environments == [12, 13]
    assert host.sessions_seen_at is not None


def test_an_inventory_with_a_bad_host_key_is_refused():
    joined = host_joined()

    async def scenario():
        agent, _ = await _connected(joined.credential)
        inventory = _inventory("GPU-1")
        inventory.ssh_port, inventory.ssh_host_key = 2222, "not a key"
        await agent.send(inventory)
        reply = await agent.receive()
        await agent.close()
        return reply

    reply = _run(scenario)
    assert isinstance(reply, protocol.Error)
    assert "ssh_host_key" in reply.reason


def test_terminal_traffic_is_relayed_both_ways():
    joined = host_joined()
    session = "ab" * 16

    async def scenario():
        layer = get_channel_layer()
        browser = await layer.new_channel()
        agent, _ = await _connected(joined.credential)
        group = agent_group(joined.host.pk)
        await layer.group_send(
            group,
            {
                "type": "agent.terminal.open",
                "session": session,
                "environment_id": 5,
                "container": "c",
                "user": "9",
                "cols": 80,
                "rows": 24,
                "reply": browser,
            },
        )
        opened = await agent.receive()
        await layer.group_send(
            group, {"type": "agent.terminal.input", "session": session, "data": b"ls\r"}
        )
        typed = await agent.communicator.receive_from(timeout=TIMEOUT)
        # Output for a session this socket does not carry goes nowhere.
        await agent.send_raw(data=protocol.terminal_frame("cd" * 16, b"stray"))
        await agent.send_raw(data=protocol.terminal_frame(session, b"out"))
        output = await layer.receive(browser)
        await agent.send(protocol.TerminalEvent(session=session, event="closed", exit_code=0))
        closed = await layer.receive(browser)
        # Closed: further input for it is not sent on.
        await layer.group_send(
            group, {"type": "agent.terminal.input", "session": session, "data": b"late"}
        )
        quiet = await agent.receive_nothing()
        await agent.close()
        return opened, typed, output, closed, quiet

    opened, typed, output, closed, quiet = _run(scenario)
    assert isinstance(opened, protocol.TerminalOpen)
    assert (opened.session, opened.environment_id, opened.user) == (session, 5, "9")
    assert typed == protocol.terminal_frame(session, b"ls\r")
    assert output == {"type": "terminal.output", "data": b"out"}
    assert (closed["type"], closed["event"], closed["exit_code"]) == ("terminal.event", "closed", 0)
    assert quiet
