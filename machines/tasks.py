"""Celery tasks of the fleet: thin wrappers around services, scheduled by beat."""

from celery import shared_task

from .services.commands import command_expire_overdue
from .services.hosts import host_mark_offline_stale
from .services.metrics import metrics_prune, metrics_roll_up


@shared_task
def host_detect_offline_task() -> int:
    """Hosts that missed three heartbeats go offline and operators are told (every 5 s)."""
    return len(host_mark_offline_stale())


@shared_task
def command_expire_task() -> int:
    """Commands past their deadline fail visibly (every 30 s)."""
    return command_expire_overdue()


@shared_task
def metric_rollup_task() -> int:
    """Fold recent raw samples into 5-minute rollups (every minute)."""
    return metrics_roll_up()


@shared_task
def metric_retention_task() -> int:
    """Drop raw samples and rollups past their retention (hourly)."""
    return metrics_prune()
