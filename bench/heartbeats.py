"""Benchmark: heartbeats per second through real WebSockets, daphne and PostgreSQL.

N simulated agents (one WebSocket each, authenticated with a real host credential) send
heartbeats with 4 GPU samples at a fixed total rate to a daphne process; the server batches
them (machines.services.heartbeats). Measured in the same run:

- sustained heartbeats stored per second (rows that reached PostgreSQL during the window);
- lag from send to stored, p50 and p99 (a poller notes when each sample becomes visible; its
  resolution is the poll interval, 100 ms);
- the floor to beat: PostgreSQL's own single-row ``UPDATE machines_host SET last_seen_at``
  rate, one autocommit statement at a time, on the same server. Batching must beat it.

Run: ``make bench NAME=heartbeats`` (``AGENTS``, ``RATE``, ``SECONDS`` in the environment
change the load; ``PROFILE=1`` records the server with py-spy into ``.data/``). The last line
is one JSON object.
"""

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.dev")

import django  # noqa: E402

django.setup()

import websockets  # noqa: E402
from django.db import connection  # noqa: E402
from remotegpu_agent import protocol  # noqa: E402

from machines.models import GPU, Host, HostCredential, HostSample  # noqa: E402
from remotegpu.core import secrets  # noqa: E402

AGENTS = int(os.environ.get("AGENTS", "400"))
RATE = float(os.environ.get("RATE", "4000"))  # heartbeats per second, all agents together
SECONDS = float(os.environ.get("SECONDS", "15"))
GPUS_PER_HOST = 4
PREFIX = "bench-hb-"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_hosts() -> list[tuple[int, str, list[str]]]:
    Host.objects.filter(name__startswith=PREFIX).delete()
    hosts = Host.objects.bulk_create(
        [Host(name=f"{PREFIX}{i}", status="online", heartbeat_interval=15) for i in range(AGENTS)]
    )
    credentials, gpus, agents = [], [], []
    for host in hosts:
        generated = secrets.generate("rhc_")
        credentials.append(HostCredential(host=host, key=generated.key, digest=generated.digest))
        uuids = [f"GPU-bench-{host.pk}-{index}" for index in range(GPUS_PER_HOST)]
        gpus += [
            GPU(host=host, uuid=uuid, index=index, model="bench", memory_total=80 << 30)
            for index, uuid in enumerate(uuids)
        ]
        agents.append((host.pk, generated.plaintext, uuids))
    HostCredential.objects.bulk_create(credentials)
    GPU.objects.bulk_create(gpus)
    return agents


def single_row_update_rate(host_ids: list[int], seconds: float = 3.0) -> float:
    connection.ensure_connection()
    connection.connection.autocommit = True
    count, start = 0, time.perf_counter()
    with connection.cursor() as cursor:
        while time.perf_counter() - start < seconds:
            cursor.execute(
                "UPDATE machines_host SET last_seen_at = now() WHERE id = %s",
                [host_ids[count % len(host_ids)]],
            )
            count += 1
    return count / (time.perf_counter() - start)


def heartbeat_template(uuids: list[str]) -> str:
    """A heartbeat with placeholders for its id and time: the simulated agents must cost
    little CPU, since they share the machine with the server being measured."""
    gpus = [
        protocol.GPUSample(
            uuid=uuid,
            utilization=50.0,
            memory_used=1 << 30,
            memory_total=80 << 30,
            temperature=60.0,
            power_draw=250.0,
            power_limit=400.0,
        )
        for uuid in uuids
    ]
    message = protocol.Heartbeat(
        time=-1.0,
        cpu_percent=12.5,
        memory_used=1 << 34,
        memory_total=1 << 36,
        disk_used=1 << 40,
        disk_total=1 << 42,
        load1=1.0,
        gpus=gpus,
        id="ID",
    )
    return (
        protocol.dump(message).replace('"id":"ID"', '"id":"%s"').replace('"time":-1.0', '"time":%r')
    )


