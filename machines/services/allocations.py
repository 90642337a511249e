"""Whole-machine allocations: an operator lends a host, all its GPUs, to one organisation for a
time range; its members reach the host as a tenant account, and only its environments are placed
there meanwhile.

Transitions, each a conditional update on the status and each audited::

    scheduled --(starts_at reached: tenant_create)--> provisioning --(account made)--> active
    provisioning | active | failed --(reclaim, by hand or at ends_at: tenant_reclaim)--> reclaiming
    reclaiming --(the agent's report is clean)--> reclaimed
    provisioning | reclaiming --(the agent failed, or found leftovers)--> failed
    scheduled --(reclaimed before it started: nothing is on the host)--> reclaimed

The host does the work (``agent/remotegpu_agent/tenants.py``); its answers come back through the
durable commands' result handling and move the allocation on. Owners and admins of the
organisation are told a day and an hour before the end, once each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.timesince import timeuntil
from django.utils.translation import gettext as _

from accounts.choices import MANAGER_ROLES, AuditAction, NotificationLevel
from accounts.models import Membership, Organization, User
from accounts.services.audit import audit_record
from accounts.services.notifications import notification_create
from accounts.services.users import user_require_operator, users_by_language
from remotegpu.core.errors import ApplicationError, Conflict, ValidationError

from ..choices import (
    OPEN_ALLOCATION_STATES,
    TENANT_PLACEMENT_STATES,
    CommandKind,
    CommandStatus,
    HostStatus,
)
from ..choices import AllocationStatus as S
from ..models import AgentCommand, Allocation, Host
from .commands import command_create, command_result_handler
from .gateway import gateway_access_changed

# The tenant's Unix account on the host; the agent refuses any other name (it never removes an
# account it did not make). Unix names may be 32 characters.
TENANT_USER_PREFIX = "rgt"
# A start typed as "now" is a little in the past by the time the form is sent.
START_TOLERANCE = timedelta(minutes=5)
# Bounds that catch a mistyped year, not business rules.
MAX_LEAD = timedelta(days=366)
MAX_LEASE = timedelta(days=3 * 366)
TENANT_CREATE_TIMEOUT = timedelta(minutes=10)
# Stopping and removing the organisation's containers and volumes may take a while.
TENANT_RECLAIM_TIMEOUT = timedelta(minutes=15)
WARN_DAY_BEFORE = timedelta(hours=24)
WARN_HOUR_BEFORE = timedelta(hours=1)
RECLAIMABLE_STATES = frozenset({S.PROVISIONING, S.ACTIVE, S.FAILED})
# A reclaim that failed for want of an answer is sent again this long after, host connected.
RECLAIM_RETRY_AFTER = timedelta(minutes=5)
# How many of the other organisations' environments a refusal names.
OCCUPANTS_NAMED = 5


def tenant_user_name(allocation_id: int) -> str:
    return f"{TENANT_USER_PREFIX}{allocation_id}"


@dataclass(frozen=True)
class AllocationConnection:
    """How the tenant reaches its host: through the agent's SSH gateway, as its own account."""

    available: bool  # active, and the gateway serves (the agent reports a port)
    user: str
    address: str
    port: int
    host_key_fingerprint: str
    ssh_command: str
    ssh_config: str


def allocation_connection(allocation: Allocation) -> AllocationConnection:
    host = allocation.host
    address = host.address or ""
    port = host.ssh_port
    available = allocation.status == S.ACTIVE and bool(port and address)
    ssh_command = f"ssh -p {port} {allocation.tenant_user}@{address}" if available else ""
    ssh_config = (
        f"Host {host.name}\n  HostName {address}\n  Port {port}\n  User {allocation.tenant_user}\n"
        if available
        else ""
    )
    return AllocationConnection(
        available=available,
        user=allocation.tenant_user,
        address=address,
        port=port,
        host_key_fingerprint=host.ssh_host_key_fingerprint if available else "",
        ssh_command=ssh_command,
        ssh_config=ssh_config,
    )


