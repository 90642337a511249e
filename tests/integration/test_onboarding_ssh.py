"""Onboarding over SSH against a real OpenSSH server on loopback.

A private ``sshd -D -e`` (its own host key, config, pid file and authorized_keys in a temporary
folder, 127.0.0.1 only) lets the dedicated user ``rgpu-onboard`` in (created by
``scripts/install-test-deps.sh``; this module sets a random password for it each run). A real
Celery worker runs the onboarding, and a real daphne is the server the new agent joins and
connects to.

The remote ``pip install`` of the agent's wheel (served by that daphne) takes the agent's
dependencies from this machine's pip configuration, copied into the user's
``~/.config/pip/pip.conf`` because ``PIP_*`` variables do not cross SSH: on a closed network
that configuration names the local mirror, which must hold websockets, psutil and
nvidia-ml-py.

Needs root (sshd signs in as another user) and Debian's openssh-server: skipped locally with a
message when either is missing, failed in CI. Every process started here (sshd, the agent's
supervisor loop and the agent) is stopped by pid, also when a test fails.
"""

from __future__ import annotations

import ast
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from django.conf import settings
from django.test import Client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from accounts.tests.factories import OperatorFactory
from machines.choices import HostStatus, OnboardingStatus
from machines.models import Host, OnboardingJob
from machines.services.onboarding import STEPS, onboarding_confirm, onboarding_create
from remotegpu.core.testing import require_executable, require_real_part

from .conftest import DaphneServer, ManagedProcess, _free_port, _start, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SSHD = "/usr/sbin/sshd"
USER = "rgpu-onboard"
TERMINAL = {OnboardingStatus.SUCCEEDED, OnboardingStatus.FAILED, OnboardingStatus.CANCELLED}
RUN_TIMEOUT = 300  # a venv and a pip install, then up to 60 s for the host to come online