async def agent(url, credential, uuids, interval, stop_at, sent: dict, host_id: int):
    headers = {"Authorization": f"Bearer {credential}"}
    async with websockets.connect(url, additional_headers=headers, max_queue=None) as socket_:
        protocol.parse(await socket_.recv())  # welcome
        template = heartbeat_template(uuids)
        sequence = 0
        next_at = time.monotonic() + interval * (host_id % 97) / 97  # spread the agents
        while time.monotonic() < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            at = round(time.time(), 6)
            sent[(host_id, at)] = at
            sequence += 1
            await socket_.send(template % (f"{host_id}-{sequence}", at))
            next_at += interval


async def poll_stored(start_wall: float, stop_at: float, seen: dict) -> None:
    """Note when each sample becomes visible in PostgreSQL."""
    from asgiref.sync import sync_to_async

    def fetch(after):
        return list(
            HostSample.objects.filter(host__name__startswith=PREFIX, time__gt=after).values_list(
                "host_id", "time"
            )
        )

    from datetime import UTC, datetime

    after = datetime.fromtimestamp(start_wall - 1, tz=UTC)
    while time.monotonic() < stop_at + 5:
        now = time.time()
        for host_id, when in await sync_to_async(fetch)(after):
            seen.setdefault((host_id, round(when.timestamp(), 6)), now)
        await asyncio.sleep(0.1)


async def drive(url, agents) -> tuple[dict, dict, float]:
    interval = AGENTS / RATE
    start_wall = time.time()
    stop_at = time.monotonic() + SECONDS
    sent, seen = {}, {}
    poller = asyncio.create_task(poll_stored(start_wall, stop_at, seen))
    await asyncio.gather(
        *(
            agent(url, cred, uuids, interval, stop_at, sent, host_id)
            for host_id, cred, uuids in agents
        )
    )
    await poller
    return sent, seen, time.time() - start_wall


def main() -> None:
    agents = create_hosts()
    host_ids = [host_id for host_id, _, _ in agents]
    floor = single_row_update_rate(host_ids)
    port = free_port()
    env = dict(os.environ, DEBUG="false", PYTHONUNBUFFERED="1", LOG_LEVEL="WARNING")
    log = open(ROOT / ".data" / "bench-heartbeats-daphne.log", "w")  # noqa: SIM115
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
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        profiler = None
        if os.environ.get("PROFILE"):
            # py-spy's collapsed stacks of the server during the window, for finding hot spots.
            profiler = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-p",
                    str(daphne.pid),
                    "-d",
                    str(int(SECONDS)),
                    "-f",
                    "raw",
                    "-o",
                    str(ROOT / ".data" / "bench-heartbeats-daphne.pyspy"),
                    "-r",
                    "200",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        sent, seen, _ = asyncio.run(drive(f"ws://127.0.0.1:{port}/agent/ws/", agents))
        if profiler is not None:
            profiler.wait(30)
    finally:
        daphne.terminate()
        daphne.wait(10)
        log.close()
    stored = [key for key in sent if key in seen]
    lags = sorted(seen[key] - sent[key] for key in stored)
    per_s = len(stored) / SECONDS
    Host.objects.filter(name__startswith=PREFIX).delete()
    figures = {
        "bench": "heartbeats",
        "agents": AGENTS,
        "offered_per_s": RATE,
        # What the simulated agents managed to send: they share the two cores with the server.
        "sent_per_s": round(len(sent) / SECONDS),
        "per_s": round(per_s),
        "floor_per_s": round(floor),
        "ratio": round(per_s / floor, 2),
        "lag_p50_ms": round(statistics.median(lags) * 1000) if lags else None,
        "lag_p99_ms": round(lags[int(len(lags) * 0.99) - 1] * 1000) if lags else None,
        "lost": len(sent) - len(stored),
    }
    print(f"{AGENTS} agents offered {RATE:.0f} heartbeats/s for {SECONDS:.0f} s")
    print(f"stored {figures['per_s']}/s; single-row UPDATE floor {figures['floor_per_s']}/s")
    print(
        f"lag p50 {figures['lag_p50_ms']} ms, p99 {figures['lag_p99_ms']} ms; "
        f"not stored: {figures['lost']}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
