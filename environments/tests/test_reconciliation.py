"""Reconciliation: what happens to environments when their host is retired, or the host's
whole-machine allocation is reclaimed."""

import pytest

from environments.choices import EnvironmentStatus as S
from environments.choices import StatusReason
from environments.models import PortAllocation
from environments.services.lifecycle import (
    environment_create,
    environment_delete,
    environment_stop,
)
from machines.choices import HostStatus
from machines.models import AgentCommand
from machines.services.hosts import host_set_status

from .conftest import answer, holds_gpus, latest_command, run_succeeds

pytestmark = pytest.mark.django_db


def _create(customer, organization, spec, image, name):
    return environment_create(
        user=customer, organization=organization, name=name, spec=spec, image=image
    )


def test_retiring_a_host_fails_its_environments_and_frees_what_they_held(
    operator, customer, organization, spec, image, host
):
    running = _create(customer, organization, spec, image, "running-1")
    run_succeeds(running)
    deleting = _create(customer, organization, spec, image, "deleting-1")
    run_succeeds(deleting)
    environment_delete(user=customer, environment=deleting)
    provisioning = _create(customer, organization, spec, image, "provisioning-1")

    host_set_status(operator=operator, host=host, status=HostStatus.RETIRED)

    for environment in (running, provisioning):
        environment.refresh_from_db()
        assert (environment.status, environment.status_reason) == (S.FAILED, StatusReason.HOST_LOST)
        assert not holds_gpus(environment)
        assert not PortAllocation.objects.filter(environment=environment).exists()
        assert environment.events.filter(status=S.FAILED).exists()
    deleting.refresh_from_db()
    assert deleting.status == S.DELETED
    assert not holds_gpus(deleting)

    # Deleting one now asks nothing of the retired host: it is gone at once.
    commands = AgentCommand.objects.filter(host=host).count()
    environment_delete(user=customer, environment=running)
    running.refresh_from_db()
    assert running.status == S.DELETED
    assert AgentCommand.objects.filter(host=host).count() == commands
    assert latest_command(running).kind == "environment_run"


def test_maintenance_and_offline_leave_environments_alone(
    operator, customer, organization, spec, image, host
):
    environment = _create(customer, organization, spec, image, "steady-1")
    run_succeeds(environment)
    host_set_status(operator=operator, host=host, status=HostStatus.MAINTENANCE)
    environment.refresh_from_db()
    assert environment.status == S.RUNNING
    assert holds_gpus(environment)


def test_a_reclaimed_allocation_deletes_its_organisations_environments_on_the_host(
    operator, customer, organization, spec, image, host
):
    """The host removed the tenant organisation's containers and volumes: its environments
    there are deleted, with what they held; another host's are not touched."""
    from machines.choices import AllocationStatus
    from machines.services.allocations import allocation_reclaim
    from machines.services.commands import command_finish
    from machines.tests.factories import AllocationFactory

    from .factories import EnvironmentFactory, host_with_gpus

    running = _create(customer, organization, spec, image, "mine-running")
    run_succeeds(running)
    stopped = _create(customer, organization, spec, image, "mine-stopped")
    run_succeeds(stopped)
    environment_stop(user=customer, environment=stopped)
    answer(latest_command(stopped))
    elsewhere = EnvironmentFactory(
        organization=organization, host=host_with_gpus(1), status=S.STOPPED
    )
    allocation = AllocationFactory(host=host, organization=organization)

    allocation_reclaim(actor=operator, allocation=allocation, reason="lease over")
    allocation.refresh_from_db()
    command = allocation.last_command
    command_finish(
        host.pk,
        str(command.pk),
        ok=True,
        result={"clean": True, "removed": {}, "remaining": {}, "errors": []},
        error="",
    )

    allocation.refresh_from_db()
    assert allocation.status == AllocationStatus.RECLAIMED
    for environment in (running, stopped):
        environment.refresh_from_db()
        assert (environment.status, environment.status_reason) == (
            S.DELETED,
            StatusReason.RECLAIMED,
        )
        assert environment.deleted_at is not None
        assert not holds_gpus(environment)
        assert not PortAllocation.objects.filter(environment=environment).exists()
    elsewhere.refresh_from_db()
    assert elsewhere.status == S.STOPPED
