"""Where an environment runs: filter hosts, score them, take GPUs without double-booking.

Filters (ARCHITECTURE.md §5): online and connected, not in maintenance or draining, a container
runtime present, the region, the spec's host labels, the GPU model, enough free GPUs, vCPUs and
memory. Scoring: hosts that already hold the image first, then binpack (the fullest host that
fits) by default or spread (the emptiest) on request.

The database, not the scheduler's care, makes double-booking impossible: one open assignment
per GPU (a partial unique index), GPU rows taken with ``select_for_update(skip_locked=True)``.
Of N requests for the last free GPU exactly one gets it; the others find nothing to lock and
get a clear "no capacity" answer naming what is free instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import (
    BigIntegerField,
    Count,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from machines.choices import GPUHealth, HostStatus
from machines.models import GPU, Host, Region
from remotegpu.core.errors import Conflict

from ..choices import ACTIVE_STATES, PlacementStrategy
from ..models import GIB, Environment, GPUAssignment, Spec

# How many candidate hosts one placement tries before it says there is no capacity.
MAX_HOSTS_TRIED = 8


class NoCapacity(Conflict):
    code = "no_capacity"


def _open_assignment():
    return GPUAssignment.objects.filter(gpu=OuterRef("pk"), released_at__isnull=True)


def free_gpus(gpu_model: str = "") -> QuerySet[GPU]:
    """Healthy GPUs no environment holds (of ``gpu_model`` when given)."""
    queryset = GPU.objects.filter(health=GPUHealth.OK).exclude(Exists(_open_assignment()))
    return queryset.filter(model=gpu_model) if gpu_model else queryset


def _reserved(field: str):
    """The sum of ``spec.<field>`` over the host's environments that hold resources."""
    return Coalesce(
        Subquery(
            Environment.objects.filter(host=OuterRef("pk"), status__in=ACTIVE_STATES)
            .order_by()
            .values("host")
            .annotate(total=Sum(f"spec__{field}"))
            .values("total"),
            output_field=BigIntegerField(),
        ),
        Value(0),
        output_field=BigIntegerField(),
    )


def schedulable_hosts() -> QuerySet[Host]:
    """Hosts that take new environments: online, connected, with a container runtime."""
    return Host.objects.filter(status=HostStatus.ONLINE, connected=True).exclude(docker_version="")


def host_capacity(
    queryset: QuerySet[Host], *, gpu_model: str = "", image_reference: str = ""
) -> QuerySet[Host]:
    """Annotate ``free_gpu_count``, ``free_vcpu``, ``free_memory`` and ``has_image``."""
    free = Q(gpus__health=GPUHealth.OK) & ~Q(
        gpus__in=GPUAssignment.objects.filter(released_at__isnull=True).values("gpu")
    )
    if gpu_model:
        free &= Q(gpus__model=gpu_model)
    queryset = queryset.annotate(
        free_gpu_count=Count("gpus", filter=free, distinct=True),
        # Bytes exceed a 32-bit integer: Django answers comparisons of an IntegerField with
        # a larger number with an empty result, so these are BigIntegerFields.
        free_vcpu=ExpressionWrapper(
            F("cpu_cores") - _reserved("vcpu"), output_field=BigIntegerField()
        ),
        free_memory=ExpressionWrapper(
            F("memory_total") - _reserved("memory_gib") * Value(GIB),
            output_field=BigIntegerField(),
        ),
    )
    if image_reference:
        queryset = queryset.annotate(has_image=Q(images__contains=[image_reference]))
    else:
        queryset = queryset.annotate(has_image=Value(False))
    return queryset


def candidate_hosts(
    *,
    spec: Spec,
    gpu_count: int,
    region: Region | None,
    image_reference: str = "",
    strategy: str = PlacementStrategy.BINPACK,
    only_host: Host | None = None,
) -> QuerySet[Host]:
    queryset = schedulable_hosts()
    if only_host is not None:
        queryset = queryset.filter(pk=only_host.pk)
    if region is not None:
        queryset = queryset.filter(region=region)
    if spec.host_labels:
        queryset = queryset.filter(labels__contains=spec.host_labels)
    queryset = host_capacity(
        queryset, gpu_model=spec.gpu_model if gpu_count else "", image_reference=image_reference
    ).filter(free_vcpu__gte=spec.vcpu, free_memory__gte=spec.memory_bytes)
    if gpu_count:
        queryset = queryset.filter(free_gpu_count__gte=gpu_count)
    gpu_order = "free_gpu_count" if strategy == PlacementStrategy.BINPACK else "-free_gpu_count"
    return queryset.order_by(F("has_image").desc(), gpu_order, "-free_vcpu", "pk")


