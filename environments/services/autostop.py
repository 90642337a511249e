"""Auto-stop, per environment:

- a stop time (AutoDL's 定时关机) and a maximum run time (reason ``scheduled``);
- idle: its GPUs under ``idle_gpu_percent`` and no session (web terminal, SSH) for
  ``idle_stop_minutes`` (reason ``idle``). Only environments with GPUs; an environment whose
  host sends no GPU figures is never judged idle (nobody can tell).

Beat's sweep warns the owner ``WARNING_BEFORE`` ahead (once per deadline) and stops the
environment when its time comes (``/workspace`` is kept), then tells them. A stop time that
passed while the environment was stopped does not stop its next run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
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
MAX_IDLE_MINUTES = 7 * 24 * 60
# GPU figures older than this say nothing about now: an environment whose host stopped sending
# them is not stopped for idleness.
FIGURES_FRESH = timedelta(minutes=2)
_UNCHANGED = object()


def _minutes(value, field: str, low: int, high: int, *, nullable: bool = True):
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError.for_field(
            field, _("Give from %(low)d to %(high)d.") % {"low": low, "high": high}
        )
    return value


def auto_stop_validate(
    stop_at: datetime | object | None = _UNCHANGED,
    max_runtime_minutes: int | object | None = _UNCHANGED,
    idle_stop_minutes: int | object | None = _UNCHANGED,
    idle_gpu_percent: int | object = _UNCHANGED,
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
        changes["max_runtime_minutes"] = _minutes(
            max_runtime_minutes, "max_runtime_minutes", 1, MAX_RUNTIME_MINUTES
        )
    if idle_stop_minutes is not _UNCHANGED:
        # At least ten minutes: the warning comes five minutes before.
        changes["idle_stop_minutes"] = _minutes(
            idle_stop_minutes, "idle_stop_minutes", 10, MAX_IDLE_MINUTES
        )
    if idle_gpu_percent is not _UNCHANGED:
        changes["idle_gpu_percent"] = _minutes(
            idle_gpu_percent, "idle_gpu_percent", 1, 100, nullable=False
        )
    return changes


def environment_set_auto_stop(
    *,
    user: User,
    environment: Environment,
    stop_at: datetime | object | None = _UNCHANGED,
    max_runtime_minutes: int | object | None = _UNCHANGED,
    idle_stop_minutes: int | object | None = _UNCHANGED,
    idle_gpu_percent: int | object = _UNCHANGED,
) -> Environment:
    """Set or clear (None) the stop time, the maximum run time and the idle stop; what is not
    given stays."""
    if environment.status in (S.DELETING, S.DELETED):
        raise Conflict(_("This environment is being deleted."))
    changes = auto_stop_validate(stop_at, max_runtime_minutes, idle_stop_minutes, idle_gpu_percent)
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
                "idle_stop_minutes": environment.idle_stop_minutes,
                "idle_gpu_percent": environment.idle_gpu_percent,
            },
        )
    return environment


# Sessions (the web terminal, the SSH gateway) tell idle detection when they were last used:
# each source is ``f(environment) -> datetime | None`` (now while a session is open).
_activity_sources: list[Callable[[Environment], datetime | None]] = []


def environment_activity_source(function: Callable[[Environment], datetime | None]):
    """Register a source of session activity for idle detection."""
    _activity_sources.append(function)
    return function


# Per environment, over its GPUs' raw samples since its run started: the latest sample, and the
# latest at or above its idle threshold. One statement for every environment asked about (the
# unique (gpu, time) index serves the join), not two queries each.
_IDLE_FIGURES_SQL = """
SELECT a.environment_id,
       max(s.time) AS last_sample,
       max(s.time) FILTER (WHERE s.utilization >= e.idle_gpu_percent) AS last_busy
