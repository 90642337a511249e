"""Whole-machine tenants: the Unix account an organisation's members reach this host as while
the host is allocated to it, and taking all of it back at the end.

``tenant_create`` makes the account (``useradd``: a home, a login shell, its own group) and a
data folder only it can open. ``tenant_reclaim`` removes everything of the tenant: the
organisation's containers and volumes, the account's processes, the account with its home and
keys, its data folder and what it left in the shared temporary folders; then it looks again and
reports what it removed and whatever remains (``clean`` only when nothing does). Both are
idempotent: a resent command finds its work done, and reclaiming a tenant already gone reports
clean.

Only names of the tenant pattern (``rgt<allocation id>``) are touched: a command naming
``root`` or any other account is refused before anything runs.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .containers import LABEL_MANAGED, LABEL_ORGANIZATION, DockerUnavailable
from .protocol import ProtocolError

if TYPE_CHECKING:
    from .commands import CommandContext

TENANT_USER = re.compile(r"^rgt[1-9][0-9]{0,19}$")
# Where data folders live: ``<root>/<user>/data``. Tests point it at a temporary folder.
TENANT_ROOT_VARIABLE = "REMOTEGPU_AGENT_TENANT_ROOT"
DEFAULT_TENANT_ROOT = "/srv/remotegpu/tenants"
# Folders every account may write to; what the tenant left at their top goes with it.
SHARED_TEMPORARY_FOLDERS = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108  (cleaned, not used)
CRONTABS = Path("/var/spool/cron/crontabs")
PROCESS_EXIT_TIMEOUT = 10.0  # seconds killed processes get to disappear
COMMAND_TIMEOUT = 60.0
# useradd gives accounts uids from UID_MIN (1000) up: a tenant name on a system account (or
# root) was not made here, and its processes are never killed.
MIN_TENANT_UID = 1000
MAX_NAMES_REPORTED = 50


class TenantError(RuntimeError):
    """The host would not do what the tenant command needs; the message says why."""


@dataclass(frozen=True)
class Tenant:
    allocation_id: int
    user: str
    organization_id: int


def _positive_int(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProtocolError(f"{name}: expected a positive integer")
    return value


def parse_tenant(payload: dict[str, Any]) -> Tenant:
    """The command's tenant; any user name but ``rgt<digits>`` is refused."""
    user = payload.get("user")
    if not isinstance(user, str) or not TENANT_USER.match(user):
        raise ProtocolError("user: expected a tenant account name (rgt<number>)")
    return Tenant(
        allocation_id=_positive_int(payload, "allocation_id"),
        user=user,
        organization_id=_positive_int(payload, "organization_id"),
    )


def tenant_root() -> Path:
    return Path(os.environ.get(TENANT_ROOT_VARIABLE) or DEFAULT_TENANT_ROOT)


def tenant_folder(user: str) -> Path:
    """``<root>/<user>``: root's, holding the tenant's ``data`` folder."""
    return tenant_root() / user


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )


