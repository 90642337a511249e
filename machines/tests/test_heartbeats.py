"""Heartbeats are stored in batches, once each, with a constant number of queries."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone
from remotegpu_agent import protocol

from machines.choices import HostStatus
from machines.models import GPUSample, Host, HostSample
from machines.services.heartbeats import (
    HeartbeatBatcher,
    PendingHeartbeat,
    heartbeat_check,
    heartbeat_time,
    heartbeats_store,
)

from .factories import GIB, GPUFactory, HostFactory

T0 = 1_800_000_000.0  # agent clock, Unix seconds


def _gpu_sample(uuid: str, utilization: float = 50.0) -> protocol.GPUSample:
    return protocol.GPUSample(
        uuid=uuid,
        utilization=utilization,
        memory_used=10 * GIB,
        memory_total=80 * GIB,
        temperature=61.5,
        power_draw=250.0,
        power_limit=400.0,
        ecc_errors=2,
    )


def _beat(at: float = T0, *gpus, cpu: float = 12.5) -> protocol.Heartbeat:
    return protocol.Heartbeat(
        time=at,
        cpu_percent=cpu,
        memory_used=100 * GIB,
        memory_total=512 * GIB,
        disk_used=1000 * GIB,
        disk_total=4000 * GIB,
        load1=3.5,
        gpus=list(gpus),
    )


def _pending(host, beat, received_at=None) -> PendingHeartbeat:
    """Received when sent, by default: the agent's clock in step with the server's."""
    received_at = received_at or datetime.fromtimestamp(beat.time, tz=UTC)
    return PendingHeartbeat(host.pk, beat, received_at)


def test_store_writes_samples_and_latest_figures(db):
    host = HostFactory(cpu_percent=None, last_seen_at=None)
    gpu_a = GPUFactory(host=host, uuid="GPU-a")
    gpu_b = GPUFactory(host=host, uuid="GPU-b")
    received = datetime.fromtimestamp(T0 + 15.2, tz=UTC)

    stored = heartbeats_store(
        [
            _pending(host, _beat(T0, _gpu_sample("GPU-a", 10), _gpu_sample("GPU-b", 20), cpu=5)),
            _pending(
                host,
                _beat(T0 + 15, _gpu_sample("GPU-a", 30), _gpu_sample("GPU-b", 40), cpu=7),
                received,
            ),
        ]
    )

    assert stored == 2
    samples = list(HostSample.objects.filter(host=host).order_by("time"))
    assert [s.time for s in samples] == [
        datetime.fromtimestamp(T0, tz=UTC),
        datetime.fromtimestamp(T0 + 15, tz=UTC),
    ]
    assert [s.cpu_percent for s in samples] == [5, 7]
    assert (samples[0].memory_used, samples[0].disk_total, samples[0].load1) == (
        100 * GIB,
        4000 * GIB,
        3.5,
    )
    assert sorted(GPUSample.objects.values_list("gpu_id", "utilization")) == sorted(
        [(gpu_a.pk, 10), (gpu_b.pk, 20), (gpu_a.pk, 30), (gpu_b.pk, 40)]
    )
    host.refresh_from_db()
    assert (host.cpu_percent, host.memory_used, host.disk_used) == (7, 100 * GIB, 1000 * GIB)
    assert host.last_seen_at == received
    gpu_a.refresh_from_db()
    assert (gpu_a.utilization, gpu_a.memory_used, gpu_a.temperature) == (30, 10 * GIB, 61.5)
    assert (gpu_a.power_draw, gpu_a.power_limit, gpu_a.ecc_errors) == (250, 400, 2)


def _unknown_figures(uuid: str) -> protocol.GPUSample:
    """A GPU whose driver gives memory but none of the optional figures."""
    return protocol.GPUSample(
        uuid=uuid,
        utilization=None,
        memory_used=GIB,
        memory_total=80 * GIB,
        temperature=None,
        power_draw=None,
        power_limit=None,
        ecc_errors=None,
    )


@pytest.mark.parametrize("with_a_known_gpu", [False, True], ids=["all-null", "mixed"])
def test_figures_a_gpu_cannot_give_are_stored_as_null_not_zero(db, with_a_known_gpu):
    """A whole column of NULLs and NULLs among numbers both pass the unnest() arrays; a GPU
    that measured before and now cannot is unknown now, not its stale or a zero figure."""
    host = HostFactory()
    blind = GPUFactory(host=host, uuid="GPU-blind", temperature=70.0, ecc_errors=1)
    known = GPUFactory(host=host, uuid="GPU-known")
    gpus = [_unknown_figures("GPU-blind")]
    if with_a_known_gpu:
        gpus.append(_gpu_sample("GPU-known"))

    heartbeats_store([_pending(host, _beat(T0, *gpus))])

    figures = ("utilization", "temperature", "power_draw", "ecc_errors")
    assert GPUSample.objects.filter(gpu=blind).values_list(*figures).get() == (None,) * 4
    blind.refresh_from_db()
    assert (blind.utilization, blind.temperature, blind.power_draw) == (None, None, None)
    assert (blind.power_limit, blind.ecc_errors, blind.memory_used) == (None, None, GIB)
    if with_a_known_gpu:
        assert GPUSample.objects.filter(gpu=known).values_list(*figures).get() == (
            50.0,
            61.5,
            250.0,
            2,
        )
        known.refresh_from_db()
        assert (known.temperature, known.power_limit, known.ecc_errors) == (61.5, 400.0, 2)


def test_resent_heartbeat_is_stored_once(db):
    host = HostFactory()
    GPUFactory(host=host, uuid="GPU-a")
    beat = _beat(T0, _gpu_sample("GPU-a"))

    heartbeats_store([_pending(host, beat), _pending(host, beat)])  # twice in one batch
    heartbeats_store([_pending(host, beat)])  # and again after a reconnect

    assert HostSample.objects.filter(host=host).count() == 1
    assert GPUSample.objects.count() == 1


def test_same_agent_time_of_two_hosts_is_two_samples(db):
    first, second = HostFactory(), HostFactory()
    heartbeats_store([_pending(first, _beat(T0)), _pending(second, _beat(T0))])
    assert HostSample.objects.count() == 2


def test_unknown_or_foreign_gpu_uuids_are_skipped(db):
    host, other = HostFactory(), HostFactory()
    GPUFactory(host=host, uuid="GPU-mine")
    foreign = GPUFactory(host=other, uuid="GPU-theirs", utilization=1.0)

    heartbeats_store(
        [
            _pending(
                host,
                _beat(
                    T0,
                    _gpu_sample("GPU-mine"),
                    _gpu_sample("GPU-unknown"),
                    _gpu_sample("GPU-theirs", 99),
                ),
            )
        ]
    )

    assert list(GPUSample.objects.values_list("gpu__uuid", flat=True)) == ["GPU-mine"]
    foreign.refresh_from_db()
    assert foreign.utilization == 1.0
    assert HostSample.objects.filter(host=host).count() == 1


def test_a_heartbeat_brings_an_offline_host_back_online(db):
    """Offline detection may have fired while the socket stayed up (a slow flush, a database
    hiccup); the next heartbeat proves the host is there."""
    offline = HostFactory(status=HostStatus.OFFLINE, status_reason="No heartbeat", connected=False)
    maintenance = HostFactory(status=HostStatus.MAINTENANCE)
    retired = HostFactory(status=HostStatus.RETIRED)

    heartbeats_store([_pending(host, _beat(T0)) for host in (offline, maintenance, retired)])

    statuses = dict(Host.objects.values_list("pk", "status"))
    assert statuses == {
        offline.pk: HostStatus.ONLINE,
        maintenance.pk: HostStatus.MAINTENANCE,
        retired.pk: HostStatus.RETIRED,
    }
    offline.refresh_from_db()
    assert (offline.status_reason, offline.connected) == ("", True)


@pytest.mark.parametrize("at", [1e300, -1e300, 1e20])
def test_heartbeat_time_refuses_impossible_times(at):
    with pytest.raises(protocol.ProtocolError):
        heartbeat_time(_beat(at))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"cpu_percent": -0.1}, "heartbeat.cpu_percent: -0.1 is out of range (0 to 100)"),
        ({"disk_used": -1}, "heartbeat.disk_used: -1 is out of range (at least 0)"),
        ({"gpu": {"utilization": 100.1}}, "heartbeat.gpus[1].utilization: 100.1 is out of range"),
        ({"gpu": {"memory_used": -1}}, "heartbeat.gpus[1].memory_used: -1 is out of range"),
        ({"gpu": {"processes": -2}}, "heartbeat.gpus[1].processes: -2 is out of range"),
    ],
)
def test_heartbeat_check_refuses_impossible_figures_naming_them(change, error):
    beat = _beat(T0, _gpu_sample("GPU-0"), _gpu_sample("GPU-1"))
    for name, value in change.get("gpu", {}).items():
        setattr(beat.gpus[1], name, value)
    for name, value in change.items():
        if name != "gpu":
            setattr(beat, name, value)
    with pytest.raises(protocol.ProtocolError, match=re.escape(error)):
        heartbeat_check(beat)


def test_heartbeat_check_takes_the_bounds_and_unknown_gpu_figures():
    idle = _gpu_sample("GPU-0", utilization=0.0)
    busy = _gpu_sample("GPU-1", utilization=100.0)
    busy.temperature = busy.power_draw = busy.ecc_errors = None
    heartbeat_check(_beat(T0, idle, busy, cpu=100.0))


def test_heartbeat_time_is_the_agents_clock():
    assert heartbeat_time(_beat(T0)) == datetime.fromtimestamp(T0, tz=UTC)


def _batch(hosts, count: int) -> list[PendingHeartbeat]:
    """``count`` heartbeats spread over ``hosts``, each with two GPUs."""
    return [
        _pending(
            host,
            _beat(
                T0 + n,
                _gpu_sample(f"GPU-{host.pk}-0"),
                _gpu_sample(f"GPU-{host.pk}-1"),
            ),
        )
        for n in range(count)
        for host in [hosts[n % len(hosts)]]
    ]


# Hosts and GPUs of the batch; savepoint; host and GPU sample inserts; host and GPU figure
# updates; offline hosts back online; what billing is told (the hosts seen); savepoint release.
FLUSH_QUERIES = 9


@pytest.mark.parametrize("count", [10, 50])
def test_flush_of_heartbeats_from_10_hosts_takes_a_constant_number_of_queries(
    db, django_assert_num_queries, count
):
    hosts = [HostFactory() for _ in range(10)]
    for host in hosts:
        GPUFactory(host=host, uuid=f"GPU-{host.pk}-0")
        GPUFactory(host=host, uuid=f"GPU-{host.pk}-1")

    with django_assert_num_queries(FLUSH_QUERIES):
        assert heartbeats_store(_batch(hosts, count)) == count

    assert HostSample.objects.count() == count
    assert GPUSample.objects.count() == 2 * count


@pytest.mark.parametrize(
    ("agent_offset", "stamped_by_agent", "skewed"),
    [(0.4, True, False), (-29.0, True, False), (2 * 3600.0, False, True), (-86400.0, False, True)],
    ids=["in-step", "slightly-ahead", "two-hours-behind", "a-day-ahead"],
)
def test_a_clock_far_off_is_replaced_by_the_servers(db, agent_offset, stamped_by_agent, skewed):
    """An agent without NTP would put its samples where rollups and retention never look;
    beyond 30 s its samples take the server's time, and the host says how far off it is."""
    received = timezone.now()
    agent_time = received.timestamp() - agent_offset
    host = HostFactory()

    heartbeats_store([_pending(host, _beat(agent_time), received)])

    stored = HostSample.objects.get(host=host).time
    expected = datetime.fromtimestamp(agent_time, tz=UTC) if stamped_by_agent else received
    assert abs((stored - expected).total_seconds()) < 1e-3
    host.refresh_from_db()
    assert host.clock_offset == pytest.approx(agent_offset, abs=0.1)
    assert host.clock_skewed is skewed


