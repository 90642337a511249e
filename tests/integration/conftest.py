"""Real product processes (Celery worker, daphne) started against the test database and Redis.

Each process is a child of the test run: it gets the same ``REDIS_URL`` and a ``DATABASE_URL``
that points at the database pytest-django created, writes its output to a log file that is
attached to the report of any failing test, and is always stopped when its fixture ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings
from django.db import connection

if TYPE_CHECKING:
    from machines.models import Host

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT = shutil.which("remotegpu-agent") or str(Path(sys.executable).with_name("remotegpu-agent"))
AGENT_INTERVAL = 1  # seconds between the heartbeats of agents the tests start
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 200

# Processes alive right now, so a failing test's report can show what they printed.
_running: list[ManagedProcess] = []


class ManagedProcess:
    """A child process in its own session, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _running.append(self)

    def output(self, tail: int = LOG_TAIL_LINES) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])

    def ensure_running(self) -> None:
        if self.popen.poll() is not None:
            pytest.fail(
                f"{self.name} exited with status {self.popen.returncode}:\n{self.output()}",
                pytrace=False,
            )

    def stop(self) -> None:
        """SIGTERM its process group (a graceful shutdown), SIGKILL if it lingers."""
        if self in _running:
            _running.remove(self)
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    what: str,
    process: ManagedProcess | None = None,
    interval: float = 0.2,
):
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout``.

    When ``process`` is given, its death ends the wait at once with its output.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if process is not None:
            process.ensure_running()
        if time.monotonic() > deadline:
            detail = f"\n{process.name} output:\n{process.output()}" if process else ""
            message = f"timed out after {timeout:.0f} s waiting for {what}{detail}"
            pytest.fail(message, pytrace=False)
        time.sleep(interval)


def attach_process_output(report) -> None:
    """Add the output of every running product process to a failing test's report."""
    if report.failed:
        for process in _running:
            title = f"{process.name} output ({process.log_path})"
            report.sections.append((title, process.output()))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    attach_process_output(report)
    return report


def database_url_for_tests() -> str:
    """``settings.DATABASE_URL`` with its database replaced by pytest-django's test database."""
    parts = urlsplit(settings.DATABASE_URL)
    return urlunsplit(parts._replace(path="/" + connection.settings_dict["NAME"]))


