"""Real processes for benchmarks: daphne, a joined agent with Docker (and its SSH gateway), an
organisation with an owner, and running environments.

Imported after ``django.setup()`` by the benchmarks; ``purge_billing`` removes what billing
kept of a benchmark's organisations (every bench that creates organisations uses it).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.db import connection, transaction

from accounts.choices import Role
from accounts.models import Membership, Organization, User
from accounts.services.ssh_keys import ssh_key_add
from accounts.services.tokens import token_create
from environments.models import Environment, Image, Spec
from machines.models import Host
from machines.services.join import join_token_create

ROOT = Path(__file__).resolve().parents[1]
AGENT = str(Path(sys.executable).with_name("remotegpu-agent"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait(condition, timeout: float, what: str, interval: float = 0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback)
            return True
    except OSError:
        return False


@dataclass
class Stack:
    prefix: str
    work: Path
    base: str
    host: Host
    owner: User
    organization: Organization
    token: str
    key: Path  # the owner's private key (registered)

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(  # noqa: S310 (loopback)
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return json.loads(response.read() or b"{}")

    def environment(self, image_reference: str, command: list[str], name: str) -> dict:
        """A running environment of ``image_reference``; its connection (``/connection``)."""
        spec = Spec.objects.create(
            name=f"{self.prefix}{name}", gpu_model="", gpu_count=0, vcpu=2, memory_gib=2
        )
        image = Image.objects.create(
            name=f"{self.prefix}{name}", reference=image_reference, command=command
        )
        created = self.api(
            "POST", "/api/v1/environments/", {"name": name, "spec": spec.pk, "image": image.pk}
        )
        wait(
            lambda: Environment.objects.filter(pk=created["id"], status="running").exists(),
            60,
            "the environment running",
        )
        return self.api("GET", f"/api/v1/environments/{created['id']}/connection/") | {
            "id": created["id"]
        }


def remove_ledger_entries(wallets: list[int]) -> None:
    """Remove the ledger entries of ``wallets``. The append-only trigger is switched off inside
    this transaction only: DDL is transactional, so no other session ever sees it off (they
    wait on the table's lock for the moment it takes) and a crash leaves it on. Django's
    foreign keys are deferred; they are checked at once so the trigger can go back on."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE billing_ledgerentry DISABLE TRIGGER billing_ledger_append_only")
        cursor.execute("DELETE FROM billing_ledgerentry WHERE wallet_id = ANY(%s)", [wallets])
        cursor.execute("ALTER TABLE billing_ledgerentry ENABLE TRIGGER billing_ledger_append_only")


def bench_wallets(prefix: str) -> list[int]:
    """The wallets of the organisations whose slug starts with ``prefix``."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT w.id FROM billing_wallet w
               JOIN accounts_organization o ON o.id = w.organization_id WHERE o.slug LIKE %s""",
            [f"{prefix}%"],
        )
        return [row[0] for row in cursor.fetchall()]


def purge_billing(prefix: str) -> None:
    """Remove what billing kept of the organisations whose slug starts with ``prefix``: ledger
    entries, run intervals, meters and wallets, and the sources of hosts named with it."""
    wallets = bench_wallets(prefix)
    with transaction.atomic(), connection.cursor() as cursor:
        remove_ledger_entries(wallets)
        cursor.execute(
            """DELETE FROM billing_runinterval i USING billing_meter m
               WHERE m.id = i.meter_id AND m.wallet_id = ANY(%s)""",
            [wallets],
        )
        cursor.execute("DELETE FROM billing_meter WHERE wallet_id = ANY(%s)", [wallets])
        cursor.execute("DELETE FROM billing_wallet WHERE id = ANY(%s)", [wallets])
        cursor.execute(
            """DELETE FROM billing_source s USING machines_host h
               WHERE s.key = 'host:' || h.id AND h.name LIKE %s""",
            [f"{prefix}%"],
        )


def clean(prefix: str) -> None:
    Environment.objects.filter(organization__slug__startswith=prefix).delete()
    purge_billing(prefix)
    Host.objects.filter(name__startswith=prefix).delete()
    Organization.objects.filter(slug__startswith=prefix).delete()
    User.objects.filter(email__startswith=prefix).delete()
    Spec.objects.filter(name__startswith=prefix).delete()
    Image.objects.filter(name__startswith=prefix).delete()


def start_daphne(work: Path) -> tuple[subprocess.Popen, str]:
    """daphne on a free loopback port, logging into ``work``; the process and its base URL."""
    port = free_port()
    daphne = subprocess.Popen(
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
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=open(work / "daphne.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    wait(lambda: _answers(base + "/healthz"), 30, "daphne", 0.2)
    return daphne, base


def start_agent(
    base: str, work: Path, name: str, *options: str, ready=None
) -> tuple[subprocess.Popen, Host]:
    """Join a host ``name`` with a fresh join token, then ``remotegpu-agent run`` (fake GPUs,
    the local engine, ports published on loopback, plus ``options``) until its host is online
    with Docker (and ``ready(queryset)`` when given narrows what counts)."""
    operator = User.objects.filter(is_staff=True).first() or User.objects.create_superuser(
        email=f"{name}-operator@example.com", password=None
    )
    issued = join_token_create(operator=operator, name=f"{name}-token")
    state = work / "agent"
    subprocess.run(
        [
            AGENT,
            "join",
            "--server",
            base,
            "--token",
            issued.plaintext,
            "--name",
            name,
            "--state-dir",
            str(state),
        ],
        check=True,
        capture_output=True,
    )
    agent = subprocess.Popen(
        [
            AGENT,
            "run",
            "--gpu-backend",
            "fake",
            "--state-dir",
            str(state),
            "--publish-address",
            "127.0.0.1",
            "--heartbeat-interval",
            "5",
            *options,
        ],
        stdout=open(work / "agent.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    hosts = Host.objects.filter(name=name, connected=True, containers_known=True, status="online")
    if ready is not None:
        hosts = ready(hosts)
    host = wait(lambda: hosts.first(), 60, "the agent's host online", 0.2)
    return agent, host


@contextlib.contextmanager
def stack(prefix: str) -> Iterator[Stack]:
    """daphne and an agent (Docker, the SSH gateway on a free port), torn down after."""
    clean(prefix)
    work = Path(tempfile.mkdtemp(prefix=f"{prefix}work-"))
    processes = []
    try:
        daphne, base = start_daphne(work)
        processes.append(daphne)
        agent, host = start_agent(
            base,
            work,
            f"{prefix}host",
            *("--ssh-port", "0", "--ssh-listen", "127.0.0.1"),
            ready=lambda hosts: hosts.exclude(ssh_port=0),
        )
        processes.append(agent)
        Host.objects.filter(pk=host.pk).update(address="127.0.0.1")
        owner = User.objects.create_user(email=f"{prefix}owner@example.com", password=None)
        organization = Organization.objects.create(name=f"{prefix}org", slug=f"{prefix}org")
        Membership.objects.create(user=owner, organization=organization, role=Role.OWNER)
        key = work / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        ssh_key_add(user=owner, name="bench", public_key=key.with_suffix(".pub").read_text())
        token = token_create(user=owner, name="bench", write_enabled=True).plaintext
        yield Stack(prefix, work, base, host, owner, organization, token, key)
    finally:
        for process in reversed(processes):
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        clean(prefix)