def test_a_deleted_hosts_heartbeats_do_not_cost_the_others_theirs(transactional_db):
    """A host deleted in the admin keeps its socket until the next resync; its heartbeats are
    skipped rather than failing the batch that holds every other host's."""
    alive = HostFactory(last_seen_at=None)
    GPUFactory(host=alive, uuid="GPU-alive")
    gone = HostFactory()
    GPUFactory(host=gone, uuid="GPU-gone")
    gone_id = gone.pk
    gone.delete()

    stored = heartbeats_store(
        [
            _pending(alive, _beat(T0, _gpu_sample("GPU-alive"))),
            PendingHeartbeat(gone_id, _beat(T0, _gpu_sample("GPU-gone")), timezone.now()),
        ]
    )

    assert stored == 2
    alive.refresh_from_db()
    assert alive.last_seen_at is not None
    assert list(HostSample.objects.values_list("host_id", flat=True)) == [alive.pk]
    assert list(GPUSample.objects.values_list("gpu__uuid", flat=True)) == ["GPU-alive"]


# The batcher ------------------------------------------------------------------------------


def test_batcher_flushes_on_its_own_and_survives_a_failing_store(transactional_db, caplog):
    calls: list[list[PendingHeartbeat]] = []

    def store(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return len(batch)

    batcher = HeartbeatBatcher(store=store)
    host = HostFactory()

    async def scenario():
        batcher.add(host.pk, _beat(T0), timezone.now())
        deadline = time.monotonic() + 5
        while len(calls) < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        batcher.add(host.pk, _beat(T0 + 15), timezone.now())
        while len(calls) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        batcher._task.cancel()

    async_to_sync(scenario)()

    assert [len(batch) for batch in calls] == [1, 1]
    assert calls[1][0].heartbeat.time == T0 + 15
    assert "could not store 1 heartbeats" in caplog.text


def test_batcher_flush_writes_what_is_pending(transactional_db):
    host = HostFactory()
    batcher = HeartbeatBatcher()

    async def scenario():
        batcher.add(host.pk, _beat(T0), timezone.now())
        batcher.add(host.pk, _beat(T0 + 15), timezone.now() + timedelta(seconds=15))
        await batcher.flush()
        batcher._task.cancel()

    async_to_sync(scenario)()
    assert HostSample.objects.filter(host=host).count() == 2
