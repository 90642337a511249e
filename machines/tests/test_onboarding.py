"""Onboarding over SSH: the state machine, the secret's life, host keys and every step, against
paramiko's in-process SSH server (``ssh_server.FakeSshServer``) on a loopback port. The SSH
seam is real SSH; only the shell behind it is played by Python (the real OpenSSH server is in
tests/integration/test_onboarding_ssh.py)."""

from __future__ import annotations

import configparser
import io
import logging
import os
import re
import shlex
import socket
import subprocess
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import OperatorFactory, UserFactory
from machines.choices import HostStatus, OnboardingAuth, OnboardingStatus
from machines.consumers.onboarding import OnboardingConsumer
from machines.models import Host, JoinToken, OnboardingJob
from machines.services import onboarding as services
from machines.services.hosts import host_connected
from machines.services.join import host_join
from machines.services.onboarding_ssh import (
    START_SCRIPT,
    SshSecret,
    host_key_fingerprint,
    private_key_load,
)
from machines.tasks import onboarding_run_task
from remotegpu.core.errors import Conflict, PermissionDenied, ValidationError
from remotegpu.core.testing import require_executable

from .factories import HostFactory, RegionFactory
from .ssh_server import FakeSshServer, ed25519_key, ed25519_private_pem

PASSWORD = "correct horse battery staple"
SERVER_URL = "http://control.example.test:8000"
S = OnboardingStatus


def _variable(script: str, name: str) -> str:
    match = re.search(rf"^{name}=(.*)$", script, re.MULTILINE)
    return shlex.split(match.group(1))[0] if match else ""


class FakeHost:
    """Answers the onboarding's commands as a healthy Linux server would. The ``join`` really
    joins (the token is traded through ``host_join``) and ``start`` brings the host online, as
    the agent would."""

    def __init__(self):
        self.python = "(3, 11)"
        self.docker = True
        # step -> (status, output), or a function of the command and its standard input
        self.failures: dict = {}
        self.stdin: dict[str, str] = {}  # step -> what its command was given on stdin
        self.comes_online = True

    def __call__(self, command: str, stdin: str) -> tuple[int, str]:
        step = self._step(command)
        self.stdin[step] = stdin
        if step in self.failures:
            failure = self.failures[step]
            return failure(command, stdin) if callable(failure) else failure
        return getattr(self, f"_{step}")(command, stdin)

    @staticmethod
    def _step(command: str) -> str:
        if "sys.version_info" in command:
            return "check_python"
        if command.startswith("docker"):
            return "check_docker"
        if "pip install" in command:
            return "install_agent"
        if 'remotegpu-agent" join' in command:
            return "join"
        if "supervise.sh" in command:
            return "start"
        return "log"

    def _check_python(self, command, stdin):
        return 0, self.python + "\n"

    def _check_docker(self, command, stdin):
        if self.docker:
            return 0, "Docker version 27.1.1, build 6312585\n"
        return 127, "sh: 1: docker: not found\n"

    def _install_agent(self, command, stdin):
        url = _variable(command, "wheel_url")
        return 0, f"Processing {url}\nSuccessfully installed remotegpu-agent-0.1.0\n"

    def _join(self, command, stdin):
        token, name = stdin.strip(), _variable(command, "name")
        joined = host_join(token=token, name=name)
        # An agent that echoed its token: the stored output must not show it.
        return 0, f"joined as {joined.host.name} (host {joined.host.pk}) with {token}\n"

    def _start(self, command, stdin):
        if self.comes_online:
            for host in Host.objects.filter(status=HostStatus.PENDING):
                host_connected(host, "fake-agent")
        return 0, "started as a background process: supervisor pid 4242\n"

    def _log(self, command, stdin):
        return 0, "agent: cannot reach the server\n"


@pytest.fixture
def fake_host():
    return FakeHost()


@pytest.fixture
def ssh_server(fake_host):
    server = FakeSshServer(fake_host, password=PASSWORD)
    yield server
    server.close()


