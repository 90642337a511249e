"""Tenant accounts of whole-machine allocations, on the real system: ``useradd``, a process
running as the tenant, files in its home, data folder and /tmp; then reclaim, and check that the
report says clean and that nothing is left. The machine is left as it was found.

Docker is a fake driver here (the real engine is covered by test_containers.py, whose cleanup
removes every managed container and would race with containers made here)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from remotegpu_agent import tenants
from remotegpu_agent.commands import CommandContext, execute
from remotegpu_agent.containers import LABEL_MANAGED, LABEL_ORGANIZATION
from remotegpu_agent.gpu import FakeBackend
from remotegpu_agent.protocol import COMMAND_KINDS

ORGANIZATION = 41
OTHER_ORGANIZATION = 42


class FakeItem:
    def __init__(self, collection: FakeCollection, name: str, labels: dict[str, str]):
        self.collection = collection
        self.name = name
        self.labels = labels

    def remove(self, force: bool = False) -> None:
        self.collection.items.remove(self)


class FakeCollection:
    """Docker's containers or volumes, listed by label as the SDK does."""

    def __init__(self):
        self.items: list[FakeItem] = []

    def add(self, name: str, organization: int) -> None:
        labels = {LABEL_MANAGED: "true", LABEL_ORGANIZATION: str(organization)}
        self.items.append(FakeItem(self, name, labels))

    def list(self, filters: dict | None = None, **_options) -> list[FakeItem]:
        wanted = [label.split("=", 1) for label in (filters or {}).get("label", [])]
        return [item for item in self.items if all(item.labels.get(k) == v for k, v in wanted)]

    def names(self) -> list[str]:
        return sorted(item.name for item in self.items)


class FakeClient:
    def __init__(self):
        self.containers = FakeCollection()
        self.volumes = FakeCollection()


class FakeDriver:
    def __init__(self):
        self.client = FakeClient()


def _context(driver=None) -> CommandContext:
    return CommandContext(FakeBackend(count=0), docker=driver)


def _run(kind: str, payload: dict, context: CommandContext):
    return asyncio.run(execute(kind, payload, context))


def _payload(user: str) -> dict:
    return {"allocation_id": 7, "user": user, "organization_id": ORGANIZATION}


@pytest.fixture
def tenant_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "tenants"
    monkeypatch.setenv(tenants.TENANT_ROOT_VARIABLE, str(root))
    return root


def test_the_kinds_are_registered_everywhere():
    assert {"tenant_create", "tenant_reclaim"} <= COMMAND_KINDS


@pytest.mark.parametrize(
    "user",
    ["root", "rgt", "rgt0", "rgt01", "rgt1;id", "rgt1 ", "../rgt1", "rgt" + "1" * 21, 5, None],
)
def test_only_tenant_names_are_accepted(user, tenant_root):
    for kind in ("tenant_create", "tenant_reclaim"):
        outcome = _run(kind, {**_payload("rgt1"), "user": user}, _context(FakeDriver()))
        assert not outcome.ok
        assert outcome.result == {"exception": "ProtocolError"}
    with pytest.raises(KeyError):
        pwd.getpwnam("rgt1")  # nothing was made on the way


@pytest.mark.parametrize("field", ["allocation_id", "organization_id"])
@pytest.mark.parametrize("value", [0, -1, "1", True, None])
def test_ids_must_be_positive_integers(field, value):
    with pytest.raises(ValueError, match=field):
        tenants.parse_tenant({**_payload("rgt1"), field: value})


def _unused_name() -> str:
    while True:
        name = f"rgt9{uuid.uuid4().int % 10**9:09d}"
        try:
            pwd.getpwnam(name)
        except KeyError:
            return name


def test_reclaiming_a_tenant_that_is_gone_reports_clean(tenant_root):
    driver = FakeDriver()
    driver.client.containers.add("rgpu-env-3", OTHER_ORGANIZATION)
    outcome = _run("tenant_reclaim", _payload(_unused_name()), _context(driver))
    assert outcome.ok, outcome.error
    assert outcome.result["clean"] is True
    assert outcome.result["remaining"] == {}
    assert outcome.result["removed"]["account"] is False
    assert driver.client.containers.names() == ["rgpu-env-3"]  # another organisation's


def test_without_docker_a_reclaim_cannot_say_clean(tenant_root):
    outcome = _run("tenant_reclaim", _payload(_unused_name()), _context(None))
    assert outcome.ok, outcome.error
    assert outcome.result["clean"] is False
    assert "docker" in outcome.result["remaining"]


# On the real system --------------------------------------------------------------------------


