"""Celery tasks of environments: thin wrappers around services, scheduled by beat."""

from celery import shared_task

from .services.reconciliation import environment_sweep


@shared_task
def environment_sweep_task() -> dict[str, int]:
    """Deadlines, exited containers, orphans past their grace, environments waiting for their
    GPUs (every 5 s)."""
    return environment_sweep()
