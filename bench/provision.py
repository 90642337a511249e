"""Benchmark: create-to-running of an environment through the API, against ``docker run -d``.

Starts a real daphne and a real agent (fake GPUs, the local Docker Engine), then, alternating,
RUNS times each:

- ours: ``POST /api/v1/environments/`` with a read-write token until the environment is
  ``running`` (the agent created and started the container and said so); the image is already
  on the host, as after a pre-pull;
- the floor: the Docker SDK's ``containers.run(detach=True)`` of the same image with the same
  limits (CPU, memory, pids), a named volume at /workspace and one published port, on the same
  engine: what ``docker run -d`` does;
- the same ``docker run -d`` on a bridge network of its own, as each organisation's containers
  are (Docker's start on a user-defined network sets up its embedded DNS: tens of ms more).

All are deleted between runs (container and volume). Goal (issue 7): ratio at most 1.5 and at
most 400 ms added at the median, against the plain floor. The phases printed before the last
line say where our time goes (from the server's and the agent's timestamps).

Run: ``make bench NAME=provision`` (root, with Docker and busybox-static). Last line: JSON.
"""

import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.dev")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from stack import clean as clean_rows  # noqa: E402
from stack import free_port, start_agent, start_daphne, wait  # noqa: E402

from accounts.choices import Role  # noqa: E402
from accounts.models import Membership, Organization, User  # noqa: E402
from accounts.services.tokens import token_create  # noqa: E402
from environments.models import Environment, Image, Spec  # noqa: E402
from remotegpu.core.busybox_image import busybox_image_build  # noqa: E402

RUNS = int(os.environ.get("RUNS", "20"))
PREFIX = "bench-prov-"
COMMAND = [
    "sh",
    "-c",
    "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www",
]
# Ours runs on its organisation's own bridge network (tenant isolation), which costs Docker a
# good part of the start by itself: the third column runs the floor on such a network too.
NETWORK = f"{PREFIX}net"


