"""Benchmark: placement on a big fleet, and the race for the last free GPU.

5,000 hosts of 8 GPUs (40,000 GPUs) in the database, all online with a container runtime; then
1,000 environments created one after another through ``environment_create`` (validation,
quota, placement with its row locks, ports, the command row, audit and events: everything but
the HTTP layer), timing each. Then every GPU but one is taken out of service and 32 threads,
each another organisation's, ask for the last one at the same moment.

Goal (issue 7): p99 of a placement at most 25 ms; exactly one winner of the race.

Run: ``make bench NAME=schedule`` (``HOSTS``, ``PLACEMENTS`` change the sizes). Last line: JSON.
"""

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.dev")

import django

django.setup()

from django.db import connection  # noqa: E402

from accounts.choices import Role  # noqa: E402
from accounts.models import Membership, Organization, User  # noqa: E402
from environments.models import Environment, Image, Spec  # noqa: E402
from environments.services.lifecycle import environment_create  # noqa: E402
from environments.services.placement import NoCapacity  # noqa: E402
from machines.choices import GPUHealth  # noqa: E402
from machines.models import GPU, AgentCommand, Host  # noqa: E402

HOSTS = int(os.environ.get("HOSTS", "5000"))
GPUS_PER_HOST = 8
PLACEMENTS = int(os.environ.get("PLACEMENTS", "1000"))
RACERS = 32
PREFIX = "bench-sched-"
MODEL = "NVIDIA H100 80GB HBM3"


def clean() -> None:
    Environment.objects.filter(organization__slug__startswith=PREFIX).delete()
    AgentCommand.objects.filter(host__name__startswith=PREFIX).delete()
    Host.objects.filter(name__startswith=PREFIX).delete()
    Organization.objects.filter(slug__startswith=PREFIX).delete()
    User.objects.filter(email__startswith=PREFIX).delete()
    Spec.objects.filter(name__startswith=PREFIX).delete()
    Image.objects.filter(name__startswith=PREFIX).delete()


def create_fleet() -> None:
    hosts = Host.objects.bulk_create(
        [
            Host(
                name=f"{PREFIX}{i:05d}",
                status="online",
                connected=True,
                docker_version="20.10.24",
                cpu_cores=128,
                memory_total=2048 << 30,
                port_range_start=40000,
                port_range_end=44999,
            )
            for i in range(HOSTS)
        ],
        batch_size=2000,
    )
    GPU.objects.bulk_create(
        [
            GPU(
                host=host,
                uuid=f"GPU-{PREFIX}{host.pk}-{index}",
                index=index,
                model=MODEL,
                memory_total=80 << 30,
            )
            for host in hosts
            for index in range(GPUS_PER_HOST)
        ],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE machines_host; ANALYZE machines_gpu")


def organization(n: int, *, gpu_quota: int = 8) -> tuple[User, Organization]:
    user = User.objects.create_user(email=f"{PREFIX}{n}@example.com", password=None)
    org = Organization.objects.create(
        name=f"{PREFIX}{n}",
        slug=f"{PREFIX}{n}",
        gpu_quota=gpu_quota,
        environment_quota=PLACEMENTS + 1,
    )
    Membership.objects.create(user=user, organization=org, role=Role.OWNER)
    return user, org


def main() -> None:
    clean()
    started = time.perf_counter()
    create_fleet()
    print(
        f"fleet: {HOSTS} hosts, {HOSTS * GPUS_PER_HOST} GPUs "
        f"in {time.perf_counter() - started:.1f} s"
    )
    spec = Spec.objects.create(
        name=f"{PREFIX}1x", gpu_model=MODEL, gpu_count=1, vcpu=8, memory_gib=64
    )
    image = Image.objects.create(name=f"{PREFIX}image", reference="bench/image:1")
    user, org = organization(0, gpu_quota=PLACEMENTS + 1)

    timings = []
    for n in range(PLACEMENTS):
        start = time.perf_counter()
        environment_create(user=user, organization=org, name=f"e{n}", spec=spec, image=image)
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    p50 = statistics.median(timings)
    p99 = timings[int(len(timings) * 0.99) - 1]
    print(f"placements: {PLACEMENTS}, p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {timings[-1]:.1f} ms")

    # The race: one free GPU left in the fleet, 32 organisations at once.
    free = GPU.objects.filter(host__name__startswith=PREFIX).exclude(
        assignments__released_at__isnull=True
    )
    last = free.order_by("pk").first()
    free.exclude(pk=last.pk).update(health=GPUHealth.LOST)
    racers = [organization(n) for n in range(1, RACERS + 1)]
    barrier = threading.Barrier(RACERS)
    outcomes = []

    def race(racer):
        racer_user, racer_org = racer
        try:
            barrier.wait()
            environment_create(
                user=racer_user, organization=racer_org, name="race", spec=spec, image=image
            )
            outcomes.append("won")
        except NoCapacity:
            outcomes.append("no_capacity")
        finally:
            connection.close()

    threads = [threading.Thread(target=race, args=(racer,)) for racer in racers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = outcomes.count("won")
    print(
        f"race: {RACERS} requests, {winners} winner(s), "
        f"{outcomes.count('no_capacity')} told no capacity"
    )
    clean()
    print(
        json.dumps(
            {
                "bench": "schedule",
                "hosts": HOSTS,
                "gpus": HOSTS * GPUS_PER_HOST,
                "placements": PLACEMENTS,
                "p50_ms": round(p50, 2),
                "p99_ms": round(p99, 2),
                "race_requests": RACERS,
                "race_winners": winners,
            }
        )
    )


if __name__ == "__main__":
    main()
