"""A whole-machine allocation on real parts: the real agent makes the tenant's Unix account on
this machine, the organisation's members reach it through the gateway with OpenSSH, leave files
and running processes, and its environments run there; then reclaim takes all of it back and
the report says so. The test leaves the machine as it found it."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from accounts.choices import Role
from accounts.services.ssh_keys import ssh_key_add
from accounts.tests.factories import MembershipFactory, OperatorFactory
from environments.choices import EnvironmentStatus as S
from environments.tests.factories import ImageFactory, SpecFactory
from machines.choices import AllocationStatus
from machines.models import Allocation, Host
from machines.services.allocations import allocation_create, allocation_reclaim
from remotegpu.core.testing import require_executable, require_real_part
from remotegpu.core.testing_docker import busybox_image

from . import test_ssh_gateway
from .conftest import wait_until
from .test_environments_docker import API, _wait_status
from .test_ssh_gateway import _key

# The SSH gateway tests' fixtures: Docker, and a real agent with its gateway.
docker_client = test_ssh_gateway.docker_client
gateway_host = test_ssh_gateway.gateway_host

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _uid_processes(uid: int) -> list[int]:
    """Live processes (zombies are gone but for their parent's wait) with ``uid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = dict(
                line.split(":", 1) for line in (entry / "status").read_text().splitlines()
            )
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if status["State"].split()[0] != "Z" and str(uid) in status["Uid"].split():
            found.append(int(entry.name))
    return found


def _user_gone(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return True
    return False


def test_allocate_reach_as_the_tenant_and_reclaim_everything(
    gateway_host,
    daphne_server,
    docker_client,
    tmp_path,
):
    require_real_part(os.geteuid() == 0, "root", "run the tests as root (CI does)")
    require_executable("useradd", "install passwd")
    host, agent = gateway_host
    host.refresh_from_db()
    owner = MembershipFactory(role=Role.OWNER)
    member = MembershipFactory(organization=owner.organization, role=Role.MEMBER)
    outsider = MembershipFactory(role=Role.OWNER)
    keys = {}
    for name, membership in (("owner", owner), ("member", member), ("outsider", outsider)):
        keys[name] = _key(tmp_path, name)
        ssh_key_add(
            user=membership.user, name=name, public_key=keys[name].with_suffix(".pub").read_text()
        )
    now = timezone.now()
    allocation = allocation_create(
        actor=OperatorFactory(),
        host=host,
        organization=owner.organization,
        starts_at=now,
        ends_at=now + timedelta(days=1),
    )
    user = allocation.tenant_user
    try:
        wait_until(
            lambda: Allocation.objects.get(pk=allocation.pk).status == AllocationStatus.ACTIVE,
            timeout=30,
            what="the tenant's account made by the agent",
            process=agent,
        )
        account = pwd.getpwnam(user)
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{host.ssh_port} {host.ssh_host_key}\n")

        def options(key: str) -> list[str]:
            return [
                *("-i", str(keys[key]), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"),
                *("-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"),
            ]

        def ssh(key: str, command: str):
            argv = ["ssh", "-p", str(host.ssh_port), *options(key), f"{user}@127.0.0.1", command]
            return subprocess.run(argv, capture_output=True, timeout=30, check=False)

        # Any member of the organisation gets in, as the tenant's own account on the host.
        result = wait_until(
            lambda: (r := ssh("member", "id -un; id -u; pwd")).returncode == 0 and r,
            timeout=15,
            what="the gateway to accept a member's key for the tenant",
            process=agent,
        )
        assert result.stdout.decode().split() == [user, str(account.pw_uid), account.pw_dir]
        assert ssh("outsider", "true").returncode == 255
        assert ssh("owner", "cat /etc/shadow").returncode != 0  # the account's rights, not root's

        # Files up with scp into the home and the data folder; processes left running.
        payload = tmp_path / "payload.bin"
        payload.write_bytes(os.urandom(200_000))
        data = f"/srv/remotegpu/tenants/{user}/data"
        for target in (f"{account.pw_dir}/payload.bin", f"{data}/payload.bin"):
            argv = ["scp", "-P", str(host.ssh_port), *options("owner"), str(payload)]
            copied = subprocess.run(
                [*argv, f"{user}@127.0.0.1:{target}"], capture_output=True, timeout=30
            )
            assert copied.returncode == 0, copied.stderr
            assert Path(target).read_bytes() == payload.read_bytes()
            assert Path(target).stat().st_uid == account.pw_uid
        started = ssh("owner", "setsid sleep 10000 >/dev/null 2>&1 < /dev/null & echo started")
        assert started.stdout.strip() == b"started", started
        wait_until(lambda: _uid_processes(account.pw_uid), timeout=10, what="its process")

        # Its organisation's environments are placed on the host; nobody else's are.
        token_owner = API(daphne_server.base_url, _token(owner.user))
        spec = SpecFactory(gpu_model="", gpu_count=0, vcpu=1, memory_gib=1)
        image = ImageFactory(reference=busybox_image(docker_client), command=["sleep", "3600"])
        code, body = token_owner(
            "POST",
            "/api/v1/environments/",
            {"name": "on-my-machine", "spec": spec.pk, "image": image.pk},
        )
        assert code == 201, body
        _wait_status(token_owner, body["id"], S.RUNNING, agent)
        token_outsider = API(daphne_server.base_url, _token(outsider.user))
        code, refused = token_outsider(
            "POST",
            "/api/v1/environments/",
            {"name": "not-here", "spec": spec.pk, "image": image.pk},
        )
        assert code != 201, refused

        # Reclaim: everything of the tenant goes, and the report says what went.
        allocation_reclaim(actor=OperatorFactory(), allocation=allocation, reason="test over")
        reclaimed = wait_until(
            lambda: (
                (a := Allocation.objects.get(pk=allocation.pk)).status
                in (AllocationStatus.RECLAIMED, AllocationStatus.FAILED)
                and a
            ),
            timeout=60,
            what="the reclaim's report",
            process=agent,
        )
        report = reclaimed.reclaim_report
        assert reclaimed.status == AllocationStatus.RECLAIMED, report
        assert report["clean"] is True, report
        assert report["remaining"] == {}, report
        assert report["removed"]["account"] is True
        assert report["removed"]["processes"] >= 1
        assert report["removed"]["containers"], report
        assert _user_gone(user)
        assert not Path(account.pw_dir).exists()
        assert not Path(data).exists()
        assert _uid_processes(account.pw_uid) == []
        labelled = {"label": f"remotegpu.organization={owner.organization_id}"}
        assert docker_client.containers.list(all=True, filters=labelled) == []
        assert docker_client.volumes.list(filters=labelled) == []
        # The gateway no longer opens it, and the host is back in the pool.
        wait_until(
            lambda: ssh("owner", "true").returncode == 255,
            timeout=10,
            what="the tenant's SSH to be refused",
        )
        Host.objects.get(pk=host.pk)
    finally:
        _leave_as_found(user)


def _token(user) -> str:
    from accounts.services.tokens import token_create

    return token_create(user=user, name="it", write_enabled=True).plaintext


def _leave_as_found(user: str) -> None:
    """Whatever a failure left of the tenant: its processes, account and folders."""
    if _user_gone(user):
        return
    subprocess.run(["pkill", "-KILL", "-u", user], check=False)
    time.sleep(0.5)
    subprocess.run(["userdel", "--remove", user], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", f"/srv/remotegpu/tenants/{user}"], check=False)
