"""Whole-machine allocations: creating (and every refusal, field by field), activation through
the host's answer to ``tenant_create``, reclaim and its report, and beat's sweep (activation,
warnings a day and an hour before, once each, and reclaim at the end)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.choices import AuditAction, Role
from accounts.models import AuditEvent, Notification
from accounts.tests.factories import MembershipFactory, OrganizationFactory
from machines.choices import AllocationStatus, CommandKind, CommandStatus, HostStatus
from machines.models import AgentCommand, Allocation
from machines.services.allocations import (
    allocation_connection,
    allocation_create,
    allocation_reclaim,
    allocation_sweep,
)
from machines.services.commands import command_expire_overdue, command_finish
from machines.tasks import allocation_sweep_task
from remotegpu.core.errors import Conflict, PermissionDenied, ValidationError

from .factories import AllocationFactory, GPUFactory, HostFactory, RuntimeHostFactory

pytestmark = pytest.mark.django_db

S = AllocationStatus
CLEAN_REPORT = {
    "user": "x",
    "removed": {"containers": ["rgpu-env-1"], "volumes": ["rgpu-vol-1"], "processes": 2},
    "remaining": {},
    "clean": True,
    "errors": [],
}


@pytest.fixture
def tenant(organization):
    """The tenant organisation's owner, admin and member."""
    return {
        role: MembershipFactory(organization=organization, role=role).user
        for role in (Role.OWNER, Role.ADMIN, Role.MEMBER)
    }


def _create(operator, organization, *, host=None, start=timedelta(0), length=timedelta(days=1)):
    now = timezone.now()
    return allocation_create(
        actor=operator,
        host=host or RuntimeHostFactory(),
        organization=organization,
        starts_at=now + start,
        ends_at=now + start + length,
    )


def _finish(allocation, *, ok=True, result=None, error=""):
    allocation.refresh_from_db()
    command = allocation.last_command
    assert command_finish(command.host_id, str(command.pk), ok=ok, result=result or {}, error=error)
    allocation.refresh_from_db()
    return allocation


def _actions(allocation) -> list[str]:
    return list(
        AuditEvent.objects.filter(target_type="allocation", target_id=str(allocation.pk))
        .order_by("pk")
        .values_list("action", flat=True)
    )


# Creating --------------------------------------------------------------------------------------


def test_a_future_allocation_is_scheduled_with_its_tenant_user(operator, organization):
    allocation = _create(operator, organization, start=timedelta(hours=2))
    allocation.refresh_from_db()
    assert allocation.status == S.SCHEDULED
    assert allocation.tenant_user == f"rgt{allocation.pk}"
    assert allocation.created_by == operator
    assert allocation.last_command is None
    assert _actions(allocation) == [AuditAction.ALLOCATION_CREATED]
    event = AuditEvent.objects.get(action=AuditAction.ALLOCATION_CREATED)
    assert event.organization == organization  # the tenant's managers read it in their log
    assert event.actor == operator


def test_an_allocation_whose_start_has_come_asks_the_host_for_the_tenant(operator, organization):
    allocation = _create(operator, organization)
    allocation.refresh_from_db()
    assert allocation.status == S.PROVISIONING
    command = allocation.last_command
    assert command.kind == CommandKind.TENANT_CREATE
    assert command.host == allocation.host
    assert command.payload == {
        "allocation_id": allocation.pk,
        "user": allocation.tenant_user,
        "organization_id": organization.pk,
    }


@pytest.mark.parametrize(
    ("start", "length", "field"),
    [
        (timedelta(hours=1), timedelta(0), "ends_at"),
        (timedelta(hours=1), -timedelta(hours=1), "ends_at"),
        (-timedelta(hours=2), timedelta(hours=3), "starts_at"),
        (-timedelta(hours=3), timedelta(hours=2), "starts_at"),
        (timedelta(days=400), timedelta(days=1), "starts_at"),
        (timedelta(0), timedelta(days=5 * 365), "ends_at"),
    ],
)
def test_times_are_checked_field_by_field(operator, organization, start, length, field):
    with pytest.raises(ValidationError) as refused:
        _create(operator, organization, start=start, length=length)
    assert set(refused.value.fields) == {field}
    assert not Allocation.objects.exists()


