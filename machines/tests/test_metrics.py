from datetime import UTC, datetime, timedelta

import pytest

from machines.models import GPUSample, GPUSampleRollup, HostSample, HostSampleRollup
from machines.selectors import host_metrics
from machines.services.metrics import metrics_prune, metrics_roll_up
from machines.tests.factories import GPUFactory

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 12, 7, 30, tzinfo=UTC)


def _samples(gpu, values, start):
    for offset, value in enumerate(values):
        when = start + timedelta(seconds=30 * offset)
        HostSample.objects.create(
            host=gpu.host,
            time=when,
            cpu_percent=value,
            memory_used=value,
            memory_total=100,
            disk_used=1,
            disk_total=2,
        )
        GPUSample.objects.create(
            gpu=gpu,
            time=when,
            utilization=value,
            memory_used=value,
            temperature=value,
            power_draw=value,
            ecc_errors=offset,
        )


def test_roll_up_averages_five_minute_buckets_and_can_run_again():
    gpu = GPUFactory()
    # 12:00:00 .. 12:04:30 (one bucket, 10 samples) and 12:05:00 .. 12:07:00 (5 samples)
    _samples(gpu, [10] * 10 + [50] * 5, datetime(2026, 11, 23, 12, 0, tzinfo=UTC))
    metrics_roll_up(now=NOW)
    metrics_roll_up(now=NOW)  # idempotent: same rows, same values

    rollups = list(GPUSampleRollup.objects.filter(gpu=gpu).order_by("time"))
    assert [r.time.minute for r in rollups] == [0, 5]
    assert [r.utilization for r in rollups] == [10, 50]
    assert [r.ecc_errors for r in rollups] == [9, 14]  # the bucket's maximum
    hosts = list(HostSampleRollup.objects.filter(host=gpu.host).order_by("time"))
    assert [h.cpu_percent for h in hosts] == [10, 50]


def test_late_samples_update_their_bucket():
    gpu = GPUFactory()
    _samples(gpu, [10, 10], datetime(2026, 11, 23, 12, 5, tzinfo=UTC))
    metrics_roll_up(now=NOW)
    _samples(gpu, [40, 40], datetime(2026, 11, 23, 12, 6, tzinfo=UTC))
    metrics_roll_up(now=NOW)
    assert GPUSampleRollup.objects.get(gpu=gpu).utilization == 25


def test_prune_keeps_raw_for_its_window_and_rollups_for_weeks(settings):
    settings.METRIC_RAW_RETENTION_HOURS = 48
    settings.METRIC_ROLLUP_RETENTION_DAYS = 35
    gpu = GPUFactory()
    _samples(gpu, [1], NOW - timedelta(hours=49))
    _samples(gpu, [2], NOW - timedelta(hours=47))
    GPUSampleRollup.objects.create(
        gpu=gpu,
        time=NOW - timedelta(days=36),
        utilization=1,
        memory_used=1,
        temperature=1,
        power_draw=1,
    )
    GPUSampleRollup.objects.create(
        gpu=gpu,
        time=NOW - timedelta(days=30),
        utilization=1,
        memory_used=1,
        temperature=1,
        power_draw=1,
    )

    assert metrics_prune(now=NOW) == 3  # one host sample, one GPU sample, one rollup
    assert GPUSample.objects.get().utilization == 2
    assert GPUSampleRollup.objects.get().time == NOW - timedelta(days=30)


def test_week_range_reads_rollups_beyond_the_raw_window():
    gpu = GPUFactory()
    GPUSampleRollup.objects.create(
        gpu=gpu,
        time=NOW - timedelta(days=5),
        utilization=77,
        memory_used=1,
        temperature=1,
        power_draw=1,
    )
    HostSampleRollup.objects.create(
        host=gpu.host,
        time=NOW - timedelta(days=5),
        cpu_percent=33,
        memory_used=1,
        memory_total=2,
        disk_used=1,
        disk_total=2,
    )

    week = host_metrics(gpu.host, "7d", now=NOW)
    assert week["gpus"][0]["utilization"] == [77]
    assert week["host"]["cpu"] == [33]
    assert host_metrics(gpu.host, "1h", now=NOW)["gpus"][0]["utilization"] == []