def _create(server: FakeSshServer, **overrides) -> OnboardingJob:
    values = {
        "operator": OperatorFactory(),
        "name": "gpu-new-01",
        "address": "127.0.0.1",
        "port": server.port,
        "username": "root",
        "password": PASSWORD,
        "labels": "rack=b2",
    }
    values.update(overrides)
    return services.onboarding_create(**values)


def _step(job: OnboardingJob, name: str) -> dict:
    return next(step for step in job.steps if step["name"] == name)


def _confirm_and_run(job: OnboardingJob) -> OnboardingJob:
    """Confirm what the scan read; the run task runs eagerly on commit."""
    services.onboarding_confirm(
        operator=job.created_by,
        job=job,
        fingerprint=job.host_key_fingerprint,
        server_url=SERVER_URL + "/",
    )
    job.refresh_from_db()
    return job


# Keys and secrets --------------------------------------------------------------------------


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path):
    ssh_keygen = require_executable("ssh-keygen", "apt-get install openssh-client")
    for key_type in ("ed25519", "rsa", "ecdsa"):
        path = tmp_path / f"id_{key_type}"
        subprocess.run(
            [ssh_keygen, "-q", "-t", key_type, "-N", "", "-f", str(path)], check=True, timeout=30
        )
        printed = subprocess.run(
            [ssh_keygen, "-lf", f"{path}.pub"], check=True, capture_output=True, text=True
        ).stdout.split()[1]
        key = private_key_load(path.read_text())
        assert host_key_fingerprint(key) == printed
        assert printed.startswith("SHA256:")
        assert not printed.endswith("=")


def test_private_keys_load_with_and_without_passphrase():
    assert private_key_load(ed25519_private_pem()).get_name() == "ssh-ed25519"
    encrypted = ed25519_private_pem(passphrase="open sesame")
    assert private_key_load(encrypted, "open sesame").get_name() == "ssh-ed25519"
    with pytest.raises(ValidationError) as missing:
        private_key_load(encrypted)
    assert "passphrase" in str(missing.value.fields["private_key"])
    with pytest.raises(ValidationError):
        private_key_load(encrypted, "wrong passphrase")
    with pytest.raises(ValidationError):
        private_key_load("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO not a private key")


# What runs on the server ---------------------------------------------------------------------


def _heredoc(script: str, opening: str, closing: str) -> str:
    return script.split(opening + "\n", 1)[1].split("\n" + closing + "\n", 1)[0] + "\n"


def test_the_systemd_unit_does_not_restart_a_refused_or_misconfigured_agent():
    unit = configparser.ConfigParser(interpolation=None)
    unit.read_string(_heredoc(START_SCRIPT, "<<UNIT", "UNIT"))
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["RestartSec"] == "5"
    assert service["RestartPreventExitStatus"].split() == ["2", "3"]
    sh = require_executable("sh", "apt-get install dash")
    subprocess.run([sh, "-n"], input=START_SCRIPT, text=True, check=True, timeout=10)