@pytest.mark.parametrize(
    "host_fields",
    [{"status": HostStatus.RETIRED}, {"docker_version": ""}],
    ids=["retired", "no container runtime"],
)
def test_a_host_that_cannot_be_lent_is_refused(operator, organization, host_fields):
    with pytest.raises(ValidationError) as refused:
        _create(operator, organization, host=RuntimeHostFactory(**host_fields))
    assert set(refused.value.fields) == {"host"}


def test_a_disabled_organisation_is_refused(operator):
    with pytest.raises(ValidationError) as refused:
        _create(operator, OrganizationFactory(is_active=False))
    assert set(refused.value.fields) == {"organization"}


def test_only_operators_allocate(owner, organization):
    with pytest.raises(PermissionDenied):
        _create(owner, organization)
    assert not Allocation.objects.exists()


def test_overlapping_allocations_of_one_host_are_refused(operator, organization):
    host = RuntimeHostFactory()
    first = _create(operator, organization, host=host, start=timedelta(hours=1))
    for start, length in [
        (timedelta(hours=2), timedelta(hours=1)),  # inside
        (timedelta(0), timedelta(hours=2)),  # across the start
        (timedelta(hours=24), timedelta(hours=2)),  # across the end
    ]:
        with pytest.raises(ValidationError) as refused:
            _create(operator, OrganizationFactory(), host=host, start=start, length=length)
        assert set(refused.value.fields) == {"host"}
        assert first.organization.name in str(refused.value.message)
    # Back to back is fine, and so is another host at the same time.
    after = _create(
        operator, OrganizationFactory(), host=host, start=timedelta(hours=25), length=timedelta(1)
    )
    assert after.status == S.SCHEDULED
    assert _create(operator, OrganizationFactory(), start=timedelta(hours=1)).host != host


def test_the_database_refuses_an_overlap_the_service_did_not_see():
    first = AllocationFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        AllocationFactory(host=first.host, starts_at=first.ends_at - timedelta(minutes=1))
    # Ended allocations hold nothing.
    Allocation.objects.filter(pk=first.pk).update(status=S.RECLAIMED)
    assert AllocationFactory(host=first.host, starts_at=first.starts_at).pk


# The host's answer to tenant_create ------------------------------------------------------------


def test_the_host_made_the_account_so_it_is_active_and_managers_are_told(
    operator, organization, tenant
):
    allocation = _finish(
        _create(operator, organization), result={"user": "rgt1", "uid": 1001, "created": True}
    )
    assert allocation.status == S.ACTIVE
    assert allocation.activated_at is not None
    assert allocation.status_message == ""
    assert _actions(allocation) == [
        AuditAction.ALLOCATION_CREATED,
        AuditAction.ALLOCATION_ACTIVATED,
    ]
    told = set(Notification.objects.values_list("user", flat=True))
    assert told == {tenant[Role.OWNER].pk, tenant[Role.ADMIN].pk}
    notification = Notification.objects.filter(user=tenant[Role.OWNER]).get()
    assert allocation.host.name in notification.title
    assert notification.url == f"/machines/{allocation.pk}/"


def test_the_host_could_not_make_the_account(operator, organization):
    allocation = _finish(_create(operator, organization), ok=False, error="useradd failed: nope")
    assert allocation.status == S.FAILED
    assert "useradd failed: nope" in allocation.status_message
    assert _actions(allocation)[-1] == AuditAction.ALLOCATION_FAILED


