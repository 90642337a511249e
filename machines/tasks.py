"""Celery tasks of the fleet: thin wrappers around services, scheduled by beat."""

from celery import shared_task

from .services.alerts import WebhookDeliveryError, alert_webhook_deliver, alerts_evaluate
from .services.allocations import allocation_sweep
from .services.commands import command_expire_overdue, command_prune
from .services.hosts import host_mark_offline_stale
from .services.metrics import metrics_prune, metrics_roll_up
from .services.onboarding import onboarding_expire_stale, onboarding_run, onboarding_scan


@shared_task
def host_detect_offline_task() -> int:
    """Hosts that missed three heartbeats go offline (every 5 s); alert rules are evaluated at
    once so that the "host offline" alert does not wait for its own schedule."""
    went_offline = host_mark_offline_stale()
    if went_offline:
        alerts_evaluate()
    return len(went_offline)


@shared_task
def command_expire_task() -> int:
    """Commands past their deadline fail visibly (every 30 s)."""
    return command_expire_overdue()


@shared_task
def command_prune_task() -> int:
    """Finished commands past their retention go (hourly)."""
    return command_prune()


@shared_task
def metric_rollup_task() -> int:
    """Fold recent raw samples into 5-minute rollups (every minute)."""
    return metrics_roll_up()


@shared_task
def metric_retention_task() -> int:
    """Drop raw samples and rollups past their retention (hourly)."""
    return metrics_prune()


@shared_task
def alert_evaluate_task() -> int:
    """One pass over the enabled alert rules (every 15 s); returns how many alerts changed."""
    return alerts_evaluate().changes


@shared_task(
    autoretry_for=(WebhookDeliveryError,),
    retry_backoff=5,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=6,
)
def alert_webhook_task(rule_id: int, payload: dict) -> int | None:
    """POST one alert event to its rule's webhook, signed; network errors, timeouts and 5xx
    answers are retried with backoff (5 s, 10 s, 20 s … up to 10 min, six times)."""
    return alert_webhook_deliver(rule_id, payload)


@shared_task
def onboarding_scan_task(job_id: int) -> str:
    """Read a new onboarding job's SSH host key for an operator to confirm (nothing is sent to
    the server); returns the job's status."""
    return onboarding_scan(job_id)


@shared_task(time_limit=30 * 60)
def onboarding_run_task(job_id: int, server_url: str) -> str:
    """Run a confirmed onboarding job's steps (connect … verify); returns the job's status.
    ``server_url`` is the address the new host's agent reaches this server at."""
    return onboarding_run(job_id, server_url)


@shared_task
def onboarding_expire_task() -> int:
    """End onboarding jobs nobody moves on, wiping their secrets (every minute)."""
    return onboarding_expire_stale()


@shared_task
def allocation_sweep_task() -> dict[str, int]:
    """Whole-machine allocations: reclaim those whose end has come, activate those whose start
    has, warn tenants a day and an hour before the end (every 30 s)."""
    return allocation_sweep()
