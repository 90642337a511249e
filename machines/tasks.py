"""Celery tasks of the fleet: thin wrappers around services, scheduled by beat."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from .models import GPUSample, HostSample
from .services.commands import command_expire_overdue
from .services.hosts import host_mark_offline_stale


@shared_task
def host_detect_offline_task() -> int:
    """Hosts that missed three heartbeats go offline and operators are told (every 5 s)."""
    return len(host_mark_offline_stale())


@shared_task
def command_expire_task() -> int:
    """Commands past their deadline fail visibly (every 30 s)."""
    return command_expire_overdue()


@shared_task
def metric_retention_task() -> int:
    """Drop raw samples older than ``METRIC_RAW_RETENTION_HOURS`` (hourly)."""
    cutoff = timezone.now() - timedelta(hours=settings.METRIC_RAW_RETENTION_HOURS)
    hosts, _ = HostSample.objects.filter(time__lt=cutoff).delete()
    gpus, _ = GPUSample.objects.filter(time__lt=cutoff).delete()
    return hosts + gpus
