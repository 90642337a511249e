"""Metric retention: raw samples for ``METRIC_RAW_RETENTION_HOURS``, 5-minute rollups for
``METRIC_ROLLUP_RETENTION_DAYS``. Both steps are single set-based statements, safe to re-run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from ..models import GPUSample, GPUSampleRollup, HostSample, HostSampleRollup

ROLLUP_STEP = timedelta(minutes=5)
# Each run re-aggregates this much history, so late heartbeats (a batch flushed after the
# bucket closed, an agent that was behind) still land in their bucket.
ROLLUP_LOOKBACK = timedelta(minutes=30)

_HOST_ROLLUP = """
INSERT INTO machines_hostsamplerollup
    (host_id, time, cpu_percent, memory_used, memory_total, disk_used, disk_total, load1)
SELECT host_id, date_bin(%(step)s, time, TIMESTAMPTZ '2000-01-01'), avg(cpu_percent),
       avg(memory_used)::bigint, max(memory_total), avg(disk_used)::bigint, max(disk_total),
       avg(load1)
FROM machines_hostsample WHERE time >= %(since)s
GROUP BY 1, 2
ON CONFLICT (host_id, time) DO UPDATE SET
    cpu_percent = EXCLUDED.cpu_percent, memory_used = EXCLUDED.memory_used,
    memory_total = EXCLUDED.memory_total, disk_used = EXCLUDED.disk_used,
    disk_total = EXCLUDED.disk_total, load1 = EXCLUDED.load1
"""

_GPU_ROLLUP = """
INSERT INTO machines_gpusamplerollup
    (gpu_id, time, utilization, memory_used, temperature, power_draw, ecc_errors)
SELECT gpu_id, date_bin(%(step)s, time, TIMESTAMPTZ '2000-01-01'), avg(utilization),
       avg(memory_used)::bigint, avg(temperature), avg(power_draw), max(ecc_errors)
FROM machines_gpusample WHERE time >= %(since)s
GROUP BY 1, 2
ON CONFLICT (gpu_id, time) DO UPDATE SET
    utilization = EXCLUDED.utilization, memory_used = EXCLUDED.memory_used,
    temperature = EXCLUDED.temperature, power_draw = EXCLUDED.power_draw,
    ecc_errors = EXCLUDED.ecc_errors
"""


def metrics_roll_up(now=None) -> int:
    """Fold recent raw samples into 5-minute rollups; returns the rollup rows written."""
    now = now or timezone.now()
    # Start at a bucket boundary so every bucket is recomputed from all of its samples.
    epoch = datetime(2000, 1, 1, tzinfo=UTC)
    since = now - ROLLUP_LOOKBACK
    since -= (since - epoch) % ROLLUP_STEP
    parameters = {"step": ROLLUP_STEP, "since": since}
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_HOST_ROLLUP, parameters)
        written = cursor.rowcount
        cursor.execute(_GPU_ROLLUP, parameters)
        return written + cursor.rowcount


def metrics_prune(now=None) -> int:
    """Drop raw samples and rollups past their retention; returns the rows deleted."""
    now = now or timezone.now()
    raw_cutoff = now - timedelta(hours=settings.METRIC_RAW_RETENTION_HOURS)
    rollup_cutoff = now - timedelta(days=settings.METRIC_ROLLUP_RETENTION_DAYS)
    deleted = 0
    for model, cutoff in (
        (HostSample, raw_cutoff),
        (GPUSample, raw_cutoff),
        (HostSampleRollup, rollup_cutoff),
        (GPUSampleRollup, rollup_cutoff),
    ):
        deleted += model.objects.filter(time__lt=cutoff).delete()[0]
    return deleted
