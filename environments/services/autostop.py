"""Auto-stop: a stop time (AutoDL's 定时关机) and a maximum run time per environment.

The owner sets either or both; beat's sweep warns them ``WARNING_BEFORE`` ahead (once per
deadline) and stops the environment when its time comes (reason ``scheduled``; ``/workspace``
is kept), then tells them. A stop time that passed while the environment was stopped does not
stop its next run (``Environment.auto_stop_at``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.choices import AuditAction, NotificationLevel
from accounts.models import User
from accounts.services.audit import audit_record
from accounts.services.notifications import notification_create
from remotegpu.core.errors import ApplicationError, Conflict, ValidationError

from ..choices import EnvironmentStatus as S
from ..choices import StatusReason
from ..models import Environment

logger = logging.getLogger(__name__)

WARNING_BEFORE = timedelta(minutes=5)
MAX_RUNTIME_MINUTES = 30 * 24 * 60  # thirty days
MAX_STOP_AHEAD = timedelta(days=366)
_UNCHANGED = object()


def auto_stop_validate(
    stop_at: datetime | object | None = _UNCHANGED,
    max_runtime_minutes: int | object | None = _UNCHANGED,
) -> dict:
    """The auto-stop fields given (None clears one), checked; field errors otherwise."""
    now = timezone.now()
    changes = {}
    if stop_at is not _UNCHANGED:
        if stop_at is not None:
            if timezone.is_naive(stop_at):
                raise ValidationError.for_field("stop_at", _("Give the time with its time zone."))
            if stop_at <= now + timedelta(minutes=1):
                raise ValidationError.for_field(
                    "stop_at", _("Choose a time at least a minute from now.")
                )
            if stop_at > now + MAX_STOP_AHEAD:
                raise ValidationError.for_field("stop_at", _("Choose a time within a year."))
        changes["stop_at"] = stop_at
    if max_runtime_minutes is not _UNCHANGED:
        if max_runtime_minutes is not None and (
            isinstance(max_runtime_minutes, bool)
            or not isinstance(max_runtime_minutes, int)
            or not 1 <= max_runtime_minutes <= MAX_RUNTIME_MINUTES
        ):
            raise ValidationError.for_field(
                "max_runtime_minutes",
                _("Give from 1 to %(max)d minutes.") % {"max": MAX_RUNTIME_MINUTES},
            )
        changes["max_runtime_minutes"] = max_runtime_minutes
    return changes


def environment_set_auto_stop(
    *,
    user: User,
    environment: Environment,
    stop_at: datetime | object | None = _UNCHANGED,
    max_runtime_minutes: int | object | None = _UNCHANGED,
) -> Environment:
    """Set or clear (None) the stop time and the maximum run time; what is not given stays."""
    if environment.status in (S.DELETING, S.DELETED):
        raise Conflict(_("This environment is being deleted."))
    changes = auto_stop_validate(stop_at, max_runtime_minutes)
    if not changes:
        return environment
    with transaction.atomic():
        Environment.objects.filter(pk=environment.pk).update(**changes, auto_stop_warned_for=None)
        for name, value in changes.items():
            setattr(environment, name, value)
        environment.auto_stop_warned_for = None
        audit_record(
            AuditAction.ENVIRONMENT_AUTO_STOP_CHANGED,
            actor=user,
            organization=environment.organization,
            target=environment,
            details={
                "stop_at": environment.stop_at.isoformat() if environment.stop_at else None,
                "max_runtime_minutes": environment.max_runtime_minutes,
            },
        )
    return environment


def _owner(environment: Environment) -> User | None:
    user = environment.created_by
    return user if user is not None and user.is_active else None


def _warn(environment: Environment, deadline: datetime) -> None:
    owner = _owner(environment)
    if owner is not None:
        notification_create(
            owner,
            _("%(name)s stops in 5 minutes") % {"name": environment.name},
            body=_(
                "Auto-stop stops it at %(time)s; /workspace is kept. Change or clear its "
                "auto-stop on its page to keep it running."
            )
            % {"time": timezone.localtime(deadline).strftime("%Y-%m-%d %H:%M %Z")},
            level=NotificationLevel.WARNING,
            url=environment.get_absolute_url(),
            organization=environment.organization,
        )
    Environment.objects.filter(pk=environment.pk).update(auto_stop_warned_for=deadline)


def _stop(environment: Environment, now: datetime) -> bool:
    from .lifecycle import environment_stop  # lifecycle validates with this module's rules

    try:
        environment_stop(
            user=None,
            environment=environment,
            reason=StatusReason.SCHEDULED,
            message=_("Stopping: its auto-stop time came."),
        )
    except ApplicationError as error:  # it changed state meanwhile, or lost its host
        logger.info("auto-stop of environment %s: %s", environment.pk, error)
        return False
    if environment.stop_at is not None and environment.stop_at <= now:
        Environment.objects.filter(pk=environment.pk).update(stop_at=None)  # it was once
    owner = _owner(environment)
    if owner is not None:
        notification_create(
            owner,
            _("%(name)s was stopped by auto-stop") % {"name": environment.name},
            body=_("Its /workspace is kept; start it again when you need it."),
            url=environment.get_absolute_url(),
            organization=environment.organization,
        )
    return True


def environment_auto_stop_sweep(now: datetime | None = None) -> dict[str, int]:
    """Warn the owners of environments whose auto-stop comes within ``WARNING_BEFORE``, once
    per deadline, and stop those whose time has come. Run by beat with the sweep."""
    now = now or timezone.now()
    counts = {"warned": 0, "stopped": 0}
    candidates = (
        Environment.objects.filter(status=S.RUNNING, started_at__isnull=False)
        .filter(Q(stop_at__isnull=False) | Q(max_runtime_minutes__isnull=False))
        .select_related("organization", "created_by", "host")
    )
    for environment in candidates:
        deadline = environment.auto_stop_at
        if deadline is None:
            continue
        with transaction.atomic():
            if deadline <= now:
                counts["stopped"] += _stop(environment, now)
            elif deadline - now <= WARNING_BEFORE and environment.auto_stop_warned_for != deadline:
                _warn(environment, deadline)
                counts["warned"] += 1
    return counts