@dataclass
class Placement:
    host: Host
    gpus: list[GPU]


def _take_gpus(environment: Environment, host: Host, count: int, gpu_model: str) -> list[GPU]:
    """Lock ``count`` free GPUs of ``host`` (skipping ones another placement holds) and assign
    them; [] when they cannot all be had."""
    if count == 0:
        return []
    gpus = list(
        free_gpus(gpu_model)
        .filter(host=host)
        .order_by("index")
        .select_for_update(skip_locked=True, of=("self",))[:count]
    )
    if len(gpus) < count:
        return []
    now = timezone.now()
    GPUAssignment.objects.bulk_create(
        [GPUAssignment(environment=environment, gpu=gpu, created_at=now) for gpu in gpus]
    )
    return gpus


def _fits(host: Host, spec: Spec) -> bool:
    """Re-check vCPUs and memory under the host's row lock (placements on one host queue here,
    briefly, so two of them never both take its last cores)."""
    Host.objects.select_for_update().filter(pk=host.pk).values_list("pk").get()
    locked = host_capacity(Host.objects.filter(pk=host.pk)).values("free_vcpu", "free_memory").get()
    return locked["free_vcpu"] >= spec.vcpu and locked["free_memory"] >= spec.memory_bytes


def place(
    environment: Environment,
    *,
    gpu_count: int,
    only_host: Host | None = None,
) -> Placement:
    """Choose a host and take its GPUs for ``environment`` (inside the caller's transaction).
    Raises ``NoCapacity`` saying what is free instead."""
    spec = environment.spec
    candidates = candidate_hosts(
        spec=spec,
        gpu_count=gpu_count,
        region=environment.region,
        image_reference=environment.image_reference,
        strategy=environment.strategy,
        only_host=only_host,
    )
    for host in candidates[:MAX_HOSTS_TRIED]:
        try:
            with transaction.atomic():
                gpus = _take_gpus(environment, host, gpu_count, spec.gpu_model)
                if gpu_count and not gpus:
                    continue
                if not _fits(host, spec):
                    raise _Retry
                return Placement(host=host, gpus=gpus)
        except (IntegrityError, _Retry):
            # Another placement committed an assignment for one of these GPUs between our
            # snapshot and our lock, or took the host's last cores: try the next host.
            continue
    raise NoCapacity(no_capacity_message(spec, gpu_count, environment.region, only_host))


class _Retry(Exception):
    pass


def no_capacity_message(
    spec: Spec, gpu_count: int, region: Region | None, only_host: Host | None = None
) -> str:
    """Say what is missing and what is free instead (another region, another GPU model)."""
    if only_host is not None:
        return _(
            "Its host %(host)s has no %(count)d free GPU(s) for it now. Wait for them, or "
            "start it without GPU."
        ) % {"host": only_host.name, "count": gpu_count}
    where = region.name if region is not None else _("any region")
    if not gpu_count:
        return _("No host in %(where)s has %(vcpu)d vCPUs and %(memory)d GiB free.") % {
            "where": where,
            "vcpu": spec.vcpu,
            "memory": spec.memory_gib,
        }
    free = (
        free_gpus()
        .filter(host__in=schedulable_hosts())
        .values("model", "host__region__name")
        .annotate(count=Count("pk"))
        .order_by("-count")
    )
    offers = [
        _("%(count)d × %(model)s in %(region)s")
        % {
            "count": row["count"],
            "model": row["model"],
            "region": row["host__region__name"] or _("no region"),
        }
        for row in free[:5]
    ]
    message = _("No host in %(where)s has %(count)d free %(model)s GPU(s) now.") % {
        "where": where,
        "count": gpu_count,
        "model": spec.gpu_model or _("matching"),
    }
    if offers:
        message += " " + _("Free now: %(offers)s.") % {"offers": "; ".join(offers)}
    else:
        message += " " + _("No GPU is free anywhere right now.")
    return message