@pytest.mark.parametrize("final", [2, 3])
def test_the_supervise_loop_restarts_the_agent_until_a_final_status(tmp_path, final):
    """supervise.sh as START_SCRIPT installs it, with a fake agent that fails once (status 1:
    restarted) and then exits ``final`` (the loop logs why and ends), and an instant ``sleep``."""
    sh = require_executable("sh", "apt-get install dash")
    home = tmp_path / "home"
    agent_dir = home / ".remotegpu-agent"
    (agent_dir / "venv" / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    agent = agent_dir / "venv" / "bin" / "remotegpu-agent"
    agent.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n[ "$(wc -l < {calls})" -ge 2 ] && exit {final}\nexit 1\n'
    )
    agent.chmod(0o755)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sleep").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "sleep").chmod(0o755)
    supervise = agent_dir / "supervise.sh"
    supervise.write_text(_heredoc(START_SCRIPT, "<<'LOOP'", "LOOP"))

    result = subprocess.run(
        [sh, str(supervise)],
        env={**os.environ, "HOME": str(home), "PATH": f"{fake_bin}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=10,
    )

    assert result.returncode == final, result
    assert (
        calls.read_text().splitlines()
        == [f"run --state-dir {agent_dir}/state --log-file {agent_dir}/agent.log"] * 2
    )
    assert not (agent_dir / "agent.pid").exists()
    logged = (agent_dir / "agent.log").read_text()
    assert f"remotegpu-agent exited with status {final}," in logged
    assert "not restarting it" in logged


def test_the_secret_is_stored_encrypted_and_its_repr_hides_it(db, settings):
    job = _create_without_scan(password=PASSWORD)
    assert job.auth_method == OnboardingAuth.PASSWORD
    assert job.secret_encrypted
    assert PASSWORD not in job.secret_encrypted
    assert services.secret_decrypt(job.secret_encrypted).password == PASSWORD
    assert PASSWORD not in repr(services.secret_decrypt(job.secret_encrypted))
    # The key is derived from SECRET_KEY: another key cannot read it.
    settings.SECRET_KEY = "another-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
    with pytest.raises(services.SecretUnavailable):
        services.secret_decrypt(job.secret_encrypted)
    with pytest.raises(services.SecretUnavailable):
        services.secret_decrypt("")


def _create_without_scan(**overrides) -> OnboardingJob:
    """Through the service; outside ``transaction=True`` tests the scan queued on commit never
    runs, so no address is contacted."""
    values = {
        "operator": OperatorFactory(),
        "name": "gpu-new-02",
        "address": "10.9.8.7",
        "username": "ubuntu",
    }
    values.update(overrides)
    return services.onboarding_create(**values)


def test_create_checks_its_input(db):
    HostFactory(name="taken", address="10.0.0.99")
    cases = [
        ({}, "password"),  # neither password nor key
        ({"password": "x", "private_key": ed25519_private_pem()}, "password"),  # both
        ({"private_key": "garbage"}, "private_key"),
        ({"private_key": ed25519_private_pem(passphrase="pp")}, "private_key"),
        ({"password": "x", "name": "taken"}, "name"),
        ({"password": "x", "address": "10.0.0.99"}, "address"),
        ({"password": "x", "port": 70000}, "port"),
        ({"password": "x", "username": "two words"}, "username"),
        ({"password": "x", "labels": "not a label"}, "labels"),
    ]
    for overrides, field in cases:
        with pytest.raises(ValidationError) as error:
            _create_without_scan(**overrides)
        assert field in error.value.fields, (overrides, error.value.fields)
    with pytest.raises(PermissionDenied):
        _create_without_scan(operator=UserFactory(), password="x")
    assert not OnboardingJob.objects.exists()

    key = ed25519_private_pem(passphrase="pp")
    job = _create_without_scan(private_key=key, passphrase="pp", region=RegionFactory())
    assert job.auth_method == OnboardingAuth.PRIVATE_KEY
    assert job.status == S.PENDING
    assert "PRIVATE KEY" not in job.secret_encrypted


# The scan ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_scan_reads_the_host_key_and_sends_no_secret(ssh_server):
    job = _create(ssh_server)  # the scan task runs on commit (eager Celery)
    job.refresh_from_db()
    assert job.status == S.AWAITING_CONFIRMATION
    assert job.host_key_type == "ssh-ed25519"
    assert job.host_key_fingerprint == host_key_fingerprint(ssh_server.host_key)
    assert not job.host_key_confirmed
    assert ssh_server.auth_attempts == []  # nothing is accepted, nothing is sent
    assert ssh_server.commands == []
    assert job.secret_encrypted  # kept until the job ends


def _job_for_a_closed_port(operator):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    job = services.onboarding_create(
        operator=operator,
        name="gone",
        address="127.0.0.1",
        port=port,
        username="root",
        password=PASSWORD,
    )
    job.refresh_from_db()
    return job


@pytest.mark.django_db(transaction=True)
def test_a_jobs_errors_are_written_in_its_operators_language():
    job = _job_for_a_closed_port(OperatorFactory(language="zh-hans"))
    assert job.status == S.FAILED
    assert "failed" not in job.error
    assert "失败" in job.error


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_server_fails_the_scan_and_wipes_the_secret():
    job = _job_for_a_closed_port(OperatorFactory())
    assert job.status == S.FAILED
    assert job.step == "connect"
    assert job.error == "connect failed: the connection was refused"
    assert job.secret_encrypted == ""
    assert job.finished_at is not None


# The run -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_confirmed_job_runs_every_step_and_ends_with_the_host_online(
    ssh_server, fake_host, caplog
):
    caplog.set_level(logging.DEBUG)
    job = _create(ssh_server)
    job.refresh_from_db()
    job = _confirm_and_run(job)

    assert job.status == S.SUCCEEDED, job.error
    assert job.host_key_confirmed
    assert [step["name"] for step in job.steps] == list(services.STEPS)
    assert {step["status"] for step in job.steps} == {"succeeded"}
    assert all(step["started_at"] and step["finished_at"] for step in job.steps)
    assert job.error == ""
    assert job.secret_encrypted == ""
    assert job.finished_at is not None

    host = Host.objects.get(name="gpu-new-01")
    assert job.host == host
    assert host.status == HostStatus.ONLINE
    assert host.address == "127.0.0.1"
    assert host.labels == {"rack": "b2"}
    token = JoinToken.objects.get()
    assert (token.uses, token.max_uses) == (1, 1)

    assert ssh_server.auth_attempts == [("root", "password")]
    assert "Docker version 27.1.1" in _step(job, "check_docker")["output"]
    assert _step(job, "check_docker")["warning"] == ""
    wheel = f"{SERVER_URL}/agent/download/remotegpu_agent-"
    assert wheel in _step(job, "install_agent")["output"]
    join_output = _step(job, "join")["output"]
    assert "joined as gpu-new-01" in join_output
    assert "[hidden]" in join_output
    assert "rjt_" not in join_output
    # The token went on the join command's standard input, on no command line (which anyone on
    # the server could read in its process list).
    assert fake_host.stdin["join"].startswith("rjt_")
    assert not any("rjt_" in command for command in ssh_server.commands)
    assert fake_host.stdin["install_agent"] == ""
    assert "pid 4242" in _step(job, "start")["output"]
    assert "online" in _step(job, "verify")["output"]

    stored = str(OnboardingJob.objects.filter(pk=job.pk).values().get())
    assert PASSWORD not in stored
    assert "rjt_" not in stored
    assert PASSWORD not in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_private_key_authenticates_and_missing_docker_only_warns(fake_host):
    private_key = ed25519_private_pem()
    server = FakeSshServer(fake_host, public_key=private_key_load(private_key))
    fake_host.docker = False
    try:
        job = _create(server, password="", private_key=private_key)
        job.refresh_from_db()
        job = _confirm_and_run(job)
    finally:
        server.close()
    assert job.status == S.SUCCEEDED, job.error
    assert server.auth_attempts == [("root", "publickey")]
    docker = _step(job, "check_docker")
    assert docker["status"] == "succeeded"
    assert "Docker was not found" in docker["warning"]