def test_a_late_answer_to_an_older_command_changes_nothing(operator, organization):
    allocation = _create(operator, organization)
    allocation.refresh_from_db()
    old = allocation.last_command
    AgentCommand.objects.filter(pk=old.pk).update(status=CommandStatus.ACKED)  # the host has it
    allocation_reclaim(actor=operator, allocation=allocation, reason="changed plans")
    assert command_finish(old.host_id, str(old.pk), ok=True, result={}, error="")
    allocation.refresh_from_db()
    assert allocation.status == S.RECLAIMING


# Reclaiming ------------------------------------------------------------------------------------


def test_reclaim_asks_the_host_and_stores_its_clean_report(operator, organization, tenant):
    allocation = AllocationFactory(organization=organization)
    allocation_reclaim(actor=operator, allocation=allocation, reason="customer asked")
    allocation.refresh_from_db()
    assert allocation.status == S.RECLAIMING
    assert (allocation.reclaim_reason, allocation.reclaim_requested_by) == (
        "customer asked",
        operator,
    )
    command = allocation.last_command
    assert command.kind == CommandKind.TENANT_RECLAIM
    assert command.payload == {
        "allocation_id": allocation.pk,
        "user": allocation.tenant_user,
        "organization_id": organization.pk,
    }
    allocation = _finish(allocation, result=CLEAN_REPORT)
    assert allocation.status == S.RECLAIMED
    assert allocation.reclaim_report == CLEAN_REPORT
    assert allocation.reclaimed_at is not None
    assert _actions(allocation) == [
        AuditAction.ALLOCATION_RECLAIM_REQUESTED,
        AuditAction.ALLOCATION_RECLAIMED,
    ]
    reclaimed = AuditEvent.objects.get(action=AuditAction.ALLOCATION_RECLAIMED)
    assert reclaimed.details["removed"] == CLEAN_REPORT["removed"]
    assert Notification.objects.filter(user=tenant[Role.OWNER]).count() == 1


def test_leftovers_fail_the_reclaim_and_it_can_be_tried_again(operator, organization):
    allocation = AllocationFactory(organization=organization)
    allocation_reclaim(actor=operator, allocation=allocation, reason="end")
    report = {**CLEAN_REPORT, "remaining": {"processes": 1}, "clean": False}
    allocation = _finish(allocation, result=report)
    assert allocation.status == S.FAILED
    assert "processes: 1" in allocation.status_message
    assert allocation.reclaim_report == report
    assert _actions(allocation)[-1] == AuditAction.ALLOCATION_FAILED
    # A failed allocation holds no host, and may be reclaimed again.
    allocation_reclaim(actor=operator, allocation=allocation, reason="again")
    allocation = _finish(allocation, result=CLEAN_REPORT)
    assert allocation.status == S.RECLAIMED


def test_a_reclaim_the_host_never_answers_fails_visibly(operator, organization):
    allocation = AllocationFactory(organization=organization)
    allocation_reclaim(actor=operator, allocation=allocation, reason="end")
    allocation.refresh_from_db()
    AgentCommand.objects.filter(pk=allocation.last_command_id).update(
        deadline=timezone.now() - timedelta(seconds=1)
    )
    assert command_expire_overdue() == 1
    allocation.refresh_from_db()
    assert allocation.status == S.FAILED
    assert allocation.reclaim_report["error"]


def test_a_create_the_host_never_received_is_withdrawn_by_the_reclaim(operator, organization):
    allocation = _create(operator, organization)  # the host is offline: the command waits
    allocation.refresh_from_db()
    create = allocation.last_command
    allocation_reclaim(actor=operator, allocation=allocation, reason="not needed")
    create.refresh_from_db()
    assert create.status == CommandStatus.FAILED
    assert "Withdrawn" in create.error
    allocation.refresh_from_db()
    assert allocation.status == S.RECLAIMING  # its answer (or none) is the reclaim's