def _pip_configuration() -> str:
    """This machine's effective pip configuration (files and PIP_* variables) as one file."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, option = name.rpartition(".")
        section = "global" if section in ("", ":env:") else section
        sections.setdefault(section, {})[option] = ast.literal_eval(value)
    lines = []
    for section, options in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{option} = {value}" for option, value in options.items())
    return "\n".join(lines) + "\n"


def _own(path: Path, account) -> None:
    os.chown(path, account.pw_uid, account.pw_gid)


@pytest.fixture(scope="module")
def onboard_user() -> Iterator[SimpleNamespace]:
    require_executable(SSHD, "apt-get install openssh-server")
    require_real_part(
        os.geteuid() == 0, "root", "run the integration tests as root (sshd signs in as a user)"
    )
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        require_real_part(False, f"the user {USER}", "run scripts/install-test-deps.sh as root")
    password = secrets.token_urlsafe(18)
    subprocess.run(["chpasswd"], input=f"{USER}:{password}\n", text=True, check=True, timeout=30)
    home = Path(account.pw_dir)
    shutil.rmtree(home / ".remotegpu-agent", ignore_errors=True)  # no agent of an earlier run
    pip_dir = home / ".config" / "pip"
    pip_dir.mkdir(parents=True, exist_ok=True)
    (pip_dir / "pip.conf").write_text(_pip_configuration())
    for path in (home / ".config", pip_dir, pip_dir / "pip.conf"):
        _own(path, account)
    yield SimpleNamespace(name=USER, password=password, home=home, account=account)
    shutil.rmtree(pip_dir, ignore_errors=True)


class Sshd:
    """``sshd -D -e`` on a free loopback port, configured and keyed from its own folder."""

    def __init__(self, folder: Path, account):
        self.folder = folder
        self.port = _free_port()
        self.host_key = folder / "ssh_host_ed25519_key"
        self.authorized_keys = folder / "authorized_keys"
        self.authorized_keys.write_text("")
        self.authorized_keys.chmod(0o600)
        _own(self.authorized_keys, account)
        self.config = folder / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {folder / 'sshd.pid'}",
                    "UsePAM no",
                    "PasswordAuthentication yes",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "StrictModes no",
                    f"AllowUsers {USER}",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        self.process: ManagedProcess | None = None
        self.new_host_key()

    def new_host_key(self) -> None:
        self.host_key.unlink(missing_ok=True)
        self.host_key.with_suffix(".pub").unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
            check=True,
            timeout=30,
        )

    def fingerprint(self) -> str:
        printed = subprocess.run(
            ["ssh-keygen", "-lf", f"{self.host_key}.pub"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return printed.stdout.split()[1]

    def start(self) -> None:
        argv = [SSHD, "-D", "-e", "-p", str(self.port), "-f", str(self.config)]
        log_dir = Path(tempfile.mkdtemp(prefix="sshd-log-"))
        self.process = _start(f"sshd-{self.port}", argv, dict(os.environ), log_dir)
        wait_until(self._answers, timeout=15, what="sshd to answer", process=self.process)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(64).startswith(b"SSH-2.0-")
        except OSError:
            return False

    def restart_with_a_new_host_key(self) -> None:
        self.stop()
        self.new_host_key()
        self.start()

    def log(self) -> str:
        return self.process.output() if self.process else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture
def sshd(onboard_user) -> Iterator[Sshd]:
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    folder = Path(tempfile.mkdtemp(prefix="rgpu-sshd-"))
    folder.chmod(0o755)  # sshd reads authorized_keys as the user
    server = Sshd(folder, onboard_user.account)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def started_agent(onboard_user) -> Iterator[Path]:
    """Stops what the onboarding starts on the host: its supervisor loop (pid file) and the
    agent under it (the loop's children, and the pid the agent's status file names)."""
    folder = onboard_user.home / ".remotegpu-agent"
    yield folder
    pids: set[int] = set()
    for path, key in ((folder / "agent.pid", None), (folder / "state" / "status.json", "pid")):
        try:
            text = path.read_text()
            pids.add(int(json.loads(text)[key] if key else text.strip()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    processes = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.username() == USER:
                processes.append(process)
                processes.extend(process.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=5)


def _job(sshd: Sshd, **credentials) -> OnboardingJob:
    job = onboarding_create(
        operator=OperatorFactory(),
        name=credentials.pop("name"),
        address="127.0.0.1",
        port=sshd.port,
        username=USER,
        labels="via=ssh",
        **credentials,
    )
    return wait_until(
        lambda: (
            OnboardingJob.objects.exclude(status=OnboardingStatus.PENDING).filter(pk=job.pk).first()
        ),
        timeout=60,
        what="the scan to read the host key",
    )


def _confirm_and_wait(job: OnboardingJob, server_url: str) -> OnboardingJob:
    onboarding_confirm(
        operator=job.created_by,
        job=job,
        fingerprint=job.host_key_fingerprint,
        server_url=server_url,
    )
    return wait_until(
        lambda: OnboardingJob.objects.filter(pk=job.pk, status__in=TERMINAL).first(),
        timeout=RUN_TIMEOUT,
        what="the onboarding to end",
    )


class JobPage:
    """What an operator's open job page receives: the job's WebSocket, through daphne, with
    the operator's session."""

    def __init__(self, server: DaphneServer, job: OnboardingJob):
        client = Client()
        client.force_login(job.created_by)
        session = client.cookies[settings.SESSION_COOKIE_NAME].value
        self.messages: list[dict] = []
        self._socket = None
        self._reader = threading.Thread(
            target=self._read,
            args=(
                server.ws_url(f"/ws/onboarding/{job.pk}/"),
                server.base_url,
                {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}"},
            ),
            daemon=True,
        )
        self._reader.start()
        wait_until(lambda: self.messages, timeout=15, what="the job's socket to push its state")

    def _read(self, url: str, origin: str, headers: dict) -> None:
        try:
            with connect(url, origin=origin, additional_headers=headers, proxy=None) as socket:
                self._socket = socket
                for raw in socket:
                    self.messages.append(json.loads(raw))
        except ConnectionClosed:
            return

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._reader.join(timeout=5)