@pytest.mark.django_db(transaction=True)
def test_a_wrong_password_fails_at_connect(ssh_server):
    ssh_server.password = "the real password"
    job = _create(ssh_server)
    job.refresh_from_db()
    job = _confirm_and_run(job)
    assert job.status == S.FAILED
    assert job.step == "connect"
    assert job.error.startswith("connect failed: authentication failed")
    assert [(step["name"], step["status"]) for step in job.steps] == [("connect", "failed")]
    assert ssh_server.commands == []
    assert job.secret_encrypted == ""
    assert not JoinToken.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_changed_host_key_fails_at_connect_before_anything_is_sent(ssh_server):
    job = _create(ssh_server)
    job.refresh_from_db()
    confirmed = job.host_key_fingerprint
    ssh_server.host_key = ed25519_key()  # another machine answers at the same address
    job = _confirm_and_run(job)
    assert job.status == S.FAILED
    assert job.step == "connect"
    assert "host key changed" in job.error
    assert confirmed in job.error
    assert host_key_fingerprint(ssh_server.host_key) in job.error
    assert ssh_server.auth_attempts == []  # the password never went to the impostor
    assert job.secret_encrypted == ""


@pytest.mark.django_db(transaction=True)
def test_an_old_python_fails_at_check_python(ssh_server, fake_host):
    fake_host.python = "(3, 8)"
    job = _create(ssh_server)
    job.refresh_from_db()
    job = _confirm_and_run(job)
    assert job.status == S.FAILED
    assert job.error == "check_python failed: Python 3.8 is too old: the agent needs 3.10 or newer"
    assert [step["status"] for step in job.steps] == ["succeeded", "failed"]


