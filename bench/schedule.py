"""Benchmark: placement on a big fleet, and the race for the last free GPU.

5,000 hosts of 8 GPUs (40,000 GPUs) in the database, all online with a container runtime; then
1,000 environments created one after another through ``environment_create`` (validation,
quota, placement with its row locks, ports, the command row, audit and events: everything but
the HTTP layer), timing each. Then every GPU but one is taken out of service and 32 threads,
each another organisation's, ask for the last one at the same moment.

Goal (issue 7): p99 of a placement at most 25 ms; exactly one winner of the race. The
placement step (``place``: choose the host, lock its GPUs, re-check its cores) is timed inside
each create; the whole create's figures are printed beside it.

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
from stack import purge_billing  # noqa: E402

from accounts.choices import Role  # noqa: E402
from accounts.models import Membership, Organization, User  # noqa: E402
from environments.models import Environment, Image, Spec  # noqa: E402
from environments.services import lifecycle  # noqa: E402
from environments.services.lifecycle import environment_create  # noqa: E402
from environments.services.placement import NoCapacity, free_gpus  # noqa: E402
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
    purge_billing(PREFIX)  # creating checks the balance, which makes each wallet
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
        # As autovacuum would, after the bulk insert churned the trigger-kept counts.
        cursor.execute("VACUUM ANALYZE machines_host")
        cursor.execute("VACUUM ANALYZE machines_gpu")
        cursor.execute("VACUUM ANALYZE machines_hostgpumodel")


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


def percentiles(timings: list[float]) -> tuple[float, float]:
    ordered = sorted(timings)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)]


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

    # The placement step alone (choosing the host and locking its GPUs) is timed inside each
    # create, as well as the whole create.
    placing = []
    place = lifecycle.place

    def timed_place(*args, **kwargs):
        start = time.perf_counter()
        try:
            return place(*args, **kwargs)
        finally:
            placing.append((time.perf_counter() - start) * 1000)

    lifecycle.place = timed_place
    creating = []
    for n in range(PLACEMENTS):
        start = time.perf_counter()
        environment_create(user=user, organization=org, name=f"e{n}", spec=spec, image=image)
        creating.append((time.perf_counter() - start) * 1000)
    lifecycle.place = place
    p50, p99 = percentiles(placing)
    create_p50, create_p99 = percentiles(creating)
    print(f"placements: {PLACEMENTS}, placement p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"whole creates: p50 {create_p50:.1f} ms, p99 {create_p99:.1f} ms")

    # The race: one free GPU left in the fleet, 32 organisations at once.
    free = free_gpus().filter(host__name__startswith=PREFIX)
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
                "create_p50_ms": round(create_p50, 2),
                "create_p99_ms": round(create_p99, 2),
                "race_requests": RACERS,
                "race_winners": winners,
            }
        )
    )


if __name__ == "__main__":
    main()
