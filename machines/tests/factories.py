"""Factories of the fleet. Join tokens and credentials come from their services, so that the
plaintext a test holds is really the one whose digest is stored."""

from __future__ import annotations

from datetime import timedelta

import factory
from django.utils import timezone

from accounts.tests.factories import OperatorFactory, OrganizationFactory
from machines.choices import AllocationStatus, CommandKind, GPUHealth, HostStatus
from machines.models import GPU, AgentCommand, Allocation, Host, Region
from machines.services.join import IssuedJoinToken, JoinedHost, host_join, join_token_create

GIB = 1024**3


class RegionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Region

    name = factory.Sequence(lambda n: f"Region {n}")
    slug = factory.Sequence(lambda n: f"region-{n}")
    location = "Rack row 1"


class HostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Host

    name = factory.Sequence(lambda n: f"gpu-host-{n:03d}")
    address = factory.Sequence(lambda n: f"10.0.{n // 250}.{n % 250 + 1}")
    region = factory.SubFactory(RegionFactory)
    status = HostStatus.ONLINE
    connected = True
    last_seen_at = factory.LazyFunction(timezone.now)
    cpu_model = "AMD EPYC 7763"
    cpu_cores = 64
    memory_total = 512 * GIB
    disk_total = 4000 * GIB


class RuntimeHostFactory(HostFactory):
    """A host whose agent drives a Docker Engine and serves its SSH gateway: it can be
    allocated as a whole machine."""

    docker_version = "20.10.24"
    gpu_backend = "fake"
    containers_known = True
    ssh_port = 2222
    ssh_host_key_fingerprint = "SHA256:mI3i9d6jvXrYc3JfXn7mG2oFQh8rHk1s5bW2ZcQ0aPc"


class GPUFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = GPU

    host = factory.SubFactory(HostFactory)
    uuid = factory.Sequence(lambda n: f"GPU-{n:08d}-0000-0000-0000-000000000000")
    index = factory.Sequence(lambda n: n % 8)
    model = "NVIDIA A100-SXM4-80GB"
    memory_total = 80 * GIB
    driver_version = "550.54.15"
    cuda_version = "12.4"
    compute_capability = "8.0"
    health = GPUHealth.OK


class AgentCommandFactory(factory.django.DjangoModelFactory):
    """A command row as ``command_create`` leaves it, without the push to the agent."""

    class Meta:
        model = AgentCommand

    host = factory.SubFactory(HostFactory)
    kind = CommandKind.PING
    deadline = factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=5))


def join_token_issue(operator=None, **kwargs) -> IssuedJoinToken:
    """A join token minted by ``join_token_create``; its plaintext is in ``.plaintext``."""
    kwargs.setdefault("name", "rack 7")
    return join_token_create(operator=operator or OperatorFactory(), **kwargs)


def host_joined(name: str = "joined-host", **token_kwargs) -> JoinedHost:
    """A host that joined with a fresh join token; its credential is in ``.credential``."""
    issued = join_token_issue(**token_kwargs)
    return host_join(token=issued.plaintext, name=name)


class AllocationFactory(factory.django.DjangoModelFactory):
    """An active allocation as a row (no command sent): for lists, access checks, results."""

    class Meta:
        model = Allocation

    host = factory.SubFactory(RuntimeHostFactory)
    organization = factory.SubFactory(OrganizationFactory)
    starts_at = factory.LazyFunction(lambda: timezone.now() - timedelta(hours=1))
    ends_at = factory.LazyFunction(lambda: timezone.now() + timedelta(days=2))
    status = AllocationStatus.ACTIVE
    tenant_user = factory.Sequence(lambda n: f"rgt{900000 + n}")