@pytest.mark.django_db(transaction=True)
def test_a_failed_install_names_the_step_and_the_last_line(ssh_server, fake_host):
    fake_host.failures["install_agent"] = (
        1,
        "Collecting websockets\nERROR: No matching distribution\n",
    )
    job = _create(ssh_server)
    job.refresh_from_db()
    job = _confirm_and_run(job)
    assert job.status == S.FAILED
    assert job.step == "install_agent"
    assert job.error == "install_agent failed: exit status 1: ERROR: No matching distribution"
    assert "Collecting websockets" in _step(job, "install_agent")["output"]
    assert not JoinToken.objects.exists()  # no token minted for a host that cannot use it


@pytest.mark.django_db(transaction=True)
def test_a_refused_join_revokes_its_token_and_hides_it(ssh_server, fake_host):
    fake_host.failures["join"] = lambda command, stdin: (
        2,
        f"remotegpu-agent: join refused for {stdin.strip()}\n",
    )
    job = _create(ssh_server)
    job.refresh_from_db()
    job = _confirm_and_run(job)
    assert job.status == S.FAILED
    assert job.error == "join failed: exit status 2: remotegpu-agent: join refused for [hidden]"
    assert "rjt_" not in str(job.steps)
    assert JoinToken.objects.get().revoked_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_host_that_never_comes_online_fails_at_verify(ssh_server, fake_host, monkeypatch):
    monkeypatch.setattr(services, "VERIFY_TIMEOUT", 1)
    monkeypatch.setattr(services, "VERIFY_POLL", 0.1)
    fake_host.comes_online = False
    job = _create(ssh_server)
    job.refresh_from_db()
    job = _confirm_and_run(job)
    assert job.status == S.FAILED
    assert job.error == "verify failed: the host did not come online within 1 s"
    assert "cannot reach the server" in _step(job, "verify")["output"]  # the agent's log


# Confirming, cancelling, expiring ----------------------------------------------------------


def _awaiting(**fields) -> OnboardingJob:
    """A job whose host key was read (made directly: no scan reaches out to any address)."""
    values = {
        "name": "gpu-new-03",
        "address": "192.0.2.10",
        "username": "root",
        "auth_method": OnboardingAuth.PASSWORD,
        "secret_encrypted": services.secret_encrypt(SshSecret(password=PASSWORD)),
        "status": S.AWAITING_CONFIRMATION,
        "host_key_type": "ssh-ed25519",
        "host_key_fingerprint": "SHA256:" + "A" * 43,
        "created_by": OperatorFactory(),
    }
    values.update(fields)
    return OnboardingJob.objects.create(**values)