def api(base: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(  # noqa: S310 (loopback)
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read() or b"{}")


def docker_run(client, image_tag: str, volume: str, network: str | None = None) -> float:
    """``docker run -d`` with our limits, a named volume at /workspace and one published port
    (on ``network`` when given); milliseconds. The container and volume are removed after."""
    start = time.perf_counter()
    container = client.containers.run(
        image_tag,
        COMMAND,
        detach=True,
        labels={f"{PREFIX}floor": "1"},
        nano_cpus=10**9,
        mem_limit=1 << 30,
        memswap_limit=1 << 30,
        pids_limit=settings.ENVIRONMENT_PIDS_LIMIT,
        security_opt=["no-new-privileges:true"],
        init=True,
        volumes={volume: {"bind": "/workspace", "mode": "rw"}},
        ports={"8080/tcp": ("127.0.0.1", free_port())},
        network=network,
    )
    elapsed = (time.perf_counter() - start) * 1000
    container.remove(force=True)
    client.volumes.get(volume).remove(force=True)
    return elapsed


def clean(client) -> None:
    for container in client.containers.list(all=True, filters={"label": f"{PREFIX}floor"}):
        container.remove(force=True)
    for network in client.networks.list(names=[NETWORK]):
        network.remove()
    clean_rows(PREFIX)


def main() -> None:
    import docker

    client = docker.from_env()
    image_tag = busybox_image_build(client, "remotegpu-bench/busybox")
    clean(client)
    work = Path(tempfile.mkdtemp(prefix="bench-provision-"))
    daphne, agent = None, None
    try:
        daphne, base = start_daphne(work)
        agent, host = start_agent(base, work, f"{PREFIX}host", "--fake-gpus", "4", "--no-ssh")
        model = wait(lambda: host.gpus.values_list("model", flat=True).first(), 30, "GPUs", 0.2)
        user = User.objects.create_user(email=f"{PREFIX}owner@example.com", password=None)
        org = Organization.objects.create(
            name=f"{PREFIX}org", slug=f"{PREFIX}org", environment_quota=RUNS * 2 + 5
        )
        Membership.objects.create(user=user, organization=org, role=Role.OWNER)
        token = token_create(user=user, name="bench", write_enabled=True).plaintext
        spec = Spec.objects.create(
            name=f"{PREFIX}1x", gpu_model=model, gpu_count=1, vcpu=1, memory_gib=1
        )
        image = Image.objects.create(
            name=f"{PREFIX}image",
            reference=image_tag,
            command=COMMAND,
            ports=[{"port": 8080, "role": "http"}],
        )

        ours, floor, floor_network, phases = [], [], [], []
        client.networks.create(NETWORK, driver="bridge", labels={f"{PREFIX}floor": "1"})
        for n in range(RUNS + 1):  # the first pair warms both paths up and is not counted
            start = time.perf_counter()
            wall_start = time.time()
            created = api(
                base,
                token,
                "POST",
                "/api/v1/environments/",
                {"name": f"b{n}", "spec": spec.pk, "image": image.pk},
            )
            answered = time.time()
            wait(
                lambda created=created: Environment.objects.filter(
                    pk=created["id"], status="running"
                ).exists(),
                60,
                "running",
            )
            elapsed_ours = (time.perf_counter() - start) * 1000
            phases.append(phase_breakdown(created["id"], wall_start, answered))
            api(base, token, "DELETE", f"/api/v1/environments/{created['id']}/")
            wait(
                lambda created=created: Environment.objects.filter(
                    pk=created["id"], status="deleted"
                ).exists(),
                60,
                "deleted",
            )

            elapsed_floor = docker_run(client, image_tag, f"{PREFIX}vol-{n}")
            elapsed_network = docker_run(client, image_tag, f"{PREFIX}vol-net-{n}", NETWORK)
            if n:
                ours.append(elapsed_ours)
                floor.append(elapsed_floor)
                floor_network.append(elapsed_network)
            print(
                f"run {n}: ours {elapsed_ours:.0f} ms, docker run {elapsed_floor:.0f} ms, "
                f"docker run on a network of its own {elapsed_network:.0f} ms",
                flush=True,
            )
    finally:
        for process in (agent, daphne):
            if process is not None:
                process.terminate()
                process.wait(10)
        clean(client)
    median, floor_median = statistics.median(ours), statistics.median(floor)
    network_median = statistics.median(floor_network)
    for phase in PHASES:
        values = [run[phase] for run in phases[1:] if phase in run]
        if values:
            print(f"  {phase}: median {statistics.median(values):.1f} ms")
    print(
        json.dumps(
            {
                "bench": "provision",
                "runs": RUNS,
                "median_ms": round(median, 1),
                "floor_median_ms": round(floor_median, 1),
                "ratio": round(median / floor_median, 2),
                "added_ms": round(median - floor_median, 1),
                "floor_network_median_ms": round(network_median, 1),
                "ratio_same_network": round(median / network_median, 2),
            }
        )
    )


# Where our time goes, from the timestamps the server and the agent record (one clock here).
PHASES = (
    "api_answered",  # the POST came back (placement, command row, commit)
    "command_sent",  # the server handed the command to the agent's socket
    "agent_done",  # the agent's Docker calls ended (its result's time)
    "result_recorded",  # the server recorded the result
    "running",  # the environment's running event
)


def phase_breakdown(environment_id: int, wall_start: float, answered: float) -> dict:
    environment = Environment.objects.select_related("last_command").get(pk=environment_id)
    command = environment.last_command
    event = environment.events.filter(status="running").order_by("created_at").first()
    since = {"api_answered": answered}
    if command is not None:
        if command.sent_at:
            since["command_sent"] = command.sent_at.timestamp()
        if command.result.get("time"):
            since["agent_done"] = float(command.result["time"])
        if command.finished_at:
            since["result_recorded"] = command.finished_at.timestamp()
    if event is not None:
        since["running"] = event.created_at.timestamp()
    return {phase: (at - wall_start) * 1000 for phase, at in since.items()}


if __name__ == "__main__":
    main()
