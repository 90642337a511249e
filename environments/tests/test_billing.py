"""What billing is told about environments: metered while running, the volume while stopped,
nothing without the funds for an hour, stopped when the balance runs out."""

import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from accounts.choices import Role
from accounts.models import Notification
from accounts.tests.factories import MembershipFactory
from billing.choices import EntryKind, MeterKind, PriceResource
from billing.models import LedgerEntry, Meter, RunInterval
from billing.services.balance import balances_check
from billing.services.metering import billing_tick, sources_seen
from billing.services.wallets import wallet_get, wallet_post
from billing.tests.factories import PriceFactory
from environments.choices import EnvironmentStatus as S
from environments.choices import StatusReason
from environments.models import Environment
from environments.services.billing import hosts_seen, run_reference, volume_reference
from environments.services.lifecycle import (
    environment_create,
    environment_restart,
    environment_start,
    environment_stop,
)
from remotegpu.core.errors import ValidationError

from .conftest import answer, latest_command, run_succeeds
from .factories import host_with_gpus

pytestmark = pytest.mark.django_db


@pytest.fixture
def prices(db):
    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("3.6"))
    PriceFactory(resource=PriceResource.VCPU_HOUR, amount=Decimal("0"))
    PriceFactory(resource=PriceResource.MEMORY_GIB_HOUR, amount=Decimal("0"))
    PriceFactory(resource=PriceResource.CPU_ONLY_HOUR, amount=Decimal("0.36"))
    PriceFactory(resource=PriceResource.STORAGE_GIB_MONTH, amount=Decimal("0.73"))


def _fund(organization, amount):
    wallet_post(
        wallet_get(organization),
        kind=EntryKind.RECHARGE,
        amount=Decimal(amount),
        key=f"test:{organization.pk}:{amount}:{timezone.now().timestamp()}",
    )


def _create(customer, organization, spec, image):
    return environment_create(
        user=customer, organization=organization, name="train-1", spec=spec, image=image
    )


def _tick(host, at):
    """Its host seen up to ``at`` (heartbeats, without the gaps of a test's clock), a tick."""
    sources_seen({f"host:{host.pk}": (at, 10**6)})
    return billing_tick(at)


def _stop(customer, environment):
    environment_stop(user=customer, environment=environment)
    answer(latest_command(environment), result={"container": "removed"})
    environment.refresh_from_db()


def test_creating_needs_an_hour_of_the_price_in_the_wallet(
    prices, customer, organization, spec, image, host
):
    with pytest.raises(ValidationError) as refused:
        _create(customer, organization, spec, image)
    assert "spec" in refused.value.fields
    assert not organization.environments.exists()
    _fund(organization, "3.60")
    assert _create(customer, organization, spec, image).status == S.PROVISIONING


def test_a_spend_limit_refuses_a_start_beyond_it(prices, customer, organization, spec, image, host):
    _fund(organization, "100")
    wallet = wallet_get(organization)
    wallet.spend_limit_per_hour = Decimal("3")
    wallet.save()
    with pytest.raises(ValidationError, match="limit"):
        _create(customer, organization, spec, image)


def test_a_spend_limit_counts_what_is_starting_too(
    prices, customer, organization, spec, image, host
):
    """Two creates one after the other: the first is not running (so not billed) yet, but
    it will be, and the two together would pass the limit."""
    _fund(organization, "100")
    wallet = wallet_get(organization)
    wallet.spend_limit_per_hour = Decimal("3.6") * spec.gpu_count * Decimal("1.5")
    wallet.save()
    first = _create(customer, organization, spec, image)
    assert first.status == S.PROVISIONING
    with pytest.raises(ValidationError, match="limit") as refused:
        environment_create(
            user=customer, organization=organization, name="train-2", spec=spec, image=image
        )
    assert "spec" in refused.value.fields
    assert organization.environments.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_pass_the_spend_limit_one_at_a_time(
    prices, customer, organization, spec, image
):
    """Eight creates at the same instant, a limit that one fits: the check runs under the
    organisation's lock, so each sees the ones before it and exactly one gets through."""
    host_with_gpus(8 * spec.gpu_count)
    _fund(organization, "1000")
    wallet = wallet_get(organization)
    wallet.spend_limit_per_hour = Decimal("3.6") * spec.gpu_count * Decimal("1.5")
    wallet.save()
    barrier = threading.Barrier(8)
    outcomes = []

    def create(index):
        try:
            barrier.wait()
            environment_create(
                user=customer,
                organization=organization,
                name=f"race-{index}",
                spec=spec,
                image=image,
            )
            outcomes.append("created")
        except ValidationError as refused:
            outcomes.append("refused" if "spec" in refused.fields else refused.fields)
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["created"] + ["refused"] * 7
    assert organization.environments.count() == 1