def test_confirming_needs_the_fingerprint_shown_and_a_waiting_job(
    db, django_capture_on_commit_callbacks
):
    job = _awaiting()
    with pytest.raises(ValidationError) as error:
        services.onboarding_confirm(
            operator=job.created_by, job=job, fingerprint="SHA256:other", server_url=SERVER_URL
        )
    assert "fingerprint" in error.value.fields
    with pytest.raises(ValidationError) as error:
        services.onboarding_confirm(
            operator=job.created_by,
            job=job,
            fingerprint=job.host_key_fingerprint,
            server_url="ftp://nope",
        )
    assert "server_url" in error.value.fields
    with pytest.raises(PermissionDenied):
        services.onboarding_confirm(
            operator=UserFactory(),
            job=job,
            fingerprint=job.host_key_fingerprint,
            server_url=SERVER_URL,
        )
    job.refresh_from_db()
    assert job.status == S.AWAITING_CONFIRMATION

    with django_capture_on_commit_callbacks() as callbacks:
        services.onboarding_confirm(
            operator=job.created_by,
            job=job,
            fingerprint=job.host_key_fingerprint,
            server_url=SERVER_URL,
        )
    job.refresh_from_db()
    assert (job.status, job.host_key_confirmed) == (S.RUNNING, True)
    assert len(callbacks) >= 1  # the run task, sent once committed
    with pytest.raises(Conflict):
        services.onboarding_confirm(
            operator=job.created_by,
            job=job,
            fingerprint=job.host_key_fingerprint,
            server_url=SERVER_URL,
        )
    with pytest.raises(Conflict):
        services.onboarding_cancel(operator=job.created_by, job=job)


def test_cancelling_wipes_the_secret(db):
    job = _awaiting()
    services.onboarding_cancel(operator=job.created_by, job=job)
    job.refresh_from_db()
    assert job.status == S.CANCELLED
    assert job.secret_encrypted == ""
    assert job.finished_at is not None


def test_a_redelivered_run_fails_instead_of_running_twice(db):
    job = _awaiting()
    OnboardingJob.objects.filter(pk=job.pk).update(
        status=S.RUNNING,
        step="install_agent",
        steps=[
            {"name": "connect", "status": "succeeded"},
            {"name": "install_agent", "status": "running"},
        ],
    )
    assert onboarding_run_task.delay(job.pk, SERVER_URL).get() == S.FAILED
    job.refresh_from_db()
    assert job.error.startswith("install_agent failed: the run was interrupted")
    assert job.secret_encrypted == ""


def test_stale_jobs_end_and_lose_their_secret(db):
    fresh = _awaiting()
    stale_waiting = _awaiting(name="w")
    stale_pending = _create_without_scan(name="p", address="10.1.1.1", password=PASSWORD)
    stale_running = _create_without_scan(name="r", address="10.1.1.2", password=PASSWORD)
    OnboardingJob.objects.filter(pk=stale_running.pk).update(status=S.RUNNING, step="install_agent")
    old = timezone.now() - timedelta(hours=2)
    OnboardingJob.objects.exclude(pk=fresh.pk).update(updated_at=old)

    assert services.onboarding_expire_stale() == 3
    statuses = dict(OnboardingJob.objects.values_list("pk", "status"))
    assert statuses == {
        fresh.pk: S.AWAITING_CONFIRMATION,
        stale_waiting.pk: S.CANCELLED,
        stale_pending.pk: S.FAILED,
        stale_running.pk: S.FAILED,
    }
    assert OnboardingJob.objects.exclude(pk=fresh.pk).filter(secret_encrypted="").count() == 3
    running = OnboardingJob.objects.get(pk=stale_running.pk)
    assert running.error == "install_agent failed: the run stopped making progress"


# Pages -------------------------------------------------------------------------------------