def _require_root_and_tools() -> None:
    missing = [
        tool for tool in ("useradd", "userdel", "pkill", "runuser") if not shutil.which(tool)
    ]
    reason = ""
    if os.geteuid() != 0:
        reason = "tenant accounts need root (useradd, userdel)"
    elif missing:
        reason = f"missing {', '.join(missing)}: apt-get install passwd procps util-linux"
    if not reason:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI needs {reason}", pytrace=False)
    pytest.skip(reason)


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _cleanup(user: str, uid: int | None, scratch: Path, started: list[subprocess.Popen]) -> None:
    """Leave the machine as it was, whatever the test did or did not get to."""
    if uid is not None:
        subprocess.run(["pkill", "-KILL", "-u", user], check=False, capture_output=True)
        _wait_for(lambda: not tenants.processes_of(uid), 5)
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    try:
        pwd.getpwnam(user)
    except KeyError:
        pass
    else:
        subprocess.run(["userdel", "--remove", "--force", user], check=False, capture_output=True)
    subprocess.run(["groupdel", user], check=False, capture_output=True)
    shutil.rmtree(Path("/home") / user, ignore_errors=True)
    if scratch.exists():
        scratch.unlink()


def test_create_then_reclaim_removes_everything_and_says_so(tenant_root, monkeypatch):
    _require_root_and_tools()
    user = _unused_name()
    scratch = Path("/tmp") / f"{user}-scratch"
    driver = FakeDriver()
    for name, organization in (("rgpu-env-1", ORGANIZATION), ("rgpu-env-2", OTHER_ORGANIZATION)):
        driver.client.containers.add(name, organization)
    for name, organization in (("rgpu-vol-1", ORGANIZATION), ("rgpu-vol-2", OTHER_ORGANIZATION)):
        driver.client.volumes.add(name, organization)
    context = _context(driver)
    started: list[subprocess.Popen] = []
    uid = None
    try:
        created = _run("tenant_create", _payload(user), context)
        assert created.ok, created.error
        account = pwd.getpwnam(user)
        uid = account.pw_uid
        home, data = Path(account.pw_dir), tenant_root / user / "data"
        assert created.result == {
            "user": user,
            "uid": uid,
            "home": str(home),
            "data": str(data),
            "created": True,
        }
        assert home.is_dir()
        assert (home.stat().st_uid, home.stat().st_mode & 0o777) == (uid, 0o700)
        assert (data.stat().st_uid, data.stat().st_mode & 0o777) == (uid, 0o700)
        assert account.pw_shell in ("/bin/bash", "/bin/sh")

        again = _run("tenant_create", _payload(user), context)  # a resent command
        assert again.ok, again.error
        assert again.result["created"] is False
        assert pwd.getpwnam(user).pw_uid == uid

        # The tenant at work: processes (one forked in the background), files everywhere.
        started.append(
            subprocess.Popen(
                ["runuser", "-u", user, "--", "sh", "-c", "sleep 1000 & exec sleep 1001"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        assert _wait_for(lambda: len(tenants.processes_of(uid)) >= 2)
        subprocess.run(
            [
                "runuser",
                "-u",
                user,
                "--",
                "sh",
                "-c",
                f"echo notes > ~/notes.txt && mkdir -p ~/.ssh && "
                f"echo 'ssh-ed25519 AAAAC3Nza test' > ~/.ssh/authorized_keys && "
                f"echo x > {scratch}",
            ],
            check=True,
        )
        # pytest's temporary folder is root's alone: the tenant's file is put there for it.
        (data / "model.bin").write_bytes(b"\0" * 4096)
        os.chown(data / "model.bin", uid, account.pw_gid)

        # A tenant name on an account below the tenant uids is never touched.
        monkeypatch.setattr(tenants, "MIN_TENANT_UID", uid + 1)
        refused = _run("tenant_reclaim", _payload(user), context)
        assert not refused.ok
        assert pwd.getpwnam(user).pw_uid == uid
        assert len(tenants.processes_of(uid)) >= 2
        assert len(driver.client.containers.names()) == 2
        monkeypatch.undo()
        monkeypatch.setenv(tenants.TENANT_ROOT_VARIABLE, str(tenant_root))

        reclaimed = _run("tenant_reclaim", _payload(user), context)
        assert reclaimed.ok, reclaimed.error
        report = reclaimed.result
        assert report["clean"] is True, report
        assert report["remaining"] == {}
        assert report["errors"] == []
        removed = report["removed"]
        assert removed["containers"] == ["rgpu-env-1"]
        assert removed["volumes"] == ["rgpu-vol-1"]
        assert removed["processes"] >= 2
        assert removed["keys"] == 1
        assert removed["temporary_files"] == [str(scratch)]
        assert (removed["account"], removed["home"], removed["data"]) == (True, True, True)

        # Nothing of the tenant is left, and nothing of anyone else went.
        with pytest.raises(KeyError):
            pwd.getpwnam(user)
        assert not home.exists()
        assert not (tenant_root / user).exists()
        assert not scratch.exists()
        assert tenants.processes_of(uid) == []
        assert driver.client.containers.names() == ["rgpu-env-2"]
        assert driver.client.volumes.names() == ["rgpu-vol-2"]
        assert pwd.getpwnam("root").pw_uid == 0

        rerun = _run("tenant_reclaim", _payload(user), context)  # a resent command
        assert rerun.ok, rerun.error
        assert rerun.result["clean"] is True
        assert rerun.result["removed"]["account"] is False
    finally:
        _cleanup(user, uid, scratch, started)
