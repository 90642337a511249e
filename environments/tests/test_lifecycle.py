from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import AuditEvent
from environments.choices import EnvironmentStatus as S
from environments.choices import StatusReason
from environments.models import Environment, EnvironmentEvent, GPUAssignment, PortAllocation
from environments.services.lifecycle import (
    environment_create,
    environment_delete,
    environment_restart,
    environment_start,
    environment_stop,
)
from environments.services.placement import NoCapacity
from environments.services.reconciliation import environment_sweep
from machines.choices import CommandStatus
from machines.models import AgentCommand
from remotegpu.core.errors import Conflict

from .conftest import answer, holds_gpus, latest_command, run_succeeds
from .factories import SpecFactory

pytestmark = pytest.mark.django_db


def _create(customer, organization, spec, image, **kwargs):
    return environment_create(
        user=customer,
        organization=organization,
        name=kwargs.pop("name", "train-1"),
        spec=spec,
        image=image,
        **kwargs,
    )


def test_create_places_allocates_and_sends_the_run_command(
    customer, organization, spec, image, host
):
    environment = _create(
        customer, organization, spec, image, env={"WANDB_MODE": "offline"}, ports=[{"port": 22}]
    )

    assert environment.status == S.PROVISIONING
    assert environment.host == host
    assignments = GPUAssignment.objects.filter(environment=environment, released_at__isnull=True)
    assert assignments.count() == 1
    allocated = PortAllocation.objects.filter(environment=environment)
    ports = {p.container_port: p.host_port for p in allocated}
    assert set(ports) == {8888, 22}
    assert all(host.port_range_start <= port <= host.port_range_end for port in ports.values())

    command = latest_command(environment)
    assert command.kind == "environment_run"
    payload = command.payload
    assert payload["gpu_uuids"] == [assignments.get().gpu.uuid]
    assert payload["nano_cpus"] == spec.vcpu * 10**9
    assert payload["memory"] == spec.memory_gib * 1024**3
    assert payload["env"]["WANDB_MODE"] == "offline"
    assert payload["env"]["REMOTEGPU_ENVIRONMENT_ID"] == str(environment.pk)
    assert payload["env"]["REMOTEGPU_PORT_22"] == str(ports[22])
    assert {(p["container_port"], p["host_port"]) for p in payload["ports"]} == set(ports.items())
    statuses = [event.status for event in EnvironmentEvent.objects.filter(environment=environment)]
    assert statuses == [S.SCHEDULED, S.PROVISIONING]
    audit = AuditEvent.objects.filter(target_id=str(environment.pk))
    assert audit.filter(action="environment.created").exists()


def test_run_result_makes_it_running(customer, organization, spec, image, host):
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    assert environment.status == S.RUNNING
    assert environment.container_id == "c" * 64
    assert environment.deadline is None


def test_a_resent_result_changes_nothing(customer, organization, spec, image, host):
    environment = _create(customer, organization, spec, image)
    command = run_succeeds(environment)
    events = EnvironmentEvent.objects.count()
    answer(command, ok=False, error="late duplicate")
    environment.refresh_from_db()
    assert environment.status == S.RUNNING
    assert EnvironmentEvent.objects.count() == events


def test_stop_then_start_on_the_same_host_with_gpus_again(
    customer, organization, spec, image, host
):
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)

    environment_stop(user=customer, environment=environment)
    assert environment.status == S.STOPPING
    assert latest_command(environment).kind == "environment_stop"
    answer(latest_command(environment), result={"container": "removed"})
    environment.refresh_from_db()
    assert environment.status == S.STOPPED
    assert not holds_gpus(environment)
    assert PortAllocation.objects.filter(environment=environment).count() == 1  # kept until delete

    environment_start(user=customer, environment=environment)
    assert environment.status == S.STARTING
    command = latest_command(environment)
    assert command.kind == "environment_run"
    assert len(command.payload["gpu_uuids"]) == 1
    run_succeeds(environment)
    assert environment.status == S.RUNNING


def test_start_when_its_gpus_were_taken_offers_the_choice(
    customer, organization, spec, image, host
):
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    environment_stop(user=customer, environment=environment)
    answer(latest_command(environment))
    # Meanwhile every GPU of the host is taken.
    for n in range(4):
        _create(customer, organization, spec, image, name=f"other-{n}")

    with pytest.raises(NoCapacity) as refused:
        environment_start(user=customer, environment=Environment.objects.get(pk=environment.pk))
    assert refused.value.status_code == 409
    assert "without GPU" in str(refused.value.message)

    waiting = environment_start(
        user=customer, environment=Environment.objects.get(pk=environment.pk), wait=True
    )
    assert waiting.status == S.PENDING
    assert waiting.status_reason == StatusReason.WAITING_FOR_GPUS

    # One of the others is deleted: the sweep starts the waiting one on the freed GPU.
    other = Environment.objects.get(name="other-0")
    environment_delete(user=customer, environment=other)
    answer(latest_command(other))
    assert environment_sweep()["started"] == 1
    environment.refresh_from_db()
    assert environment.status == S.STARTING


