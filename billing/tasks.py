"""Celery tasks of billing: thin wrappers around services, scheduled by beat."""

from celery import shared_task

from .services.balance import balances_check
from .services.metering import billing_tick
from .services.reconciliation import billing_reconcile


@shared_task
def billing_tick_task() -> dict:
    """Charge what ran since the last tick, then tell and stop whom balance requires (every
    60 s). A tick that finds another one running leaves the work to it."""
    result = billing_tick(wait=False)
    checked = balances_check()
    return {"entries": result.entries if result else None, **checked}


@shared_task
def billing_reconcile_task() -> int:
    """Nightly: recompute balances and charges; returns the number of differences."""
    return len(billing_reconcile().differences)