def _as_user(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["su", "-s", "/bin/sh", USER, "-c", " ".join(command)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_key_onboards_a_server_end_to_end(
    sshd, onboard_user, started_agent, daphne_server, celery_worker, celery_through_broker, tmp_path
):
    key = tmp_path / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    sshd.authorized_keys.write_text(key.with_suffix(".pub").read_text())

    job = _job(sshd, name="it-onboarded-1", private_key=key.read_text())
    assert job.status == OnboardingStatus.AWAITING_CONFIRMATION, job.error
    assert job.host_key_type == "ssh-ed25519"
    assert job.host_key_fingerprint == sshd.fingerprint()  # what ssh-keygen -lf prints
    assert "Accepted" not in sshd.log()  # the scan signed in to nothing

    page = JobPage(daphne_server, job)
    try:
        job = _confirm_and_wait(job, daphne_server.base_url)
        wait_until(
            lambda: page.messages and page.messages[-1]["status"] == OnboardingStatus.SUCCEEDED,
            timeout=10,
            what="the page to be told the job succeeded",
        )
    finally:
        page.close()
    # Each step's progress reached the page while it ran.
    assert page.messages[0]["status"] == OnboardingStatus.AWAITING_CONFIRMATION
    for name in STEPS:
        running = f'data-step="{name}" data-step-status="running"'
        assert any(running in message["html"] for message in page.messages), name

    steps = {step["name"]: step for step in job.steps}
    assert job.status == OnboardingStatus.SUCCEEDED, (job.error, steps)
    assert list(steps) == list(STEPS)
    assert {step["status"] for step in steps.values()} == {"succeeded"}
    assert f"Accepted publickey for {USER}" in sshd.log()
    assert "background process" in steps["start"]["output"]  # no systemd here
    assert "remotegpu-agent 0.1.0" in steps["install_agent"]["output"]
    assert "rjt_" not in json.dumps(job.steps)
    assert job.secret_encrypted == ""

    host = Host.objects.get(name="it-onboarded-1")
    assert job.host == host
    assert (host.status, host.connected) == (HostStatus.ONLINE, True)
    assert host.labels == {"via": "ssh"}
    assert host.address == "127.0.0.1"

    supervisor = int((started_agent / "agent.pid").read_text())
    assert psutil.Process(supervisor).username() == USER
    agent = started_agent / "venv" / "bin" / "remotegpu-agent"
    status = _as_user([str(agent), "status", "--json", "--state-dir", str(started_agent / "state")])
    report = json.loads(status.stdout)
    assert report["running"] is True, report
    assert report["host_id"] == host.pk
    wait_until(
        lambda: json.loads(
            _as_user(
                [str(agent), "status", "--json", "--state-dir", str(started_agent / "state")]
            ).stdout
        )["connected"],
        timeout=30,
        what="remotegpu-agent status to report the connection",
    )

    # The supervisor restarts an agent that dies.
    killed = report["pid"]
    os.kill(killed, signal.SIGKILL)
    wait_until(
        lambda: _restarted(started_agent, killed),
        timeout=30,
        what="the supervisor to restart the agent",
    )


def _restarted(folder: Path, killed: int) -> bool:
    try:
        pid = json.loads((folder / "state" / "status.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return False
    return pid != killed and psutil.pid_exists(pid)


def test_a_wrong_password_fails_at_connect(
    sshd, onboard_user, celery_worker, celery_through_broker
):
    job = _job(sshd, name="it-onboarded-2", password=onboard_user.password + "-wrong")
    assert job.status == OnboardingStatus.AWAITING_CONFIRMATION, job.error
    job = _confirm_and_wait(job, "http://127.0.0.1:9")
    assert job.status == OnboardingStatus.FAILED
    assert job.step == "connect"
    assert job.error.startswith("connect failed: authentication failed"), job.error
    assert [step["status"] for step in job.steps] == ["failed"]
    assert f"Failed password for {USER}" in sshd.log()
    assert job.secret_encrypted == ""
    assert not Host.objects.filter(name="it-onboarded-2").exists()


def test_a_changed_host_key_fails_at_connect_before_signing_in(
    sshd, onboard_user, celery_worker, celery_through_broker
):
    job = _job(sshd, name="it-onboarded-3", password=onboard_user.password)
    assert job.status == OnboardingStatus.AWAITING_CONFIRMATION, job.error
    confirmed = job.host_key_fingerprint
    sshd.restart_with_a_new_host_key()  # the operator confirmed a key the server no longer has
    assert sshd.fingerprint() != confirmed

    job = _confirm_and_wait(job, "http://127.0.0.1:9")
    assert job.status == OnboardingStatus.FAILED
    assert job.step == "connect"
    assert "host key changed" in job.error
    assert sshd.fingerprint() in job.error
    log = sshd.log()
    assert "Accepted" not in log
    assert "Failed password" not in log  # the password never reached the other key's server
    assert job.secret_encrypted == ""