# Which environments of other organisations are on a host is the environments app's to say (it
# sits above this one): it registers a function returning their names.
_occupant_source: Callable[[Host, Organization], list[str]] | None = None


def host_occupants_source(function: Callable[[Host, Organization], list[str]]):
    """Register ``function(host, organization)``: names of environments of organisations other
    than ``organization`` still on ``host``, at most ``OCCUPANTS_NAMED`` of them."""
    global _occupant_source
    _occupant_source = function
    return function


def _occupants(host: Host, organization: Organization) -> list[str]:
    return _occupant_source(host, organization) if _occupant_source is not None else []


def _payload(allocation: Allocation) -> dict:
    return {
        "allocation_id": allocation.pk,
        "user": allocation.tenant_user,
        "organization_id": allocation.organization_id,
    }


def _transition(allocation: Allocation, *, source, target: str, **fields) -> bool:
    """``source -> target`` if the allocation is still in ``source`` (a state or a set); the row
    count says whether this caller won."""
    sources = [source] if isinstance(source, str) else list(source)
    fields["updated_at"] = timezone.now()
    updated = Allocation.objects.filter(pk=allocation.pk, status__in=sources).update(
        status=target, **fields
    )
    if updated:
        allocation.status = target
        for name, value in fields.items():
            setattr(allocation, name, value)
        if S.ACTIVE in (*sources, target):  # the tenant's SSH opens or closes
            gateway_access_changed([allocation.host_id])
        for listener in _status_listeners:
            listener(allocation)
    return bool(updated)


# Called with the allocation after each change of its status, inside the transaction (billing
# meters an active allocation).
_status_listeners: list[Callable[[Allocation], object]] = []


def allocation_status_listener(function: Callable[[Allocation], object]):
    _status_listeners.append(function)
    return function


def _audit(action: str, allocation: Allocation, actor: User | None = None, **details) -> None:
    audit_record(
        action,
        actor=actor,
        organization=allocation.organization,
        target=allocation,
        details={"host": allocation.host.name, "tenant_user": allocation.tenant_user, **details},
    )


def _notify_managers(allocation: Allocation, make_text: Callable[[], tuple[str, str]], level):
    """Tell the organisation's owners and admins, each in their own language."""
    managers = [
        membership.user
        for membership in Membership.objects.filter(
            organization=allocation.organization, role__in=MANAGER_ROLES, user__is_active=True
        ).select_related("user")
    ]
    url = reverse("my_machines:allocation_detail", args=[allocation.pk])
    for language, readers in users_by_language(managers).items():
        with translation.override(language):
            title, body = make_text()
        for reader in readers:
            notification_create(
                reader,
                title,
                body=body,
                level=level,
                url=url,
                organization=allocation.organization,
            )


