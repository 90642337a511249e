"""Placement: filters, scoring, and no double-booking under concurrency."""

import threading

import pytest
from django.db import connection

from accounts.choices import Role
from accounts.tests.factories import MembershipFactory
from environments.choices import PlacementStrategy
from environments.models import Environment, GPUAssignment
from environments.services.lifecycle import environment_create
from environments.services.placement import NoCapacity, candidate_hosts
from machines.choices import GPUHealth, HostStatus
from machines.tests.factories import GPUFactory, RegionFactory

from .factories import GPU_MODEL, DockerHostFactory, ImageFactory, SpecFactory, host_with_gpus

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