def test_running_is_metered_and_a_stopped_volume_too(
    prices, customer, organization, spec, image, host
):
    _fund(organization, "100")
    environment = _create(customer, organization, spec, image)
    assert not Meter.objects.exists()  # nothing billed while provisioning
    run_succeeds(environment)
    run = Meter.objects.get(reference=run_reference(environment))
    assert run.kind == MeterKind.COMPUTE
    assert run.rate == Decimal("3.6") * spec.gpu_count
    interval = run.intervals.get()
    assert interval.ended_at is None
    assert interval.source.key == f"host:{host.pk}"

    _stop(customer, environment)
    interval.refresh_from_db()
    assert interval.ended_at is not None
    volume = Meter.objects.get(reference=volume_reference(environment))
    assert volume.kind == MeterKind.STORAGE
    assert volume.storage_gib == spec.disk_gib
    assert volume.intervals.filter(ended_at__isnull=True).count() == 1

    environment_start(user=customer, environment=environment, without_gpu=True)
    run_succeeds(environment)
    assert volume.intervals.filter(ended_at__isnull=True).count() == 0
    run.refresh_from_db()
    assert run.kind == MeterKind.CPU_ONLY
    assert run.rate == Decimal("0.36")
    assert run.intervals.filter(ended_at__isnull=True).count() == 1


def test_a_restart_bills_its_run_from_when_it_came_back_not_from_the_first_start(
    prices, customer, organization, spec, image, host
):
    _fund(organization, "100")
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    # It has run for ten minutes when it is restarted.
    first_start = (timezone.now() - timedelta(minutes=10)).replace(microsecond=0)
    Environment.objects.filter(pk=environment.pk).update(started_at=first_start)
    RunInterval.objects.filter(meter__reference=run_reference(environment)).update(
        started_at=first_start, billed_until=first_start
    )
    environment.refresh_from_db()
    environment_restart(user=customer, environment=environment)
    answer(latest_command(environment), result={"container": "restarted"})
    environment.refresh_from_db()
    assert environment.status == S.RUNNING
    intervals = list(
        RunInterval.objects.filter(meter__reference=run_reference(environment)).order_by("id")
    )
    assert len(intervals) == 2
    assert intervals[0].ended_at is not None
    assert intervals[1].started_at >= intervals[0].ended_at > first_start
    later = timezone.now() + timedelta(seconds=30)
    _tick(host, later)
    billed = sum(e.seconds for e in LedgerEntry.objects.filter(kind=EntryKind.USAGE))
    assert billed <= (later - first_start).total_seconds()


def test_an_offline_host_is_not_billed(prices, customer, organization, spec, image, host):
    _fund(organization, "100")
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    interval = RunInterval.objects.get(meter__reference=run_reference(environment))
    start = interval.started_at
    hosts_seen({host.pk: (start + timedelta(seconds=10), 15)})
    billing_tick(start + timedelta(minutes=30))
    interval.refresh_from_db()
    assert interval.billed_until == start + timedelta(seconds=10)
    # Seen again 20 minutes later: the silence ended its interval where it was last seen.
    hosts_seen({host.pk: (start + timedelta(minutes=20), 15)})
    interval.refresh_from_db()
    assert interval.ended_at == start + timedelta(seconds=10)
    assert RunInterval.objects.filter(
        meter__reference=run_reference(environment), ended_at__isnull=True
    ).get().started_at == start + timedelta(minutes=20)


@override_settings(BILLING_GRACE_SECONDS=300)
def test_out_of_balance_stops_after_the_grace_period_and_tells_the_owners(
    prices, customer, organization, spec, image, host, django_capture_on_commit_callbacks
):
    owner = MembershipFactory(organization=organization, role=Role.OWNER).user
    _fund(organization, "3.60")
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    start = RunInterval.objects.get(meter__reference=run_reference(environment)).started_at
    _tick(host, start + timedelta(hours=1, seconds=1))
    assert wallet_get(organization).balance < 0

    with django_capture_on_commit_callbacks(execute=True):
        checked = balances_check(start + timedelta(hours=1, seconds=2))
    assert checked["depleted"] == 1
    assert checked["stopped"] == 0
    assert Notification.objects.filter(user=owner).count() == 1
    assert balances_check(start + timedelta(hours=1, seconds=200))["stopped"] == 0
    environment.refresh_from_db()
    assert environment.status == S.RUNNING

    with django_capture_on_commit_callbacks(execute=True):
        assert balances_check(start + timedelta(hours=1, seconds=303))["stopped"] == 1
    environment.refresh_from_db()
    assert environment.status == S.STOPPING
    assert environment.status_reason == StatusReason.OUT_OF_BALANCE
    assert latest_command(environment).kind == "environment_stop"
    assert Notification.objects.filter(user=owner).count() == 2
    assert len(mail.outbox) == 2
    # Once only.
    assert balances_check(start + timedelta(hours=2))["stopped"] == 0