def _local(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M %Z")


# Creating ----------------------------------------------------------------------------------


def _overlapping(host: Host, starts_at: datetime, ends_at: datetime) -> QuerySet[Allocation]:
    return Allocation.objects.filter(
        host=host,
        status__in=OPEN_ALLOCATION_STATES,
        starts_at__lt=ends_at,
        ends_at__gt=starts_at,
    ).select_related("organization")


def _overlap_error(other: Allocation) -> ValidationError:
    return ValidationError.for_field(
        "host",
        _("%(host)s is allocated to %(organization)s from %(start)s to %(end)s, which overlaps.")
        % {
            "host": other.host.name,
            "organization": other.organization.name,
            "start": _local(other.starts_at),
            "end": _local(other.ends_at),
        },
    )


def _validate_times(starts_at: datetime, ends_at: datetime, now: datetime) -> None:
    if ends_at <= starts_at:
        raise ValidationError.for_field("ends_at", _("The allocation must end after it starts."))
    if starts_at < now - START_TOLERANCE:
        raise ValidationError.for_field("starts_at", _("The start is in the past."))
    if ends_at <= now:
        raise ValidationError.for_field("ends_at", _("The end is in the past."))
    if starts_at > now + MAX_LEAD:
        raise ValidationError.for_field(
            "starts_at", _("An allocation may be made at most a year ahead.")
        )
    if ends_at - starts_at > MAX_LEASE:
        raise ValidationError.for_field("ends_at", _("An allocation may last at most three years."))


def _check_host(host: Host, organization: Organization) -> None:
    if host.status == HostStatus.RETIRED:
        raise ValidationError.for_field("host", _("%(host)s is retired.") % {"host": host.name})
    if not host.has_container_runtime:
        raise ValidationError.for_field(
            "host",
            _("%(host)s has no container runtime: its tenant's environments could not run.")
            % {"host": host.name},
        )
    occupants = _occupants(host, organization)
    if occupants:
        raise ValidationError.for_field(
            "host",
            _(
                "Environments of other organisations are still on %(host)s: %(names)s. They "
                "must be deleted first."
            )
            % {"host": host.name, "names": ", ".join(occupants)},
        )


def allocation_create(
    *,
    actor: User,
    host: Host,
    organization: Organization,
    starts_at: datetime,
    ends_at: datetime,
) -> Allocation:
    """Lend ``host`` to ``organization`` from ``starts_at`` to ``ends_at`` (operators). Refused,
    naming the field, when the range is backwards or past, the organisation is disabled, the
    host is retired or has no container runtime, another allocation of the host overlaps, or
    other organisations' environments are still on it. One whose start has come is activated
    at once; the others when beat's sweep reaches their start."""
    user_require_operator(actor)
    now = timezone.now()
    _validate_times(starts_at, ends_at, now)
    if not organization.is_active:
        raise ValidationError.for_field("organization", _("This organisation is disabled."))
    with transaction.atomic():
        # Allocations of one host, and placements on it, queue on the host's row.
        host = Host.objects.select_for_update().get(pk=host.pk)
        other = _overlapping(host, starts_at, ends_at).first()
        if other is not None:
            raise _overlap_error(other)
        _check_host(host, organization)
        try:
            with transaction.atomic():
                allocation = Allocation.objects.create(
                    host=host,
                    organization=organization,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    created_by=actor,
                )
        except IntegrityError as exc:  # the exclusion constraint: the database has the last word
            other = _overlapping(host, starts_at, ends_at).first()
            raise (
                _overlap_error(other)
                if other is not None
                else ValidationError.for_field("host", _("This host is already allocated."))
            ) from exc
        allocation.tenant_user = tenant_user_name(allocation.pk)
        allocation.save(update_fields=["tenant_user", "updated_at"])
        _audit(
            AuditAction.ALLOCATION_CREATED,
            allocation,
            actor,
            starts_at=starts_at.isoformat(),
            ends_at=ends_at.isoformat(),
        )
        if starts_at <= now:
            _activate(allocation, actor=actor)
    return allocation


def _activate(allocation: Allocation, *, actor: User | None = None) -> bool:
    """``scheduled -> provisioning``: ask the host for the tenant's account."""
    if not _transition(
        allocation,
        source=S.SCHEDULED,
        target=S.PROVISIONING,
        status_message=_("Creating the tenant account on the host."),
    ):
        return False
    command = command_create(
        host=allocation.host,
        kind=CommandKind.TENANT_CREATE,
        payload=_payload(allocation),
        requested_by=actor,
        timeout=TENANT_CREATE_TIMEOUT,
    )
    Allocation.objects.filter(pk=allocation.pk).update(last_command=command)
    allocation.last_command = command
    return True


# Reclaiming --------------------------------------------------------------------------------


def allocation_reclaim(*, actor: User | None, allocation: Allocation, reason: str) -> Allocation:
    """End the allocation: the host stops and removes the organisation's containers and
    volumes, ends the tenant's processes, removes its account, home, data folder and keys, then
    checks that none of it remains and reports what it removed. ``actor`` is an operator, or
    None when beat reclaims at the end of the lease. A failed allocation may be reclaimed
    again; one that never started ends at once."""
    if actor is not None:
        user_require_operator(actor)
    reason = (reason or "").strip()[:200]
    if not reason:
        raise ValidationError.for_field("reason", _("Say why the machine is reclaimed."))
    now = timezone.now()
    with transaction.atomic():
        allocation = (
            Allocation.objects.select_for_update(of=("self",))
            .select_related("host", "organization")
            .get(pk=allocation.pk)
        )
        requested = {
            "reclaim_reason": reason,
            "reclaim_requested_by": actor,
            "reclaim_requested_at": now,
        }
        if allocation.status == S.SCHEDULED:
            _transition(
                allocation,
                source=S.SCHEDULED,
                target=S.RECLAIMED,
                status_message=_("Ended before it started: nothing was on the host."),
                reclaim_report={"removed": {}, "remaining": {}, "clean": True},
                reclaimed_at=now,
                **requested,
            )
            _audit(AuditAction.ALLOCATION_RECLAIM_REQUESTED, allocation, actor, reason=reason)
            _audit(AuditAction.ALLOCATION_RECLAIMED, allocation, actor, removed={})
            return allocation
        if allocation.status not in RECLAIMABLE_STATES:
            raise Conflict(
                _("This allocation is %(status)s: there is nothing to reclaim now.")
                % {"status": allocation.get_status_display()}
            )
        try:
            with transaction.atomic():
                _transition(
                    allocation,
                    source=RECLAIMABLE_STATES,
                    target=S.RECLAIMING,
                    status_message=_("Removing the tenant's containers, account and files."),
                    **requested,
                )
        except IntegrityError as exc:  # a failed one whose range a newer allocation took
            raise Conflict(
                _(
                    "Another allocation of %(host)s overlaps this one's time range: reclaim "
                    "this one once that has ended."
                )
                % {"host": allocation.host.name}
            ) from exc
        _withdraw_unsent(allocation.last_command_id, now)
        command = command_create(
            host=allocation.host,
            kind=CommandKind.TENANT_RECLAIM,
            payload=_payload(allocation),
            requested_by=actor,
            timeout=TENANT_RECLAIM_TIMEOUT,
        )
        Allocation.objects.filter(pk=allocation.pk).update(last_command=command)
        allocation.last_command = command
        _audit(AuditAction.ALLOCATION_RECLAIM_REQUESTED, allocation, actor, reason=reason)
    return allocation


def _withdraw_unsent(command_id, now: datetime) -> None:
    """A ``tenant_create`` the host never received (it was offline) must not reach it after the
    reclaim: it would make the account again. One already sent runs first, as it was sent."""
    if command_id is None:
        return
    AgentCommand.objects.filter(
        pk=command_id, kind=CommandKind.TENANT_CREATE, status=CommandStatus.PENDING
    ).update(
        status=CommandStatus.FAILED,
        error=_("Withdrawn: the allocation is being reclaimed."),
        finished_at=now,
    )


# The host's answers ------------------------------------------------------------------------


def _allocation(command: AgentCommand) -> Allocation | None:
    """The allocation ``command`` was sent for, if it is still that allocation's latest."""
    allocation_id = command.payload.get("allocation_id")
    if not isinstance(allocation_id, int):
        return None
    allocation = (
        Allocation.objects.select_related("host", "organization")
        .filter(pk=allocation_id, host_id=command.host_id)
        .first()
    )
    if allocation is None or allocation.last_command_id != command.pk:
        return None
    return allocation


def _command_error(command: AgentCommand) -> str:
    return command.error or _("The host gave no reason.")


@command_result_handler(CommandKind.TENANT_CREATE)
def tenant_create_finished(command: AgentCommand) -> None:
    allocation = _allocation(command)
    if allocation is None:
        return
    if command.status == CommandStatus.SUCCEEDED:
        if _transition(
            allocation,
            source=S.PROVISIONING,
            target=S.ACTIVE,
            status_message="",
            activated_at=timezone.now(),
        ):
            _audit(AuditAction.ALLOCATION_ACTIVATED, allocation)
            _notify_managers(allocation, lambda: _ready_text(allocation), NotificationLevel.SUCCESS)
        return
    error = _command_error(command)
    if _transition(
        allocation,
        source=S.PROVISIONING,
        target=S.FAILED,
        status_message=(_("The tenant account could not be created: %(error)s") % {"error": error})[
            :500
        ],
    ):
        _audit(AuditAction.ALLOCATION_FAILED, allocation, step="tenant_create", error=error[:500])


def _ready_text(allocation: Allocation) -> tuple[str, str]:
    title = _("%(host)s is yours until %(end)s") % {
        "host": allocation.host.name,
        "end": _local(allocation.ends_at),
    }
    body = _(
        "The whole machine is allocated to %(organization)s. Its page says how to connect."
    ) % {"organization": allocation.organization.name}
    return title, body


def _remaining_text(report: dict) -> str:
    remaining = report.get("remaining")
    if not isinstance(remaining, dict) or not remaining:
        return ""
    return ", ".join(f"{key}: {value}" for key, value in sorted(remaining.items()))[:300]


# What else lived on the host for the tenant is other apps' (environments sits above this one):
# they register a function called when the host has removed the organisation's containers and
# volumes, inside the transaction that records it.
_reclaimed_listeners: list[Callable[[Allocation], object]] = []


def allocation_reclaimed_listener(function: Callable[[Allocation], object]):
    _reclaimed_listeners.append(function)
    return function


@command_result_handler(CommandKind.TENANT_RECLAIM)
def tenant_reclaim_finished(command: AgentCommand) -> None:
    allocation = _allocation(command)
    if allocation is None:
        return
    report = command.result if isinstance(command.result, dict) else {}
    now = timezone.now()
    if command.status == CommandStatus.SUCCEEDED:
        # The host removed the organisation's containers and volumes (leftovers or not).
        for listener in _reclaimed_listeners:
            listener(allocation)
    if command.status == CommandStatus.SUCCEEDED and report.get("clean") is True:
        if _transition(
            allocation,
            source=S.RECLAIMING,
            target=S.RECLAIMED,
            status_message="",
            reclaim_report=report,
            reclaimed_at=now,
        ):
            _audit(AuditAction.ALLOCATION_RECLAIMED, allocation, removed=report.get("removed"))
            _notify_managers(
                allocation, lambda: _reclaimed_text(allocation), NotificationLevel.INFO
            )
        return
    if command.status == CommandStatus.SUCCEEDED:
        message = _("The host still holds some of the tenant's things: %(remaining)s") % {
            "remaining": _remaining_text(report) or _("see the report")
        }
    else:
        message = _("The host could not reclaim it: %(error)s") % {"error": _command_error(command)}
        report = {**report, "error": _command_error(command)[:2000]}
    if _transition(
        allocation,
        source=S.RECLAIMING,
        target=S.FAILED,
        status_message=message[:500],
        reclaim_report=report,
    ):
        _audit(
            AuditAction.ALLOCATION_FAILED,
            allocation,
            step="tenant_reclaim",
            error=message[:500],
            remaining=report.get("remaining"),
        )


def _reclaimed_text(allocation: Allocation) -> tuple[str, str]:
    title = _("%(host)s was reclaimed") % {"host": allocation.host.name}
    body = _(
        "The allocation of %(host)s to %(organization)s has ended: its containers, volumes, "
        "account and files are removed."
    ) % {"host": allocation.host.name, "organization": allocation.organization.name}
    return title, body


# Beat --------------------------------------------------------------------------------------


def _warning_text(allocation: Allocation, now: datetime) -> tuple[str, str]:
    title = _("%(host)s is reclaimed in %(time)s") % {
        "host": allocation.host.name,
        "time": timeuntil(allocation.ends_at, now),
    }
    body = _(
        "The allocation of %(host)s to %(organization)s ends at %(end)s. Then its containers, "
        "volumes, processes, account and files on the host are removed: copy off what you want "
        "to keep."
    ) % {
        "host": allocation.host.name,
        "organization": allocation.organization.name,
        "end": _local(allocation.ends_at),
    }
    return title, body


def _warn(allocation: Allocation, now: datetime, *, hour: bool) -> bool:
    """One warning, once: the conditional update on its time stamp says who sends it. The
    hour's warning also stands for the day's when both are due (a short lease)."""
    if hour:
        claimed = Allocation.objects.filter(pk=allocation.pk, warned_1h_at__isnull=True).update(
            warned_1h_at=now, warned_24h_at=Coalesce(F("warned_24h_at"), Value(now))
        )
    else:
        claimed = Allocation.objects.filter(pk=allocation.pk, warned_24h_at__isnull=True).update(
            warned_24h_at=now
        )
    if not claimed:
        return False
    _notify_managers(allocation, lambda: _warning_text(allocation, now), NotificationLevel.WARNING)
    _audit(AuditAction.ALLOCATION_WARNED, allocation, before="1h" if hour else "24h")
    return True


def _each(queryset: QuerySet[Allocation], action: Callable[[Allocation], bool]) -> int:
    """Run ``action`` on each row in its own transaction, the row locked; a row another sweep
    holds is skipped (it is being handled)."""
    done = 0
    for pk in queryset.values_list("pk", flat=True):
        with transaction.atomic():
            allocation = (
                Allocation.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("host", "organization")
                .filter(pk=pk)
                .first()
            )
            if allocation is not None and action(allocation):
                done += 1
    return done


def _reclaim_ended(allocation: Allocation) -> bool:
    if allocation.status not in {S.SCHEDULED, S.PROVISIONING, S.ACTIVE}:
        return False
    allocation_reclaim(actor=None, allocation=allocation, reason=_("The allocation ended."))
    return True


def _reclaim_again(allocation: Allocation) -> bool:
    if allocation.status != S.FAILED:
        return False
    try:
        with transaction.atomic():
            allocation_reclaim(
                actor=None, allocation=allocation, reason=allocation.reclaim_reason or "-"
            )
    except ApplicationError:  # a newer allocation took its range: an operator's call
        return False
    return True


def allocation_sweep(now: datetime | None = None) -> dict[str, int]:
    """Beat: reclaim allocations whose end has come, activate those whose start has, and warn
    the tenant organisation's owners and admins a day and an hour before the end (once each).
    A reclaim the host never answered (it was offline) is tried again once it is connected.
    Reruns are harmless: every step is a conditional update."""
    now = now or timezone.now()
    running = Q(status__in=TENANT_PLACEMENT_STATES)
    reclaimed = _each(
        Allocation.objects.filter(running | Q(status=S.SCHEDULED), ends_at__lte=now),
        _reclaim_ended,
    )
    reclaimed += _each(
        Allocation.objects.filter(
            status=S.FAILED,
            reclaim_requested_at__isnull=False,
            host__connected=True,
            last_command__kind=CommandKind.TENANT_RECLAIM,
            last_command__status=CommandStatus.FAILED,
            last_command__result={},  # no answer at all; an answer is an operator's to judge
            last_command__finished_at__lte=now - RECLAIM_RETRY_AFTER,
        ),
        _reclaim_again,
    )
    activated = _each(
        Allocation.objects.filter(status=S.SCHEDULED, starts_at__lte=now, ends_at__gt=now),
        lambda allocation: _activate(allocation),
    )
    warned = _each(
        Allocation.objects.filter(
            running,
            warned_1h_at__isnull=True,
            ends_at__gt=now,
            ends_at__lte=now + WARN_HOUR_BEFORE,
        ),
        lambda allocation: _warn(allocation, now, hour=True),
    )
    warned += _each(
        Allocation.objects.filter(
            running,
            warned_24h_at__isnull=True,
            ends_at__gt=now + WARN_HOUR_BEFORE,
            ends_at__lte=now + WARN_DAY_BEFORE,
        ),
        lambda allocation: _warn(allocation, now, hour=False),
    )
    return {"reclaimed": reclaimed, "activated": activated, "warned": warned}