def test_the_form_starts_a_job_and_never_shows_the_secret_again(
    client, db, django_capture_on_commit_callbacks
):
    operator = OperatorFactory()
    client.force_login(operator)
    url = reverse("machines:onboarding_list")
    assert client.get(reverse("machines:host_list")).content.decode().count(url) == 1
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(
            url,
            {
                "name": "gpu-form-01",
                "address": "10.2.3.4",
                "port": "2222",
                "username": "ubuntu",
                "password": PASSWORD,
                "labels": "zone=c",
            },
        )
    job = OnboardingJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("machines:onboarding_detail", args=[job.pk])
    assert len(callbacks) == 1  # the scan task
    assert (job.port, job.username, job.labels) == (2222, "ubuntu", {"zone": "c"})
    for page in (url, response["Location"]):
        body = client.get(page).content.decode()
        assert "gpu-form-01" in body
        assert PASSWORD not in body

    response = client.post(url, {"name": "x", "address": "10.2.3.5", "port": "22", "username": "u"})
    assert response.status_code == 200
    assert "one of them" in response.content.decode()


def test_the_page_shows_the_fingerprint_and_confirms_it(
    client, db, django_capture_on_commit_callbacks
):
    job = _awaiting()
    client.force_login(job.created_by)
    detail = reverse("machines:onboarding_detail", args=[job.pk])
    body = client.get(detail).content.decode()
    assert job.host_key_fingerprint in body
    assert 'value="http://testserver"' in body  # the URL this browser used
    assert f'data-ws="/ws/onboarding/{job.pk}/"' in body
    assert 'hx-trigger="every 2s' in body

    confirm = reverse("machines:onboarding_confirm", args=[job.pk])
    response = client.post(confirm, {"fingerprint": "SHA256:stale", "server_url": SERVER_URL})
    assert response.status_code == 400
    assert "host key changed since the page was shown" in response.content.decode()
    with django_capture_on_commit_callbacks():
        response = client.post(
            confirm, {"fingerprint": job.host_key_fingerprint, "server_url": SERVER_URL}
        )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == S.RUNNING

    progress = reverse("machines:onboarding_progress", args=[job.pk])
    stale = client.get(progress, {"status": S.AWAITING_CONFIRMATION})
    assert stale.status_code == 204
    assert stale["HX-Refresh"] == "true"
    current = client.get(progress, {"status": S.RUNNING})
    assert current.status_code == 200
    assert 'data-step="install_agent"' in current.content.decode()


def test_onboarding_pages_are_for_operators_only(client, db):
    job = _awaiting()
    client.force_login(UserFactory())
    for name in ("onboarding_detail", "onboarding_progress"):
        assert client.get(reverse(f"machines:{name}", args=[job.pk])).status_code == 404
    assert client.get(reverse("machines:onboarding_list")).status_code == 404
    response = client.post(
        reverse("machines:onboarding_confirm", args=[job.pk]),
        {"fingerprint": job.host_key_fingerprint, "server_url": SERVER_URL},
    )
    assert response.status_code == 404
    job.refresh_from_db()
    assert job.status == S.AWAITING_CONFIRMATION


def test_the_agent_wheel_is_built_once_and_served(client, db, settings, tmp_path):
    settings.AGENT_WHEEL_DIR = tmp_path
    version = services.agent_version()
    url = reverse("agent_wheel_download", kwargs={"version": version})
    assert url == f"/agent/download/remotegpu_agent-{version}-py3-none-any.whl"
    response = client.get(url)  # anonymous: the host has no account
    assert response.status_code == 200
    data = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(f"remotegpu_agent-{version}.dist-info/METADATA").decode()
    assert "remotegpu_agent/cli.py" in names
    assert f"Version: {version}" in metadata
    assert "Requires-Dist: websockets" in metadata
    built = list(Path(tmp_path).rglob("*.whl"))
    assert len(built) == 1
    modified = built[0].stat().st_mtime_ns
    assert client.get(url).status_code == 200
    assert built[0].stat().st_mtime_ns == modified  # served from the cache, not rebuilt
    assert client.get(url.replace(version, "0.0.0")).status_code == 404
    assert client.post(url).status_code == 405


# The live socket ---------------------------------------------------------------------------


