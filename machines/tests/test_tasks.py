"""The fleet's beat tasks: offline detection, command expiry, metric retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import Notification
from machines.choices import CommandStatus, HostStatus
from machines.models import AgentCommand, GPUSample, Host, HostSample
from machines.tasks import command_expire_task, host_detect_offline_task, metric_retention_task
from remotegpu.celery import app

from .factories import AgentCommandFactory, GPUFactory, HostFactory


def test_beat_schedules_every_fleet_task():
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    for task in (host_detect_offline_task, command_expire_task, metric_retention_task):
        assert task.name in scheduled
        assert task.name in app.tasks


def test_host_detect_offline_task(operator, default_alert_rules):
    stale = HostFactory(last_seen_at=timezone.now() - timedelta(minutes=5))
    fresh = HostFactory()

    assert host_detect_offline_task.delay().get() == 1
    assert host_detect_offline_task.delay().get() == 0

    assert Host.objects.get(pk=stale.pk).status == HostStatus.OFFLINE
    assert Host.objects.get(pk=fresh.pk).status == HostStatus.ONLINE
    assert Notification.objects.filter(user=operator).count() == 1


def test_command_expire_task(db):
    overdue = AgentCommandFactory(deadline=timezone.now() - timedelta(seconds=1))
    current = AgentCommandFactory()

    assert command_expire_task.delay().get() == 1
    assert command_expire_task.delay().get() == 0

    assert AgentCommand.objects.get(pk=overdue.pk).status == CommandStatus.FAILED
    assert AgentCommand.objects.get(pk=current.pk).status == CommandStatus.PENDING


@pytest.mark.parametrize("hours", [24, 48])
def test_metric_retention_task_keeps_the_raw_window(db, settings, hours):
    settings.METRIC_RAW_RETENTION_HOURS = hours
    now = timezone.now()
    host = HostFactory()
    gpu = GPUFactory(host=host)
    ages = {
        "old": timedelta(hours=hours, minutes=1),
        "kept": timedelta(hours=hours, minutes=-1),
        "new": timedelta(seconds=1),
    }
    for age in ages.values():
        HostSample.objects.create(
            host=host,
            time=now - age,
            cpu_percent=1,
            memory_used=1,
            memory_total=1,
            disk_used=1,
            disk_total=1,
        )
        GPUSample.objects.create(
            gpu=gpu, time=now - age, utilization=1, memory_used=1, temperature=1, power_draw=1
        )

    assert metric_retention_task.delay().get() == 2
    assert metric_retention_task.delay().get() == 0

    oldest_kept = now - ages["kept"]
    assert HostSample.objects.count() == GPUSample.objects.count() == 2
    assert min(HostSample.objects.values_list("time", flat=True)) == oldest_kept
    assert min(GPUSample.objects.values_list("time", flat=True)) == oldest_kept


def test_raw_samples_are_kept_at_least_a_day_by_default():
    assert settings.METRIC_RAW_RETENTION_HOURS >= 24
