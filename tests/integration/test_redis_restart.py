"""Redis restarts under a running system: it recovers by itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from accounts.tests.factories import OperatorFactory
from machines.choices import CommandStatus
from machines.models import AgentCommand, Host, HostSample
from machines.services.commands import command_create
from machines.services.join import join_token_create
from remotegpu.core import embedded

from .conftest import START_TIMEOUT, _answers_healthz, _free_port, _start, http_get, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

AGENT = shutil.which("remotegpu-agent") or str(Path(sys.executable).with_name("remotegpu-agent"))


def _embedded_redis() -> Path | None:
    directory = embedded.data_dir()
    socket = embedded._redis_socket(directory)
    return directory if f"unix://{socket}" == settings.REDIS_URL else None


def test_everything_recovers_after_redis_restarts(process_env, tmp_path):
    directory = _embedded_redis()
    if directory is None:
        pytest.skip("restarting Redis needs the embedded one (REDIS_URL unset), as in CI")
    env = {**process_env, "AGENT_RESYNC_SECONDS": "2"}
    port = _free_port()
    daphne = _start(
        "daphne",
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "remotegpu.asgi:application",
        ],
        env,
        tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    agent = None
    try:
        wait_until(
            lambda: _answers_healthz(base + "/healthz"),
            timeout=START_TIMEOUT,
            what="daphne",
            process=daphne,
        )
        issued = join_token_create(operator=OperatorFactory(), name="redis restart")
        state = tmp_path / "state"
        subprocess.run(
            [
                AGENT,
                "join",
                "--server",
                base,
                "--token",
                issued.plaintext,
                "--name",
                "it-redis",
                "--state-dir",
                str(state),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        agent = _start(
            "agent",
            [
                AGENT,
                "run",
                "--gpu-backend",
                "fake",
                "--heartbeat-interval",
                "1",
                "--state-dir",
                str(state),
            ],
            dict(os.environ),
            tmp_path,
        )
        host = wait_until(
            lambda: Host.objects.filter(name="it-redis", connected=True).first(),
            timeout=START_TIMEOUT,
            what="the agent to connect",
            process=agent,
        )

        embedded.stop_redis(directory)
        assert http_get(base + "/readyz")[0] == 503
        time.sleep(1)
        embedded.start_redis(directory)

        wait_until(
            lambda: http_get(base + "/readyz")[0] == 200,
            timeout=30,
            what="/readyz to be ready again",
            process=daphne,
        )
        # Heartbeats never needed Redis; they are still stored.
        before = HostSample.objects.filter(host=host).count()
        wait_until(
            lambda: HostSample.objects.filter(host=host).count() > before + 2,
            timeout=15,
            what="heartbeats after the restart",
            process=agent,
        )
        # The command's push goes through Redis, whose groups the restart emptied: the
        # connection's periodic resync rejoins its group and sends what was missed.
        command = command_create(host=host, kind="ping")
        wait_until(
            lambda: AgentCommand.objects.filter(
                pk=command.pk, status=CommandStatus.SUCCEEDED
            ).exists(),
            timeout=30,
            what="a command created after the restart to run",
            process=agent,
        )
        assert Host.objects.get(pk=host.pk).connected
    finally:
        if agent is not None:
            agent.stop()
        daphne.stop()
        embedded.start_redis(directory)  # whatever happened, leave Redis running