def test_low_balance_is_told_once(prices, customer, organization, spec, image, host):
    owner = MembershipFactory(organization=organization, role=Role.OWNER).user
    _fund(organization, "5")
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    start = RunInterval.objects.get(meter__reference=run_reference(environment)).started_at
    _tick(host, start + timedelta(minutes=30))  # 1.80 spent, 3.20 left < one hour at 3.60
    assert balances_check(start + timedelta(minutes=30))["low"] == 1
    assert balances_check(start + timedelta(minutes=31))["low"] == 0
    assert Notification.objects.filter(user=owner).count() == 1
    assert LedgerEntry.objects.filter(kind=EntryKind.USAGE).count() == 1


def test_an_active_allocation_is_metered_as_a_whole_machine(operator, organization):
    from machines.choices import AllocationStatus
    from machines.services.allocations import allocation_create, allocation_reclaim
    from machines.services.commands import command_finish
    from machines.tests.factories import RuntimeHostFactory

    PriceFactory(resource=PriceResource.MACHINE_HOUR, amount=Decimal("20"))
    now = timezone.now()
    allocation = allocation_create(
        actor=operator,
        host=RuntimeHostFactory(),
        organization=organization,
        starts_at=now,
        ends_at=now + timedelta(days=1),
    )
    allocation.refresh_from_db()
    command = allocation.last_command
    command_finish(command.host_id, str(command.pk), ok=True, result={"user": "rgt1"}, error="")
    allocation.refresh_from_db()
    assert allocation.status == AllocationStatus.ACTIVE
    meter = Meter.objects.get(reference=f"allocation:{allocation.pk}")
    assert meter.kind == MeterKind.MACHINE
    assert meter.rate == Decimal("20")
    assert meter.intervals.filter(ended_at__isnull=True).count() == 1

    allocation_reclaim(actor=operator, allocation=allocation, reason="done")
    assert meter.intervals.filter(ended_at__isnull=True).count() == 0


def test_an_environment_on_a_machine_its_organisation_then_allocates_is_not_billed_twice(
    prices, operator, customer, organization, spec, image, host
):
    from machines.choices import AllocationStatus
    from machines.services.allocations import allocation_create
    from machines.services.commands import command_finish

    PriceFactory(resource=PriceResource.MACHINE_HOUR, amount=Decimal("20"))
    _fund(organization, "100")
    environment = _create(customer, organization, spec, image)
    run_succeeds(environment)
    run = Meter.objects.get(reference=run_reference(environment))
    assert run.intervals.filter(ended_at__isnull=True).count() == 1
    now = timezone.now()
    allocation = allocation_create(
        actor=operator,
        host=host,
        organization=organization,
        starts_at=now,
        ends_at=now + timedelta(days=1),
    )
    allocation.refresh_from_db()
    command = allocation.last_command
    command_finish(command.host_id, str(command.pk), ok=True, result={"user": "rgt1"}, error="")
    allocation.refresh_from_db()
    assert allocation.status == AllocationStatus.ACTIVE
    # The machine is billed; the environment on it no longer on its own.
    assert run.intervals.filter(ended_at__isnull=True).count() == 0
    machine = Meter.objects.get(reference=f"allocation:{allocation.pk}")
    assert machine.intervals.filter(ended_at__isnull=True).count() == 1
    assert wallet_get(organization).meters.filter(intervals__ended_at__isnull=True).count() == 1


def test_a_price_names_a_region_that_exists(operator):
    """Billing knows regions by slug only; this bridge tells it which exist."""
    from billing.services.prices import price_set
    from machines.tests.factories import RegionFactory

    region = RegionFactory(slug="eu-west")
    price = price_set(
        operator=operator, resource=PriceResource.VCPU_HOUR, amount="0.1", region="eu-west"
    )
    assert price.region == region.slug
    with pytest.raises(ValidationError) as refused:
        price_set(
            operator=operator, resource=PriceResource.VCPU_HOUR, amount="0.1", region="eu-wset"
        )
    assert set(refused.value.fields) == {"region"}