def _account(user: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        return None


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _refuse_links(*paths: Path) -> None:
    for path in paths:
        if path.is_symlink():
            raise TenantError(f"{path} is a symbolic link; refusing to use it")


# Creating ----------------------------------------------------------------------------------


def tenant_create(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    """Make the tenant's account, home and data folder (mode 0700, its own)."""
    tenant = parse_tenant(payload)
    account = _account(tenant.user)
    created = False
    if account is None:
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        result = _run(
            "useradd",
            "--create-home",
            "--shell",
            shell,
            "--user-group",
            "--comment",
            f"RemoteGPU tenant, allocation {tenant.allocation_id}",
            tenant.user,
        )
        account = _account(tenant.user)
        if account is None:
            raise TenantError(f"useradd failed: {(result.stderr or result.stdout).strip()}")
        created = result.returncode == 0  # else a concurrent try made it
    if account.pw_uid < MIN_TENANT_UID:
        raise TenantError(f"{tenant.user} has uid {account.pw_uid}: not a tenant account")
    home = _home(tenant, account)
    _refuse_links(home)
    if not home.exists():  # an interrupted try, or an account made without one
        home.mkdir(parents=True)
        os.chown(home, account.pw_uid, account.pw_gid)
    os.chmod(home, 0o700)
    folder = tenant_folder(tenant.user)
    data = folder / "data"
    _refuse_links(folder, data)
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, 0, 0, follow_symlinks=False)
    os.chmod(folder, 0o755)  # noqa: S103  (root's; the tenant passes through to its data)
    data.mkdir(exist_ok=True)
    os.chown(data, account.pw_uid, account.pw_gid, follow_symlinks=False)
    os.chmod(data, 0o700)
    return {
        "user": tenant.user,
        "uid": account.pw_uid,
        "home": str(home),
        "data": str(data),
        "created": created,
    }


# Reclaiming --------------------------------------------------------------------------------


def _docker_filters(tenant: Tenant) -> dict[str, list[str]]:
    return {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_ORGANIZATION}={tenant.organization_id}"]}


def _docker_client(context: CommandContext):
    if context.docker is None:
        raise DockerUnavailable("this agent runs without Docker")
    return context.driver.client


def _remove_docker(tenant: Tenant, context: CommandContext, errors: list[str]) -> dict:
    """Remove the organisation's containers (killed, not stopped: the lease is over) and then
    their volumes; what Docker already lost counts as removed."""
    import docker.errors

    removed: dict[str, list[str]] = {"containers": [], "volumes": []}
    try:
        client = _docker_client(context)
        filters = _docker_filters(tenant)
        for container in client.containers.list(all=True, filters=filters):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
            removed["containers"].append(container.name)
        for volume in client.volumes.list(filters=filters):
            with contextlib.suppress(docker.errors.NotFound):
                volume.remove(force=True)
            removed["volumes"].append(volume.name)
    except (DockerUnavailable, docker.errors.DockerException) as exc:
        errors.append(f"docker: {exc}")
    return removed


def _process_uids(pid: str) -> tuple[set[int], bool] | None:
    """The real, effective, saved and file-system uids of a process, and whether it is a
    zombie (gone but for its parent's wait); None once it has exited."""
    uids: set[int] = set()
    zombie = False
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("State:"):
                    zombie = line.split()[1:2] == ["Z"]
                elif line.startswith("Uid:"):
                    uids = {int(value) for value in line.split()[1:5]}
                    break
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return uids, zombie


def processes_of(uid: int) -> list[int]:
    """Live (not zombie) processes running as ``uid`` in any of their uids, read from /proc."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        found = _process_uids(entry.name)
        if found is not None and uid in found[0] and not found[1]:
            pids.append(int(entry.name))
    return sorted(pids)


def _kill_processes(user: str, uid: int) -> int:
    """SIGKILL every process of the account until none is left (one may fork while the others
    are being killed); how many there were."""
    seen = set(processes_of(uid))
    _run("pkill", "-KILL", "-u", user)
    deadline = time.monotonic() + PROCESS_EXIT_TIMEOUT
    while True:
        pids = processes_of(uid)
        seen.update(pids)
        if not pids or time.monotonic() > deadline:
            return len(seen)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        time.sleep(0.05)


def _remove_path(path: Path) -> bool:
    """Remove a file, link or whole folder (never following a link); True if it was there."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink()
    return True


def _temporary_files_of(uid: int) -> list[Path]:
    found = []
    for folder in SHARED_TEMPORARY_FOLDERS:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    found.append(Path(entry.path))
            except FileNotFoundError:
                continue
    return sorted(found)


def _key_count(home: Path) -> int:
    try:
        lines = (home / ".ssh" / "authorized_keys").read_text(errors="replace").splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line.strip() and not line.startswith("#"))