FROM environments_gpuassignment a
JOIN environments_environment e ON e.id = a.environment_id
JOIN machines_gpusample s ON s.gpu_id = a.gpu_id AND s.time >= e.started_at
WHERE a.released_at IS NULL AND a.environment_id = ANY(%s)
GROUP BY a.environment_id
"""


@dataclass
class IdleFigures:
    last_sample: datetime | None
    last_busy: datetime | None


def idle_figures(environment_ids: list[int]) -> dict[int, IdleFigures]:
    """The GPU figures idle detection needs, for each of ``environment_ids`` with any."""
    if not environment_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(_IDLE_FIGURES_SQL, [list(environment_ids)])
        return {row[0]: IdleFigures(row[1], row[2]) for row in cursor.fetchall()}


def _may_be_idle_soon(environment: Environment, now: datetime) -> bool:
    """Idle stop on, and running long enough that its deadline could be within the warning."""
    if not environment.idle_stop_minutes or environment.started_at is None:
        return False
    earliest = environment.started_at + timedelta(minutes=environment.idle_stop_minutes)
    return earliest - WARNING_BEFORE <= now


def idle_deadline(
    environment: Environment, now: datetime, figures: IdleFigures | None = None
) -> datetime | None:
    """When this run stops for idleness if nothing changes; None when idle stop is off, the
    environment has no GPUs, or its GPUs' figures are not fresh (nobody can tell).
    ``figures``: from ``idle_figures`` (read here when not given)."""
    if not environment.idle_stop_minutes or environment.started_at is None:
        return None
    if figures is None:
        figures = idle_figures([environment.pk]).get(environment.pk)
    if figures is None or figures.last_sample is None or figures.last_sample < now - FIGURES_FRESH:
        return None
    activity = [source(environment) for source in _activity_sources]
    idle_since = max(
        moment for moment in (environment.started_at, figures.last_busy, *activity) if moment
    )
    return idle_since + timedelta(minutes=environment.idle_stop_minutes)


@dataclass
class Deadline:
    at: datetime
    reason: str


def auto_stop_deadline(
    environment: Environment, now: datetime, figures: IdleFigures | None = None
) -> Deadline | None:
    """The earliest of this run's scheduled and idle deadlines, with its reason."""
    deadlines = []
    if environment.auto_stop_at is not None:
        deadlines.append(Deadline(environment.auto_stop_at, StatusReason.SCHEDULED))
    idle = idle_deadline(environment, now, figures) if figures is not None else None
    if idle is not None:
        deadlines.append(Deadline(idle, StatusReason.IDLE))
    return min(deadlines, key=lambda deadline: deadline.at, default=None)


def _owner(environment: Environment) -> User | None:
    user = environment.created_by
    return user if user is not None and user.is_active else None


def _notify(environment: Environment, title: str, body: str, level: str) -> None:
    owner = _owner(environment)
    if owner is not None:
        notification_create(
            owner,
            title,
            body=body,
            level=level,
            url=environment.get_absolute_url(),
            organization=environment.organization,
        )


def _warn(environment: Environment, deadline: Deadline) -> None:
    time = timezone.localtime(deadline.at).strftime("%Y-%m-%d %H:%M %Z")
    if deadline.reason == StatusReason.IDLE:
        body = _(
            "Its GPUs have been idle and no session is open: it stops at %(time)s unless "
            "they get busy or you connect; /workspace is kept."
        ) % {"time": time}
    else:
        body = _(
            "Auto-stop stops it at %(time)s; /workspace is kept. Change or clear its "
            "auto-stop on its page to keep it running."
        ) % {"time": time}
    _notify(
        environment,
        _("%(name)s stops in 5 minutes") % {"name": environment.name},
        body,
        NotificationLevel.WARNING,
    )
    Environment.objects.filter(pk=environment.pk).update(auto_stop_warned_for=deadline.at)


def _stop(environment: Environment, deadline: Deadline, now: datetime) -> bool:
    from .lifecycle import environment_stop  # lifecycle validates with this module's rules

    idle = deadline.reason == StatusReason.IDLE
    try:
        environment_stop(
            user=None,
            environment=environment,
            reason=deadline.reason,
            message=_("Stopping: its GPUs were idle for %(minutes)d minutes.")
            % {"minutes": environment.idle_stop_minutes}
            if idle
            else _("Stopping: its auto-stop time came."),
        )
    except ApplicationError as error:  # it changed state meanwhile, or lost its host
        logger.info("auto-stop of environment %s: %s", environment.pk, error)
        return False
    if environment.stop_at is not None and environment.stop_at <= now:
        Environment.objects.filter(pk=environment.pk).update(stop_at=None)  # it was once
    _notify(
        environment,
        _("%(name)s was stopped: idle") % {"name": environment.name}
        if idle
        else _("%(name)s was stopped by auto-stop") % {"name": environment.name},
        _("Its /workspace is kept; start it again when you need it."),
        NotificationLevel.INFO,
    )
    return True


def environment_auto_stop_sweep(now: datetime | None = None) -> dict[str, int]:
    """Warn the owners of environments whose auto-stop comes within ``WARNING_BEFORE``, once
    per deadline, and stop those whose time has come. Run by beat with the sweep."""
    now = now or timezone.now()
    counts = {"warned": 0, "stopped": 0}
    candidates = (
        Environment.objects.filter(status=S.RUNNING, started_at__isnull=False)
        .filter(
            Q(stop_at__isnull=False)
            | Q(max_runtime_minutes__isnull=False)
            | Q(idle_stop_minutes__isnull=False)
        )
        .select_related("organization", "created_by", "host")
    )
    candidates = list(candidates)
    figures = idle_figures(
        [environment.pk for environment in candidates if _may_be_idle_soon(environment, now)]
    )
    for environment in candidates:
        deadline = auto_stop_deadline(environment, now, figures.get(environment.pk))
        if deadline is None or deadline.at - now > WARNING_BEFORE:
            continue
        with transaction.atomic():
            if deadline.at <= now:
                counts["stopped"] += _stop(environment, deadline, now)
            elif environment.auto_stop_warned_for != deadline.at:
                _warn(environment, deadline)
                counts["warned"] += 1
    return counts