@pytest.fixture(scope="session")
def process_env(django_db_setup) -> dict[str, str]:
    """Environment for product processes: test settings, test database, same Redis, no eager.

    Never with Django's async-safety check off, whatever this process needs (Playwright)."""
    inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    return {
        **inherited,
        "DJANGO_SETTINGS_MODULE": "remotegpu.settings.test",
        "DATABASE_URL": database_url_for_tests(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        # Real agents answer: give them the production wait for an environment's output.
        "ENVIRONMENT_LOGS_TIMEOUT": "10",
        "PYTHONUNBUFFERED": "1",
    }


def join_agent(server: DaphneServer, state: Path, name: str) -> str:
    """``remotegpu-agent join`` against ``server`` with a fresh join token; the credential."""
    from accounts.tests.factories import OperatorFactory
    from machines.services.join import join_token_create

    operator = OperatorFactory()
    issued = join_token_create(operator=operator, name="integration", labels={"rack": "a1"})
    result = subprocess.run(
        [
            AGENT,
            "join",
            "--server",
            server.base_url,
            "--token",
            issued.plaintext,
            "--name",
            name,
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rhc_" not in result.stdout + result.stderr  # the credential is never printed
    config = state / "config.json"
    assert config.stat().st_mode & 0o777 == 0o600
    return json.loads(config.read_text())["credential"]


def _start(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> ManagedProcess:
    return ManagedProcess(name, argv, env, log_dir / f"{name}.log")


def start_agent(
    state: Path,
    control: Path,
    log_dir: Path,
    name: str = "agent",
    extra_args: tuple[str, ...] = ("--no-docker",),
) -> ManagedProcess:
    """``remotegpu-agent run`` from ``state``: two fake GPUs steered by the ``control`` file,
    a heartbeat every ``AGENT_INTERVAL`` seconds; without Docker unless ``extra_args`` say
    otherwise (``()``: the host's Docker Engine, ports published on all addresses)."""
    argv = [
        AGENT,
        "run",
        "--gpu-backend",
        "fake",
        "--fake-gpus",
        "2",
        "--fake-control",
        str(control),
        "--heartbeat-interval",
        str(AGENT_INTERVAL),
        "--state-dir",
        str(state),
        "--ssh-port",  # the SSH gateway (with Docker) on any free port: tests run side by side
        "0",
        *extra_args,
    ]
    return _start(name, argv, dict(os.environ), log_dir)


@contextmanager
def docker_agent(
    server: DaphneServer, log_dir: Path, name: str
) -> Iterator[tuple[Host, ManagedProcess, Path, Path]]:
    """An agent joined as ``name`` and driving the host's Docker Engine (ports published on
    loopback), yielded once its host is online, its containers listed and its two fake GPUs
    counted for placement: ``(host, agent, state dir, fake-GPU control file)``. The agent is
    stopped and every labelled container removed at the end."""
    from machines.choices import HostStatus
    from machines.models import Host
    from remotegpu.core.testing_docker import remove_labelled, require_docker

    client = require_docker()
    state, control = log_dir / "state", log_dir / "fake-gpus.json"
    control.write_text("{}")
    join_agent(server, state, name)
    agent = start_agent(state, control, log_dir, extra_args=("--publish-address", "127.0.0.1"))
    try:
        host = wait_until(
            lambda: Host.objects.filter(
                name=name, status=HostStatus.ONLINE, connected=True, containers_known=True
            ).first(),
            timeout=START_TIMEOUT,
            what="the agent's host online with Docker",
            process=agent,
        )
        # Placement counts healthy GPUs per model (``HostGPUModel``), kept apart from the GPU
        # rows: a create sent before both are written finds no capacity.
        wait_until(
            lambda: host.gpus.count() == 2 and host.gpu_counts.filter(healthy=2).exists(),
            timeout=10,
            what="its GPUs counted for placement",
            process=agent,
        )
        yield host, agent, state, control
    finally:
        agent.stop()
        remove_labelled(client)


@pytest.fixture(scope="module")
def celery_worker(process_env, tmp_path_factory) -> Iterator[ManagedProcess]:
    """A real ``celery -A remotegpu worker``, answering pings on the test broker."""
    from remotegpu.celery import app

    node = f"integration-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "remotegpu",
        "worker",
        "--pool=solo",
        "--loglevel=INFO",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        f"--hostname={node}",
    ]
    worker = _start("celery-worker", argv, process_env, tmp_path_factory.mktemp("celery"))
    try:
        wait_until(
            lambda: app.control.ping(destination=[node], timeout=0.5),
            timeout=START_TIMEOUT,
            what=f"Celery worker {node} to answer a ping",
            process=worker,
        )
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def celery_through_broker():
    """Send tasks from this process through the broker, as production does, not eagerly."""
    from remotegpu.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    yield app
    app.conf.task_always_eager = previous


class DaphneServer:
    def __init__(self, process: ManagedProcess, port: int):
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Status and body of a GET; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _answers_healthz(url: str) -> bool:
    try:
        return http_get(url, timeout=1.0)[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def daphne_server(process_env, tmp_path_factory) -> Iterator[DaphneServer]:
    """A real ``daphne remotegpu.asgi:application`` on a free loopback port."""
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
    process = _start("daphne", argv, process_env, tmp_path_factory.mktemp("daphne"))
    server = DaphneServer(process, port)
    try:
        wait_until(
            lambda: _answers_healthz(server.url("/healthz")),
            timeout=START_TIMEOUT,
            what=f"daphne to answer {server.url('/healthz')}",
            process=process,
        )
        yield server
    finally:
        process.stop()
