"""Placement: filters, scoring, and no double-booking under concurrency."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.choices import Role
from accounts.tests.factories import MembershipFactory, OrganizationFactory
from environments.choices import EnvironmentStatus, PlacementStrategy
from environments.models import Environment, GPUAssignment
from environments.services import placement
from environments.services.lifecycle import environment_create, environment_start
from environments.services.placement import (
    NoCapacity,
    _fits,
    candidate_hosts,
    schedulable_hosts,
)
from machines.choices import AllocationStatus, GPUHealth, HostStatus
from machines.services.allocations import allocation_create
from machines.tests.factories import AllocationFactory, GPUFactory, RegionFactory
from remotegpu.core.errors import ValidationError

from .factories import (
    GPU_MODEL,
    DockerHostFactory,
    EnvironmentFactory,
    ImageFactory,
    SpecFactory,
    host_with_gpus,
)

pytestmark = pytest.mark.django_db


def _hold(host, count):
    """Take ``count`` of the host's GPUs with a real environment of another organisation (the
    host is put in a region of its own, so the placement can only choose it)."""
    owner = MembershipFactory(role=Role.OWNER)
    host.region = RegionFactory()
    host.save()
    return environment_create(
        user=owner.user,
        organization=owner.organization,
        name=f"holder-{host.pk}",
        spec=SpecFactory(gpu_count=count, vcpu=1, memory_gib=1),
        image=ImageFactory(),
        region=host.region,
    )


def test_binpack_prefers_the_fullest_host_that_fits_and_spread_the_emptiest():
    busy, idle = host_with_gpus(4), host_with_gpus(4)
    _hold(busy, 2)
    spec = SpecFactory()
    binpack = candidate_hosts(spec=spec, gpu_count=1, region=None)
    spread = candidate_hosts(spec=spec, gpu_count=1, region=None, strategy=PlacementStrategy.SPREAD)
    assert binpack[0] == busy
    assert spread[0] == idle


def test_a_host_holding_the_image_comes_first():
    plain, warm = host_with_gpus(4), host_with_gpus(4)
    image = ImageFactory()
    warm.images = [image.reference]
    warm.save()
    spec = SpecFactory()
    assert candidate_hosts(spec=spec, gpu_count=1, region=None)[0] == plain
    hosts = candidate_hosts(spec=spec, gpu_count=1, region=None, image_reference=image.reference)
    assert hosts[0] == warm


@pytest.mark.parametrize(
    "unfit",
    [
        {"status": HostStatus.OFFLINE},
        {"status": HostStatus.MAINTENANCE},
        {"status": HostStatus.DRAINING},
        {"connected": False},
        {"docker_version": ""},  # no container runtime
        {"cpu_cores": 2},
        {"memory_total": 1024**3},
    ],
)
def test_hosts_that_cannot_take_it_are_filtered_out(unfit):
    host_with_gpus(4, **unfit)
    assert not candidate_hosts(spec=SpecFactory(), gpu_count=1, region=None)


def test_region_labels_model_and_health_filter():
    region = RegionFactory()
    host = host_with_gpus(2, region=region, labels={"net": "ib"})
    spec = SpecFactory(host_labels={"net": "ib"})
    assert list(candidate_hosts(spec=spec, gpu_count=1, region=region)) == [host]
    assert not candidate_hosts(spec=spec, gpu_count=1, region=RegionFactory())
    assert not candidate_hosts(
        spec=SpecFactory(host_labels={"net": "eth"}), gpu_count=1, region=None
    )
    assert not candidate_hosts(
        spec=SpecFactory(gpu_model="NVIDIA H100 80GB HBM3"), gpu_count=1, region=None
    )
    host.gpus.update(health=GPUHealth.LOST)
    assert not candidate_hosts(spec=spec, gpu_count=1, region=None)


def test_gpus_of_a_host_are_never_split_across_hosts():
    host_with_gpus(1)
    host_with_gpus(1)
    owner = MembershipFactory(role=Role.OWNER)
    with pytest.raises(NoCapacity) as refused:
        environment_create(
            user=owner.user,
            organization=owner.organization,
            name="two",
            spec=SpecFactory(gpu_count=2),
            image=ImageFactory(),
        )
    assert str(refused.value.message).count("1 × ") == 2  # two free, one on each host
    assert not Environment.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_32_concurrent_creates_for_the_last_free_gpu_get_exactly_one():
    host = DockerHostFactory()
    GPUFactory(host=host, index=0, model=GPU_MODEL)
    spec, image = SpecFactory(vcpu=1, memory_gib=1), ImageFactory()
    owners = [MembershipFactory(role=Role.OWNER) for _ in range(32)]
    barrier = threading.Barrier(len(owners))
    outcomes = []

    def create(owner):
        try:
            barrier.wait()
            environment_create(
                user=owner.user,
                organization=owner.organization,
                name="race",
                spec=spec,
                image=image,
            )
            outcomes.append(201)
        except NoCapacity:
            outcomes.append(409)
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(owner,)) for owner in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [201] + [409] * 31
    assert Environment.objects.count() == 1
    assert GPUAssignment.objects.filter(released_at__isnull=True).count() == 1


class _Holder(threading.Thread):
    """Another connection that runs ``statement`` in a transaction and keeps it open (what it
    locks stays locked) until ``release()``."""

    def __init__(self, statement: str, params: list):
        super().__init__()
        self.statement, self.params = statement, params
        self.holding, self.done = threading.Event(), threading.Event()

    def run(self):
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(self.statement, self.params)
                self.holding.set()
                self.done.wait(timeout=30)
        finally:
            connection.close()

    def __enter__(self):
        self.start()
        assert self.holding.wait(timeout=10)
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.join()


def _create(name="one", gpu_count=1):
    owner = MembershipFactory(role=Role.OWNER)
    return environment_create(
        user=owner.user,
        organization=owner.organization,
        name=name,
        spec=SpecFactory(gpu_count=gpu_count, vcpu=1, memory_gib=1),
        image=ImageFactory(),
    )


@pytest.mark.django_db(transaction=True)
def test_gpus_a_heartbeat_is_updating_are_still_free():
    """A heartbeat batch updates every GPU row of its hosts (the latest metrics) each interval:
    a create meanwhile still gets them (CI once saw "no capacity" here, GPU rows skipped as
    locked)."""
    host = host_with_gpus(2)
    with _Holder("UPDATE machines_gpu SET utilization = 50 WHERE host_id = %s", [host.pk]):
        environment = _create(gpu_count=2)
    assert environment.host == host
    assert environment.gpu_assignments.filter(released_at__isnull=True).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_gpu_another_placement_is_taking_is_skipped():
    host = host_with_gpus(2)
    first = host.gpus.order_by("index").first()
    with _Holder(
        "SELECT pg_try_advisory_xact_lock(%s, %s)", [placement.GPU_PLACEMENT_LOCK, first.pk]
    ):
        environment = _create()
        taken = environment.gpu_assignments.get().gpu
        assert taken != first
        assert taken.host == host
        with pytest.raises(NoCapacity):
            _create(name="two")  # the one left is being taken (until that placement ends)
    assert _create(name="three").gpu_assignments.get().gpu == first


# Whole-machine allocations ------------------------------------------------------------------


def _offered(spec, organization) -> list:
    return candidate_hosts(spec=spec, gpu_count=1, region=None, organization=organization)


@pytest.mark.parametrize(
    ("status", "tenant_gets_it"),
    [
        (AllocationStatus.ACTIVE, True),
        (AllocationStatus.PROVISIONING, True),
        (AllocationStatus.SCHEDULED, False),  # held already: nothing placed would leave
        (AllocationStatus.RECLAIMING, False),  # being wiped
    ],
)
def test_an_allocated_host_is_offered_to_its_organisation_only(status, tenant_gets_it):
    allocated, shared = host_with_gpus(4), host_with_gpus(4)
    tenant, other = OrganizationFactory(), OrganizationFactory()
    AllocationFactory(host=allocated, organization=tenant, status=status)
    spec = SpecFactory()
    assert set(_offered(spec, other)) == {shared}
    assert set(_offered(spec, None)) == {shared}
    assert set(_offered(spec, tenant)) == ({allocated, shared} if tenant_gets_it else {shared})
    assert set(schedulable_hosts(other.pk)) == {shared}
    assert (allocated in set(schedulable_hosts(tenant.pk))) is tenant_gets_it


@pytest.mark.parametrize("status", [AllocationStatus.RECLAIMED, AllocationStatus.FAILED])
def test_an_ended_allocation_returns_the_host_to_the_pool(status):
    host = host_with_gpus(4)
    AllocationFactory(host=host, status=status)
    assert _offered(SpecFactory(), OrganizationFactory()) == [host]


def test_environments_of_others_are_not_placed_on_an_allocated_host():
    host = host_with_gpus(4)
    tenant = MembershipFactory(role=Role.OWNER)
    other = MembershipFactory(role=Role.OWNER)
    AllocationFactory(host=host, organization=tenant.organization)
    spec, image = SpecFactory(), ImageFactory()
    with pytest.raises(NoCapacity):
        environment_create(
            user=other.user, organization=other.organization, name="o", spec=spec, image=image
        )
    placed = environment_create(
        user=tenant.user, organization=tenant.organization, name="t", spec=spec, image=image
    )
    assert placed.host == host


def test_a_stopped_environment_of_another_organisation_waits_for_the_allocation_to_end():
    host = host_with_gpus(2)
    owner = MembershipFactory(role=Role.OWNER)
    environment = EnvironmentFactory(
        organization=owner.organization,
        host=host,
        status=EnvironmentStatus.STOPPED,
        spec=SpecFactory(vcpu=1, memory_gib=1),
    )
    AllocationFactory(host=host)
    with pytest.raises(NoCapacity) as refused:
        environment_start(user=owner.user, environment=environment)
    assert "whole-machine allocation" in str(refused.value.message)


def test_an_allocation_made_after_the_candidates_were_listed_is_seen_under_the_lock():
    host = host_with_gpus(1)
    spec = SpecFactory()
    other = OrganizationFactory()
    assert _offered(spec, other) == [host]
    AllocationFactory(host=host)
    assert not _fits(host, spec, other.pk)


def _allocate(operator, host, organization):
    now = timezone.now()
    return allocation_create(
        actor=operator,
        host=host,
        organization=organization,
        starts_at=now + timedelta(hours=1),
        ends_at=now + timedelta(days=1),
    )


def test_a_host_with_other_organisations_environments_cannot_be_allocated(operator):
    host = host_with_gpus(2)
    tenant = OrganizationFactory()
    for status in (EnvironmentStatus.DELETED, EnvironmentStatus.FAILED):
        EnvironmentFactory(host=host, status=status)  # gone: they hold nothing
    EnvironmentFactory(host=host, organization=tenant, status=EnvironmentStatus.RUNNING)
    stopped = EnvironmentFactory(host=host, status=EnvironmentStatus.STOPPED, name="their-env")
    with pytest.raises(ValidationError) as refused:
        _allocate(operator, host, tenant)
    assert set(refused.value.fields) == {"host"}
    assert "their-env" in str(refused.value.message)
    stopped.status = EnvironmentStatus.DELETED
    stopped.save()
    assert _allocate(operator, host, tenant).status == AllocationStatus.SCHEDULED