def test_an_unanswered_reclaim_is_sent_again_once_the_host_is_back(operator, organization):
    allocation = AllocationFactory(organization=organization, host__connected=False)
    allocation_reclaim(actor=operator, allocation=allocation, reason="lease over")
    allocation.refresh_from_db()
    first = allocation.last_command
    AgentCommand.objects.filter(pk=first.pk).update(deadline=timezone.now())
    command_expire_overdue()
    allocation.refresh_from_db()
    assert allocation.status == S.FAILED
    later = timezone.now() + timedelta(minutes=6)
    assert allocation_sweep(later)["reclaimed"] == 0  # still offline
    allocation.host.connected = True
    allocation.host.save()
    assert allocation_sweep(timezone.now())["reclaimed"] == 0  # not yet: a pause first
    assert allocation_sweep(later)["reclaimed"] == 1
    allocation.refresh_from_db()
    assert allocation.status == S.RECLAIMING
    assert allocation.last_command != first
    assert allocation.reclaim_reason == "lease over"
    # An answer that found leftovers is an operator's to look at: not retried.
    allocation = _finish(allocation, result={**CLEAN_REPORT, "clean": False, "remaining": {"x": 1}})
    assert allocation.status == S.FAILED
    assert allocation_sweep(later + timedelta(minutes=10))["reclaimed"] == 0


def test_a_scheduled_allocation_ends_at_once_without_the_host(operator, organization):
    allocation = _create(operator, organization, start=timedelta(days=1))
    allocation = allocation_reclaim(actor=operator, allocation=allocation, reason="cancelled")
    allocation.refresh_from_db()
    assert allocation.status == S.RECLAIMED
    assert allocation.reclaim_report["clean"] is True
    assert not AgentCommand.objects.exists()


def test_reclaim_wants_an_operator_a_reason_and_something_to_reclaim(owner, operator):
    allocation = AllocationFactory()
    with pytest.raises(PermissionDenied):
        allocation_reclaim(actor=owner, allocation=allocation, reason="mine")
    with pytest.raises(ValidationError) as refused:
        allocation_reclaim(actor=operator, allocation=allocation, reason="  ")
    assert set(refused.value.fields) == {"reason"}
    allocation_reclaim(actor=operator, allocation=allocation, reason="end")
    with pytest.raises(Conflict):
        allocation_reclaim(actor=operator, allocation=allocation, reason="twice")
    assert AgentCommand.objects.count() == 1


# How to connect --------------------------------------------------------------------------------


def test_connection_details_once_active_and_the_gateway_serves():
    allocation = AllocationFactory(host__address="gpu-7.example.net", host__ssh_port=2222)
    connection = allocation_connection(allocation)
    assert connection.available
    assert connection.ssh_command == f"ssh -p 2222 {allocation.tenant_user}@gpu-7.example.net"
    assert connection.host_key_fingerprint == allocation.host.ssh_host_key_fingerprint
    assert f"User {allocation.tenant_user}" in connection.ssh_config
    allocation.host.ssh_port = 0
    assert not allocation_connection(allocation).available
    assert allocation_connection(allocation).ssh_command == ""
    scheduled = AllocationFactory(status=S.SCHEDULED)
    assert not allocation_connection(scheduled).available


# Beat ------------------------------------------------------------------------------------------


def test_the_sweep_activates_allocations_whose_start_has_come(operator, organization):
    allocation = _create(operator, organization, start=timedelta(hours=1))
    assert allocation_sweep()["activated"] == 0
    later = timezone.now() + timedelta(hours=1, minutes=1)
    assert allocation_sweep(later)["activated"] == 1
    assert allocation_sweep(later)["activated"] == 0
    allocation.refresh_from_db()
    assert allocation.status == S.PROVISIONING
    assert allocation.last_command.kind == CommandKind.TENANT_CREATE


