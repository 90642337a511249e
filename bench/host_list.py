"""Benchmark: the operator host list and the hosts API with 10,000 hosts of 8 GPUs each.

Measures, over repeated requests through Django's test client (middleware, template or
serialiser, everything but the network): p50 and p95 latency of ``/operator/hosts/`` (page 1
and a late page) and of ``/api/v1/hosts/``, and the number of SQL queries of each. Its floor:
the same page's rows fetched with one bare ``SELECT ... ORDER BY name LIMIT 50 OFFSET n`` on the
hosts table. Goal (issue 3): a constant number of queries, p95 under 150 ms.

Run: ``make bench NAME=host_list`` (``HOSTS`` changes the fleet size). Last line: JSON.
"""

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.dev")

import django

django.setup()

from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext, setup_test_environment  # noqa: E402

from accounts.models import User  # noqa: E402
from machines.models import GPU, Host  # noqa: E402

HOSTS = int(os.environ.get("HOSTS", "10000"))
GPUS_PER_HOST = 8
ROUNDS = 40
PREFIX = "bench-list-"


def create_fleet() -> None:
    Host.objects.filter(name__startswith=PREFIX).delete()
    hosts = Host.objects.bulk_create(
        [
            Host(
                name=f"{PREFIX}{i:05d}",
                status="online",
                cpu_percent=10,
                memory_used=1,
                memory_total=2,
                connected=True,
            )
            for i in range(HOSTS)
        ],
        batch_size=2000,
    )
    GPU.objects.bulk_create(
        [
            GPU(
                host=host,
                uuid=f"GPU-list-{host.pk}-{index}",
                index=index,
                model="NVIDIA H100 80GB HBM3" if index % 2 else "NVIDIA A100-SXM4-80GB",
                memory_total=80 << 30,
                utilization=50,
                temperature=60,
            )
            for host in hosts
            for index in range(GPUS_PER_HOST)
        ],
        batch_size=5000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE machines_host; ANALYZE machines_gpu")


def measure(client: Client, url: str) -> dict:
    client.get(url)  # warm up
    timings, queries = [], None
    for _ in range(ROUNDS):
        with CaptureQueriesContext(connection) as captured:
            start = time.perf_counter()
            response = client.get(url)
            timings.append(time.perf_counter() - start)
        assert response.status_code == 200, (url, response.status_code)
        queries = len(captured.captured_queries)
    timings.sort()
    return {
        "p50_ms": round(statistics.median(timings) * 1000, 1),
        "p95_ms": round(timings[int(len(timings) * 0.95) - 1] * 1000, 1),
        "queries": queries,
    }


def floor(offset: int) -> dict:
    timings = []
    with connection.cursor() as cursor:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            cursor.execute(
                "SELECT * FROM machines_host WHERE name LIKE %s ORDER BY name LIMIT 50 OFFSET %s",
                [PREFIX + "%", offset],
            )
            cursor.fetchall()
            timings.append(time.perf_counter() - start)
    timings.sort()
    return {"p95_ms": round(timings[int(len(timings) * 0.95) - 1] * 1000, 2)}


def main() -> None:
    setup_test_environment()
    create_fleet()
    operator, _ = User.objects.get_or_create(
        email="bench-operator@remotegpu.local", defaults={"is_staff": True}
    )
    client = Client()
    client.force_login(operator)
    last_page = max(1, HOSTS // 50)
    figures = {
        "page_1": measure(client, "/operator/hosts/"),
        "page_late": measure(client, f"/operator/hosts/?page={last_page}"),
        "api": measure(client, "/api/v1/hosts/?page_size=50"),
        "floor": floor(0),
    }
    Host.objects.filter(name__startswith=PREFIX).delete()
    result = {
        "bench": "host_list",
        "hosts": HOSTS,
        "gpus": HOSTS * GPUS_PER_HOST,
        "p95_ms": figures["page_1"]["p95_ms"],
        "p95_late_page_ms": figures["page_late"]["p95_ms"],
        "api_p95_ms": figures["api"]["p95_ms"],
        "queries": figures["page_1"]["queries"],
        "queries_late_page": figures["page_late"]["queries"],
        "api_queries": figures["api"]["queries"],
        "floor_p95_ms": figures["floor"]["p95_ms"],
        "ratio": round(figures["page_1"]["p95_ms"] / max(figures["floor"]["p95_ms"], 0.01), 1),
    }
    for name, values in figures.items():
        print(f"{name:>10}: {values}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