def test_start_without_gpu_uses_the_same_volume_and_no_gpus(
    customer, organization, spec, image, host
):
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    environment_stop(user=customer, environment=environment)
    answer(latest_command(environment))
    environment.refresh_from_db()

    environment_start(user=customer, environment=environment, without_gpu=True)
    command = latest_command(environment)
    assert command.payload["gpu_uuids"] == []
    assert command.payload["environment_id"] == environment.pk  # same volume name on the host
    assert environment.without_gpu is True
    assert not holds_gpus(environment)


def test_restart(customer, organization, spec, image, host):
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    environment_restart(user=customer, environment=environment)
    assert environment.status == S.STARTING
    answer(latest_command(environment), result={"time": 2000.0})
    environment.refresh_from_db()
    assert environment.status == S.RUNNING


def test_delete_frees_gpus_and_ports_once_the_host_confirms(
    customer, organization, spec, image, host
):
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    environment_delete(user=customer, environment=environment)
    assert environment.status == S.DELETING
    assert latest_command(environment).kind == "environment_delete"
    answer(latest_command(environment), result={"container": "removed", "volume": "removed"})
    environment.refresh_from_db()
    assert environment.status == S.DELETED
    assert not holds_gpus(environment)
    assert not PortAllocation.objects.filter(environment=environment).exists()
    # The name is free again.
    _create(customer, organization, spec, image)


def test_a_failed_pull_fails_it_and_releases_everything(customer, organization, spec, image, host):
    environment = _create(customer, organization, spec, image)
    answer(
        latest_command(environment),
        ok=False,
        result={"exception": "PullError"},
        error="manifest unknown",
    )
    environment.refresh_from_db()
    assert environment.status == S.FAILED
    assert environment.status_reason == StatusReason.IMAGE_PULL_FAILED
    assert "manifest unknown" in environment.status_message
    assert not holds_gpus(environment)
    assert not PortAllocation.objects.filter(environment=environment).exists()


def test_provisioning_past_its_deadline_fails_with_provision_timeout(
    customer, organization, spec, image, host
):
    environment = _create(customer, organization, spec, image)
    Environment.objects.filter(pk=environment.pk).update(
        deadline=timezone.now() - timedelta(seconds=1)
    )
    assert environment_sweep()["expired"] == 1
    environment.refresh_from_db()
    assert environment.status == S.FAILED
    assert environment.status_reason == StatusReason.PROVISION_TIMEOUT
    assert not holds_gpus(environment)
    assert not PortAllocation.objects.filter(environment=environment).exists()
    # The result arriving afterwards changes nothing.
    run_succeeds(environment)
    assert environment.status == S.FAILED


def test_an_expired_run_command_fails_it(customer, organization, spec, image, host):
    from machines.services.commands import command_expire_overdue

    environment = _create(customer, organization, spec, image)
    AgentCommand.objects.filter(pk=latest_command(environment).pk).update(
        deadline=timezone.now() - timedelta(seconds=1)
    )
    assert command_expire_overdue() == 1
    environment.refresh_from_db()
    assert environment.status == S.FAILED
    assert environment.status_reason == StatusReason.PROVISION_TIMEOUT


def test_registry_password_is_wiped_from_the_stored_command(
    customer, organization, spec, image, host, operator
):
    from environments.services.images import registry_credential_save

    registry_credential_save(
        operator=operator, registry="registry.example.com", username="bot", password="s3cret"
    )
    environment = _create(customer, organization, spec, image)
    command = latest_command(environment)
    assert command.payload["registry_auth"]["password"] == "s3cret"
    run_succeeds(environment)
    command.refresh_from_db()
    assert command.payload["registry_auth"] == {}
    assert command.status == CommandStatus.SUCCEEDED


def test_stop_of_a_stopped_environment_is_a_conflict(customer, organization, spec, image, host):
    environment = _create(customer, organization, spec, image)
    with pytest.raises(Conflict):
        environment_stop(user=customer, environment=environment)  # still provisioning


def test_cpu_only_spec_takes_no_gpu(customer, organization, image, host):
    spec = SpecFactory(gpu_count=0, gpu_model="", name="CPU 4")
    environment = _create(customer, organization, spec, image)
    assert environment.status == S.PROVISIONING
    assert latest_command(environment).payload["gpu_uuids"] == []