def test_warnings_a_day_and_an_hour_before_the_end_once_each(organization, tenant):
    now = timezone.now()
    allocation = AllocationFactory(organization=organization, ends_at=now + timedelta(days=3))
    managers = {tenant[Role.OWNER].pk, tenant[Role.ADMIN].pk}

    def notified():
        return list(Notification.objects.order_by("pk").values_list("user", "title"))

    assert allocation_sweep(now)["warned"] == 0
    day_before = now + timedelta(days=2, minutes=1)
    assert allocation_sweep(day_before)["warned"] == 1
    assert allocation_sweep(day_before + timedelta(hours=1))["warned"] == 0
    assert {user for user, _title in notified()} == managers
    assert len(notified()) == 2
    hour_before = now + timedelta(days=3) - timedelta(minutes=50)
    assert allocation_sweep(hour_before)["warned"] == 1
    assert allocation_sweep(hour_before + timedelta(minutes=10))["warned"] == 0
    assert len(notified()) == 4
    assert "50\xa0minutes" in notified()[-1][1]
    allocation.refresh_from_db()
    assert allocation.warned_24h_at is not None
    assert allocation.warned_1h_at is not None
    warned = AuditEvent.objects.filter(action=AuditAction.ALLOCATION_WARNED)
    assert sorted(event.details["before"] for event in warned) == ["1h", "24h"]


def test_a_short_lease_gets_one_warning(organization, tenant):
    now = timezone.now()
    allocation = AllocationFactory(organization=organization, ends_at=now + timedelta(minutes=30))
    assert allocation_sweep(now)["warned"] == 1
    assert allocation_sweep(now)["warned"] == 0
    assert Notification.objects.filter(user=tenant[Role.OWNER]).count() == 1
    allocation.refresh_from_db()
    assert allocation.warned_24h_at == allocation.warned_1h_at


def test_the_sweep_reclaims_allocations_whose_end_has_come(organization):
    now = timezone.now()
    ended = AllocationFactory(organization=organization, ends_at=now - timedelta(seconds=1))
    running = AllocationFactory(organization=organization)
    never_started = AllocationFactory(
        status=S.SCHEDULED,
        starts_at=now - timedelta(hours=2),
        ends_at=now - timedelta(hours=1),
    )
    assert allocation_sweep(now)["reclaimed"] == 2
    assert allocation_sweep(now)["reclaimed"] == 0
    ended.refresh_from_db()
    assert ended.status == S.RECLAIMING
    assert ended.reclaim_requested_by is None
    assert ended.reclaim_reason == "The allocation ended."
    assert ended.last_command.kind == CommandKind.TENANT_RECLAIM
    never_started.refresh_from_db()
    assert never_started.status == S.RECLAIMED
    running.refresh_from_db()
    assert running.status == S.ACTIVE
    event = AuditEvent.objects.get(
        action=AuditAction.ALLOCATION_RECLAIM_REQUESTED, target_id=str(ended.pk)
    )
    assert event.actor is None


def test_the_sweep_task_is_scheduled_and_runs(db):
    from django.conf import settings

    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert allocation_sweep_task.name in scheduled
    assert allocation_sweep_task.delay().get() == {"reclaimed": 0, "activated": 0, "warned": 0}


def test_the_whole_lifecycle_through_the_hosts_answers(operator, organization):
    host = RuntimeHostFactory()
    GPUFactory(host=host)
    allocation = _create(operator, organization, host=host)
    allocation = _finish(allocation, result={"created": True})
    assert allocation.status == S.ACTIVE
    allocation_sweep(allocation.ends_at + timedelta(seconds=1))
    allocation.refresh_from_db()
    assert allocation.status == S.RECLAIMING
    allocation = _finish(allocation, result=CLEAN_REPORT)
    assert allocation.status == S.RECLAIMED
    assert list(
        AgentCommand.objects.filter(host=host).order_by("created_at").values_list("kind", "status")
    ) == [
        (CommandKind.TENANT_CREATE, CommandStatus.SUCCEEDED),
        (CommandKind.TENANT_RECLAIM, CommandStatus.SUCCEEDED),
    ]
    # The host is back in the pool: another organisation may have it now.
    assert _create(operator, OrganizationFactory(), host=host).status == S.PROVISIONING


def test_hosts_without_allocations_are_untouched_by_the_sweep():
    HostFactory()
    assert allocation_sweep() == {"reclaimed": 0, "activated": 0, "warned": 0}
