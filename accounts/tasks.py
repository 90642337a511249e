"""Celery tasks of accounts: thin wrappers around services."""

from celery import shared_task

from .models import User
from .services.invitations import invitation_expire_due
from .services.users import user_end_sessions


@shared_task
def invitation_expire_task() -> int:
    """Expire pending invitations whose time is up. Scheduled hourly by beat."""
    return invitation_expire_due()


@shared_task
def user_end_sessions_task(user_id: int) -> int:
    """End every session of a user an operator has disabled."""
    user = User.objects.filter(pk=user_id).first()
    return user_end_sessions(user) if user else 0