def _communicator(user, job_id: int) -> WebsocketCommunicator:
    consumer = OnboardingConsumer.as_asgi()

    async def application(scope, receive, send):
        scope = {**scope, "user": user, "url_route": {"kwargs": {"job_id": job_id}}}
        return await consumer(scope, receive, send)

    return WebsocketCommunicator(application, f"/ws/onboarding/{job_id}/")


@pytest.mark.django_db(transaction=True)
def test_the_socket_pushes_the_rendered_steps_to_operators_on_every_change():
    job = _awaiting()
    operator = job.created_by
    progress = services._Progress(job.pk, secrets=[])
    OnboardingJob.objects.filter(pk=job.pk).update(status=S.RUNNING)

    async def scenario():
        communicator = _communicator(operator, job.pk)
        connected, _ = await communicator.connect(timeout=3)
        assert connected
        first = await communicator.receive_json_from(timeout=3)
        await _in_thread(progress.begin, "connect")
        second = await communicator.receive_json_from(timeout=3)
        await communicator.disconnect()
        return first, second

    first, second = async_to_sync(scenario)()
    assert first["type"] == "onboarding"
    assert first["status"] == S.RUNNING
    assert 'data-step="connect" data-step-status="waiting"' in first["html"]
    assert 'data-step="connect" data-step-status="running"' in second["html"]


async def _in_thread(function, *args):
    from channels.db import database_sync_to_async

    return await database_sync_to_async(function)(*args)


@pytest.mark.django_db(transaction=True)
def test_the_socket_refuses_everyone_but_operators():
    job = _awaiting()
    operator = job.created_by

    async def close_code(user, job_id):
        communicator = _communicator(user, job_id)
        connected, code = await communicator.connect(timeout=3)
        assert not connected
        return code

    assert async_to_sync(close_code)(AnonymousUser(), job.pk) == 4401
    assert async_to_sync(close_code)(UserFactory(), job.pk) == 4404
    assert async_to_sync(close_code)(operator, job.pk + 1000) == 4404


@pytest.mark.django_db(transaction=True)
def test_the_socket_route_takes_the_operators_session_from_an_allowed_origin(client):
    from remotegpu.asgi import application

    job = _awaiting()
    client.force_login(job.created_by)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    async def connect(origin: bytes):
        communicator = WebsocketCommunicator(
            application,
            f"/ws/onboarding/{job.pk}/",
            headers=[(b"origin", origin), (b"cookie", cookie), (b"host", b"testserver")],
        )
        connected, _ = await communicator.connect(timeout=3)
        message = await communicator.receive_json_from(timeout=3) if connected else None
        await communicator.disconnect()
        return connected, message

    connected, message = async_to_sync(connect)(b"http://testserver")
    assert connected
    assert message["status"] == S.AWAITING_CONFIRMATION
    assert 'data-testid="onboarding-progress"' in message["html"]
    connected, _ = async_to_sync(connect)(b"http://evil.example")
    assert not connected


@pytest.mark.django_db(transaction=True)
def test_every_turn_of_an_onboarding_is_audited(ssh_server):
    from accounts.choices import AuditAction
    from accounts.models import AuditEvent

    ssh_server.password = "the real password"
    job = _create(ssh_server)
    job.refresh_from_db()
    job = _confirm_and_run(job)
    assert job.status == S.FAILED
    events = {
        event.action: event
        for event in AuditEvent.objects.filter(target_type="onboardingjob", target_id=str(job.pk))
    }
    assert set(events) == {
        AuditAction.ONBOARDING_STARTED,
        AuditAction.ONBOARDING_HOST_KEY_CONFIRMED,
        AuditAction.ONBOARDING_FAILED,
    }
    assert events[AuditAction.ONBOARDING_FAILED].details["step"] == "connect"
    assert events[AuditAction.ONBOARDING_FAILED].actor_id == job.created_by_id
    assert "the real password" not in str([event.details for event in events.values()])
