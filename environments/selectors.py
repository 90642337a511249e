"""Reads: what a user may see of environments, images and specs, and live availability."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.core.cache import cache
from django.db.models import Count, Prefetch, Q, QuerySet

from accounts.models import Organization, User
from machines.choices import HostStatus
from machines.models import AgentCommand, Host, Region
from machines.selectors import allocated_gpu_source

from .choices import EnvironmentStatus
from .models import Environment, EnvironmentEvent, GPUAssignment, Image, RegistryCredential, Spec
from .services.images import prepull_progress_key
from .services.placement import free_gpus, host_capacity_rows, schedulable_hosts


def organization_list_for_member(user: User) -> QuerySet[Organization]:
    return Organization.objects.filter(memberships__user=user, is_active=True)


def environment_list_for_user(
    user: User, *, include_deleted: bool = False
) -> QuerySet[Environment]:
    """The environments of the user's organisations (operators: every one)."""
    queryset = Environment.objects.select_related(
        "organization", "spec", "image", "region", "host", "created_by"
    ).prefetch_related(
        "ports",
        Prefetch(
            "gpu_assignments",
            queryset=GPUAssignment.objects.filter(released_at__isnull=True).select_related("gpu"),
            to_attr="open_assignments",
        ),
    )
    if not user.is_staff:
        queryset = queryset.filter(organization__in=organization_list_for_member(user))
    if not include_deleted:
        queryset = queryset.exclude(status=EnvironmentStatus.DELETED)
    return queryset


def environment_get_for_user(user: User, pk) -> Environment | None:
    return environment_list_for_user(user, include_deleted=True).filter(pk=pk).first()


def environment_event_list(environment: Environment) -> QuerySet[EnvironmentEvent]:
    return environment.events.order_by("created_at", "pk")


def image_list_for_user(user: User) -> QuerySet[Image]:
    """Catalogue images the user may choose (operators: all, offered or not)."""
    queryset = Image.objects.select_related("organization")
    if user.is_staff:
        return queryset
    return queryset.filter(is_active=True).filter(
        Q(organization__isnull=True) | Q(organization__in=organization_list_for_member(user))
    )


def registry_credential_list() -> QuerySet[RegistryCredential]:
    return RegistryCredential.objects.all()


def spec_list(user: User | None = None) -> QuerySet[Spec]:
    queryset = Spec.objects.prefetch_related("regions")
    if user is None or not user.is_staff:
        queryset = queryset.filter(is_active=True)
    return queryset


@dataclass
class Availability:
    """How many environments of a spec could be placed right now, and where."""

    total: int
    by_region: dict[str, int]


def spec_availability(specs: list[Spec], region: Region | None = None) -> dict[int, Availability]:
    """For each spec: the number of environments that could be placed now, summed over hosts
    (each host: the least of what its free GPUs, vCPUs and memory allow). Three queries,
    whatever the number of specs or hosts."""
    rows = host_capacity_rows(region_id=region.pk if region is not None else None)
    slugs = dict(Region.objects.values_list("pk", "slug"))
    gpus_by_host: dict[int, dict[str, int]] = defaultdict(dict)
    for row in (
        free_gpus()
        .filter(host__in=schedulable_hosts())
        .values("host_id", "model")
        .annotate(count=Count("pk"))
    ):
        gpus_by_host[row["host_id"]][row["model"]] = row["count"]
    result = {}
    for spec in specs:
        region_ids = {r.pk for r in spec.regions.all()}
        by_region: dict[str, int] = defaultdict(int)
        for row in rows:
            if region_ids and row.region_id not in region_ids:
                continue
            if any(row.labels.get(key) != value for key, value in spec.host_labels.items()):
                continue
            fits = min(row.free_vcpu // spec.vcpu, row.free_memory // spec.memory_bytes)
            if spec.gpu_count:
                free = gpus_by_host[row.host_id]
                count = free.get(spec.gpu_model, 0) if spec.gpu_model else sum(free.values())
                fits = min(fits, count // spec.gpu_count)
            if fits > 0:
                by_region[slugs.get(row.region_id, "")] += fits
        result[spec.pk] = Availability(total=sum(by_region.values()), by_region=dict(by_region))
    return result


@allocated_gpu_source
def gpu_ids_allocated() -> QuerySet:
    """The GPUs environments hold, for the fleet's pages (registered with machines)."""
    return GPUAssignment.objects.filter(released_at__isnull=True).values("gpu_id")


@dataclass
class Prepull:
    """One pull of an image onto a host and how far it got."""

    command: AgentCommand
    progress: dict


def image_prepull_list(image: Image, limit: int = 20) -> list[Prepull]:
    """The latest pulls of ``image`` an operator asked for, newest first, with the progress
    the agents last reported for those still running."""
    commands = list(
        AgentCommand.objects.filter(kind="image_pull", payload__image=image.reference)
        .select_related("host", "requested_by")
        .order_by("-created_at")[:limit]
    )
    progress = cache.get_many([prepull_progress_key(command.pk) for command in commands])
    return [
        Prepull(command, progress.get(prepull_progress_key(command.pk)) or {})
        for command in commands
    ]


def image_prepull_hosts() -> QuerySet[Host]:
    """Hosts an image can be pulled onto: a container runtime, not retired."""
    return (
        Host.objects.exclude(status=HostStatus.RETIRED)
        .exclude(docker_version="")
        .select_related("region")
        .order_by("name")
    )