def _remove_account(user: str, errors: list[str]) -> bool:
    """``userdel --remove`` (home and mail spool with it); ``--force`` when something still
    holds the account."""
    result = _run("userdel", "--remove", user)
    if _account(user) is not None:
        result = _run("userdel", "--remove", "--force", user)
    if _account(user) is not None:
        errors.append(f"userdel: {(result.stderr or result.stdout).strip()}")
        return False
    if _group_exists(user):  # USERGROUPS_ENAB off: the user's group stays behind
        _run("groupdel", user)
    return True


def _listed(names: list[str]) -> list[str]:
    return sorted(names)[:MAX_NAMES_REPORTED]


def _verify(tenant: Tenant, uid: int | None, home: Path, context: CommandContext) -> dict:
    """What of the tenant is still on the host; {} when nothing is."""
    remaining: dict[str, Any] = {}
    if _account(tenant.user) is not None:
        remaining["account"] = tenant.user
    if _group_exists(tenant.user):
        remaining["group"] = tenant.user
    if os.path.lexists(home):
        remaining["home"] = str(home)
    if os.path.lexists(tenant_folder(tenant.user)):
        remaining["data"] = str(tenant_folder(tenant.user))
    if uid is not None:
        pids = processes_of(uid)
        if pids:
            remaining["processes"] = len(pids)
        files = _temporary_files_of(uid)
        if files:
            remaining["temporary_files"] = _listed([str(path) for path in files])
    crontab = CRONTABS / tenant.user
    if os.path.lexists(crontab):
        remaining["crontab"] = str(crontab)
    try:
        client = _docker_client(context)
        filters = _docker_filters(tenant)
        containers = [c.name for c in client.containers.list(all=True, filters=filters)]
        volumes = [v.name for v in client.volumes.list(filters=filters)]
    except Exception as exc:  # unseen is not gone: the report must not say clean
        remaining["docker"] = f"cannot check: {exc}"
    else:
        if containers:
            remaining["containers"] = _listed(containers)
        if volumes:
            remaining["volumes"] = _listed(volumes)
    return remaining


def _home(tenant: Tenant, account: pwd.struct_passwd | None) -> Path:
    """The account's home, or where ``useradd`` would have put it. Only a folder named after
    the tenant is ever removed: an entry pointing elsewhere is not followed there."""
    home = Path(account.pw_dir) if account is not None else Path("/home") / tenant.user
    return home if home.name == tenant.user else Path("/home") / tenant.user


def tenant_reclaim(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    """Remove everything of the tenant, then check. The report: ``removed`` (names and
    counts), ``remaining`` (what is still there, by kind), ``clean`` (nothing remains) and
    ``errors`` (what refused on the way)."""
    tenant = parse_tenant(payload)
    account = _account(tenant.user)
    uid = account.pw_uid if account is not None else None
    if uid is not None and uid < MIN_TENANT_UID:  # refused before anything is touched
        raise TenantError(f"{tenant.user} has uid {uid}: not an account tenant_create made")
    errors: list[str] = []
    removed: dict[str, Any] = {}
    docker_removed = _remove_docker(tenant, context, errors)
    removed["containers"] = _listed(docker_removed["containers"])
    removed["volumes"] = _listed(docker_removed["volumes"])
    home = _home(tenant, account)
    home_existed = os.path.lexists(home)
    removed["processes"] = _kill_processes(tenant.user, uid) if uid is not None else 0
    removed["keys"] = _key_count(home)
    temporary = _temporary_files_of(uid) if uid is not None else []
    for path in temporary:
        _remove_path(path)
    removed["temporary_files"] = _listed([str(path) for path in temporary])
    removed["crontab"] = _remove_path(CRONTABS / tenant.user)
    removed["account"] = _remove_account(tenant.user, errors) if account is not None else False
    _remove_path(home)  # userdel leaves a home that is not the account's own
    removed["home"] = home_existed and not os.path.lexists(home)
    removed["data"] = _remove_path(tenant_folder(tenant.user))
    remaining = _verify(tenant, uid, home, context)
    return {
        "user": tenant.user,
        "removed": removed,
        "remaining": remaining,
        "clean": not remaining,
        "errors": errors[:MAX_NAMES_REPORTED],
    }
