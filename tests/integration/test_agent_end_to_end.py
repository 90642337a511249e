"""A real ``remotegpu-agent`` process (fake GPU back end) against a real daphne server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.tests.factories import OperatorFactory
from machines.choices import CommandStatus, HostStatus
from machines.models import GPU, AgentCommand, GPUSample, Host, HostSample
from machines.services.commands import command_create
from machines.services.join import credential_revoke

from .conftest import (
    AGENT,
    AGENT_INTERVAL,
    START_TIMEOUT,
    DaphneServer,
    _answers_healthz,
    _start,
    join_agent,
    start_agent,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _status(state: Path) -> tuple[int, dict]:
    result = subprocess.run(
        [AGENT, "status", "--json", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode, json.loads(result.stdout)


def _host(name: str) -> Host | None:
    return Host.objects.filter(name=name).first()


def test_agent_joins_reports_and_answers_commands(daphne_server, tmp_path):
    state, control = tmp_path / "state", tmp_path / "fake-gpus.json"
    control.write_text("{}")
    join_agent(daphne_server, state, "it-host-1")
    agent = start_agent(state, control, tmp_path)
    try:
        # Online first, then the inventory (a separate message) has been stored.
        host = wait_until(
            lambda: Host.objects.filter(
                name="it-host-1", status=HostStatus.ONLINE, connected=True, gpu_backend="fake"
            ).first(),
            timeout=START_TIMEOUT,
            what="the host to be online with its inventory",
            process=agent,
        )
        assert host.labels == {"rack": "a1"}
        assert host.gpu_backend == "fake"
        assert host.cpu_cores > 0
        assert host.memory_total > 0
        wait_until(
            lambda: GPU.objects.filter(host=host).count() == 2,
            timeout=10,
            what="two GPUs in the inventory",
            process=agent,
        )

        # The charts move: samples accumulate and their values change.
        wait_until(
            lambda: GPUSample.objects.filter(gpu__host=host).count() >= 8,
            timeout=20,
            what="GPU samples",
            process=agent,
        )
        utilisations = set(
            GPUSample.objects.filter(gpu__host=host).values_list("utilization", flat=True)
        )
        assert len(utilisations) > 1
        assert HostSample.objects.filter(host=host).count() >= 4

        code, status = _status(state)
        assert code == 0, status
        assert status["connected"] is True
        assert status["host_id"] == host.pk
        assert status["running"] is True

        # Steering the fake back end reaches the server.
        control.write_text(json.dumps({"temperature": 92}))
        wait_until(
            lambda: GPU.objects.filter(host=host, temperature__gte=90).count() == 2,
            timeout=10,
            what="the steered temperature",
            process=agent,
        )

        command = command_create(host=host, kind="collect_diagnostics")
        command = wait_until(
            lambda: AgentCommand.objects.filter(
                pk=command.pk, status=CommandStatus.SUCCEEDED
            ).first(),
            timeout=15,
            what="diagnostics to come back",
            process=agent,
        )
        assert command.result
        assert command.acked_at is not None

        # Revocation closes the socket at once; the agent stops, saying why.
        credential_revoke(operator=OperatorFactory(), host=host)
        agent.popen.wait(timeout=10)
        assert agent.popen.returncode == 3, agent.output()
        code, status = _status(state)
        assert code != 0
        assert status["connected"] is False
    finally:
        agent.stop()


def test_kill_9_then_restart_is_online_again_without_duplicate_samples(daphne_server, tmp_path):
    state, control = tmp_path / "state", tmp_path / "fake-gpus.json"
    control.write_text("{}")
    join_agent(daphne_server, state, "it-host-2")
    agent = start_agent(state, control, tmp_path, "agent-first")
    try:
        host = wait_until(
            lambda: Host.objects.filter(name="it-host-2", connected=True).first(),
            timeout=START_TIMEOUT,
            what="the host to connect",
            process=agent,
        )
        wait_until(
            lambda: HostSample.objects.filter(host=host).count() >= 3,
            timeout=15,
            what="samples",
            process=agent,
        )
    finally:
        os.killpg(agent.popen.pid, signal.SIGKILL)
        agent.popen.wait()
        agent.stop()
    before = HostSample.objects.filter(host=host).count()

    restarted = start_agent(state, control, tmp_path, "agent-second")
    try:
        wait_until(
            lambda: (
                Host.objects.filter(pk=host.pk, connected=True, status=HostStatus.ONLINE).exists()
                and HostSample.objects.filter(host=host).count() > before
            ),
            timeout=AGENT_INTERVAL * 5 + 5,
            what="the restarted agent to report",
            process=restarted,
        )
    finally:
        restarted.stop()
    times = list(HostSample.objects.filter(host=host).values_list("time", flat=True))
    assert len(times) == len(set(times))


def test_agent_reconnects_after_daphne_restarts(process_env, tmp_path):
    from .conftest import _free_port

    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "remotegpu.asgi:application",
    ]

    def start_daphne(name):
        process = _start(name, argv, process_env, tmp_path)
        server = DaphneServer(process, port)
        wait_until(
            lambda: _answers_healthz(server.url("/healthz")),
            timeout=START_TIMEOUT,
            what="daphne",
            process=process,
        )
        return server

    server = start_daphne("daphne-first")
    state, control = tmp_path / "state", tmp_path / "fake-gpus.json"
    control.write_text("{}")
    join_agent(server, state, "it-host-3")
    agent = start_agent(state, control, tmp_path)
    try:
        host = wait_until(
            lambda: Host.objects.filter(name="it-host-3", connected=True).first(),
            timeout=START_TIMEOUT,
            what="the host to connect",
            process=agent,
        )
        server.process.stop()
        server = start_daphne("daphne-second")
        since = HostSample.objects.filter(host=host).count()
        wait_until(
            lambda: (
                Host.objects.filter(pk=host.pk, connected=True).exists()
                and HostSample.objects.filter(host=host).count() > since
            ),
            timeout=60,
            what="the agent to reconnect within 60 s",
            process=agent,
        )
    finally:
        agent.stop()
        server.process.stop()
