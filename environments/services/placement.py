"""Where an environment runs: filter hosts, score them, take GPUs without double-booking.

Filters (ARCHITECTURE.md §5): online and connected, not in maintenance or draining, a container
runtime present, not held by a whole-machine allocation for another organisation, the region,
the spec's host labels, the GPU model, enough free GPUs, vCPUs and memory. Scoring: hosts that
already hold the image first, then binpack (the fullest host that fits) by default or spread
(the emptiest) on request.

The database, not the scheduler's care, makes double-booking impossible: one open assignment
per GPU (a partial unique index), each GPU taken under its own advisory lock, tried without
waiting (``pg_try_advisory_xact_lock``: skip-locked semantics on a lock only placements take,
so a GPU row a heartbeat is updating is not mistaken for one being taken). Of N requests for
the last free GPU exactly one gets it; the others find nothing to lock and get a clear "no
capacity" answer naming what is free instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, OuterRef, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import Organization
from machines.choices import OPEN_ALLOCATION_STATES, TENANT_PLACEMENT_STATES, GPUHealth, HostStatus
from machines.models import GPU, Allocation, Host, Region
from machines.services.allocations import OCCUPANTS_NAMED, host_occupants_source
from remotegpu.core.errors import Conflict

from ..choices import ACTIVE_STATES, EnvironmentStatus, PlacementStrategy
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


def allocations_holding_for_others(organization_id: int | None, host=None) -> QuerySet[Allocation]:
    """Open whole-machine allocations that keep environments of ``organization_id`` off their
    host (``host``, else correlated on ``OuterRef("pk")``, a host): every open one but a
    provisioning or active one of that organisation. A scheduled one already holds the host
    (nothing placed meanwhile would leave when it starts), and a reclaiming one until its host
    is clean. With no organisation, every open allocation holds its host."""
    return Allocation.objects.filter(
        host=OuterRef("pk") if host is None else host, status__in=OPEN_ALLOCATION_STATES
    ).exclude(status__in=TENANT_PLACEMENT_STATES, organization_id=organization_id)


def schedulable_hosts(organization_id: int | None = None) -> QuerySet[Host]:
    """Hosts that take new environments (of ``organization_id``): online, connected, with a
    container runtime, not held by a whole-machine allocation for anyone else."""
    return (
        Host.objects.filter(status=HostStatus.ONLINE, connected=True)
        .exclude(docker_version="")
        .exclude(Exists(allocations_holding_for_others(organization_id)))
    )


# Environments that are gone from their host: deleted, or failed (no container, no GPUs).
GONE_STATES = frozenset({EnvironmentStatus.DELETED, EnvironmentStatus.FAILED})


@host_occupants_source
def environments_of_others_on(host: Host, organization: Organization) -> list[str]:
    """Environments of organisations other than ``organization`` still on ``host``: a
    whole-machine allocation of ``host`` to ``organization`` waits until they are gone."""
    rows = (
        Environment.objects.filter(host=host)
        .exclude(organization=organization)
        .exclude(status__in=GONE_STATES)
        .order_by("pk")
        .values_list("name", "organization__name")[:OCCUPANTS_NAMED]
    )
    return [f"{name} ({organization_name})" for name, organization_name in rows]


# One statement for the whole fleet: healthy GPUs (per-host counts kept by a trigger), open
# assignments, and reserved vCPUs and memory are each grouped once and hash-joined to the hosts,
# not computed per host by correlated subqueries (4 s at 5,000 hosts; now a few ms).
_CAPACITY_SQL = """
WITH healthy AS (
    -- One row per host and model, kept by a trigger on machines_gpu (machines 0009).
    SELECT c.host_id, sum(c.healthy) AS gpus
    FROM machines_hostgpumodel c
    WHERE %(model)s = '' OR c.model = %(model)s
    GROUP BY c.host_id
), taken AS (
    -- Open assignments are few and indexed (the partial unique index): count those rather
    -- than probe every GPU of the fleet for one.
    SELECT g.host_id, count(*) AS gpus
    FROM environments_gpuassignment a JOIN machines_gpu g ON g.id = a.gpu_id
    WHERE a.released_at IS NULL AND g.health = 'ok' AND (%(model)s = '' OR g.model = %(model)s)
    GROUP BY g.host_id
), held AS (
    -- Hosts a whole-machine allocation keeps for another organisation (or being reclaimed,
    -- or not started yet): see allocations_holding_for_others.
    SELECT DISTINCT al.host_id
    FROM machines_allocation al
    WHERE al.status = ANY(%(allocation_open)s)
      AND NOT (al.status = ANY(%(allocation_tenant)s)
               AND al.organization_id IS NOT DISTINCT FROM %(organization)s::bigint)
), reserved AS (
    SELECT e.host_id, sum(s.vcpu) AS vcpu, sum(s.memory_gib)::bigint * 1073741824 AS memory
    FROM environments_environment e JOIN environments_spec s ON s.id = e.spec_id
    WHERE e.host_id IS NOT NULL AND e.status = ANY(%(active)s)
    GROUP BY e.host_id
)
SELECT h.id,
       coalesce(f.gpus, 0) - coalesce(t.gpus, 0) AS free_gpus,
       h.cpu_cores - coalesce(r.vcpu, 0) AS free_vcpu,
       h.memory_total - coalesce(r.memory, 0) AS free_memory,
       coalesce(h.images @> %(image)s::jsonb, false) AS has_image
FROM machines_host h
LEFT JOIN healthy f ON f.host_id = h.id
LEFT JOIN taken t ON t.host_id = h.id
LEFT JOIN reserved r ON r.host_id = h.id
WHERE h.status = 'online' AND h.connected AND h.docker_version <> ''
  AND NOT EXISTS (SELECT 1 FROM held WHERE held.host_id = h.id)
  AND (%(only_host)s::bigint IS NULL OR h.id = %(only_host)s::bigint)
  AND (%(region)s::bigint IS NULL OR h.region_id = %(region)s::bigint)
  AND h.labels @> %(labels)s::jsonb
  AND coalesce(f.gpus, 0) - coalesce(t.gpus, 0) >= %(gpus)s
  AND h.cpu_cores - coalesce(r.vcpu, 0) >= %(vcpu)s
  AND h.memory_total - coalesce(r.memory, 0) >= %(memory)s
ORDER BY has_image DESC, free_gpus {gpu_order}, free_vcpu DESC, h.id
LIMIT %(limit)s
"""


@dataclass
class HostCapacity:
    host_id: int
    region_id: int | None
    labels: dict
    free_gpus: int
    free_vcpu: int
    free_memory: int
    has_image: bool


def host_capacity_rows(
    *,
    gpu_model: str = "",
    gpus: int = 0,
    vcpu: int = 0,
    memory: int = 0,
    region_id: int | None = None,
    labels: dict | None = None,
    image_reference: str = "",
    strategy: str = PlacementStrategy.BINPACK,
    only_host_id: int | None = None,
    organization_id: int | None = None,
    limit: int | None = None,
) -> list[HostCapacity]:
    """Schedulable hosts with ``gpus`` free GPUs (of ``gpu_model``; any with ""), ``vcpu``
    vCPUs and ``memory`` bytes free, best first: hosts holding the image, then binpack (fewest
    free GPUs) or spread (most). A host a whole-machine allocation holds is offered only to
    ``organization_id``, while that allocation is provisioning or active; with no organisation,
    to nobody."""
    gpu_order = "ASC" if strategy == PlacementStrategy.BINPACK else "DESC"
    params = {
        "model": gpu_model,
        "active": list(ACTIVE_STATES),
        # A JSON array no host's list contains when no image is asked for.
        "image": json.dumps([image_reference] if image_reference else [None]),
        "only_host": only_host_id,
        "organization": organization_id,
        "allocation_open": sorted(OPEN_ALLOCATION_STATES),
        "allocation_tenant": sorted(TENANT_PLACEMENT_STATES),
        "region": region_id,
        "labels": json.dumps(labels or {}),
        "gpus": gpus,
        "vcpu": vcpu,
        "memory": memory,
        "limit": limit,
    }
    sql = _CAPACITY_SQL.format(gpu_order=gpu_order).replace(
        "SELECT h.id,", "SELECT h.id, h.region_id, h.labels,"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [
            HostCapacity(
                row[0],
                row[1],
                row[2] if isinstance(row[2], dict) else json.loads(row[2] or "{}"),
                *row[3:],
            )
            for row in cursor.fetchall()
        ]


def candidate_hosts(
    *,
    spec: Spec,
    gpu_count: int,
    region: Region | None,
    image_reference: str = "",
    strategy: str = PlacementStrategy.BINPACK,
    only_host: Host | None = None,
    organization: Organization | None = None,
    limit: int = MAX_HOSTS_TRIED,
) -> list[Host]:
    """The hosts a placement for ``organization`` tries, best first."""
    rows = host_capacity_rows(
        gpu_model=spec.gpu_model if gpu_count else "",
        gpus=gpu_count,
        vcpu=spec.vcpu,
        memory=spec.memory_bytes,
        region_id=region.pk if region is not None else None,
        labels=spec.host_labels,
        image_reference=image_reference,
        strategy=strategy,
        only_host_id=only_host.pk if only_host is not None else None,
        organization_id=organization.pk if organization is not None else None,
        limit=limit,
    )
    hosts = Host.objects.in_bulk([row.host_id for row in rows])
    return [hosts[row.host_id] for row in rows]


@dataclass
class Placement:
    host: Host
    gpus: list[GPU]


# pg advisory lock space (the two-int4 form, apart from the one-bigint form) of "a placement is
# taking this GPU". Not a row lock: heartbeats update every GPU row each interval, and a GPU
# row locked for a heartbeat's metrics is free all the same (skipping it refused creates).
GPU_PLACEMENT_LOCK = 7_310_002


def _try_lock_gpus(gpu_ids: list[int], count: int) -> list[int]:
    """Up to ``count`` of ``gpu_ids``, in order, that no other placement is taking: each one's
    advisory lock tried without waiting, held until the transaction ends."""
    locked: list[int] = []
    with connection.cursor() as cursor:
        for gpu_id in gpu_ids:
            cursor.execute(
                "SELECT pg_try_advisory_xact_lock(%s, (%s::bigint %% 2147483647)::int)",
                [GPU_PLACEMENT_LOCK, gpu_id],
            )
            if cursor.fetchone()[0]:
                locked.append(gpu_id)
                if len(locked) == count:
                    break
    return locked


def _take_gpus(environment: Environment, host: Host, count: int, gpu_model: str) -> list[GPU]:
    """Take ``count`` free GPUs of ``host``, skipping ones another placement is taking, and
    assign them; [] when they cannot all be had. Two placements never take the same GPU: each
    holds a GPU's advisory lock while it takes it, and the partial unique index on open
    assignments stops one that raced past the lock (an ``IntegrityError``)."""
    if count == 0:
        return []
    free = list(
        free_gpus(gpu_model).filter(host=host).order_by("index").values_list("pk", flat=True)
    )
    locked = _try_lock_gpus(free, count)
    # A placement that committed between our listing and our lock has let its lock go: look
    # again, in a statement that sees its assignment.
    gpus = list(free_gpus(gpu_model).filter(pk__in=locked).order_by("index"))
    if len(gpus) < count:
        return []
    now = timezone.now()
    GPUAssignment.objects.bulk_create(
        [GPUAssignment(environment=environment, gpu=gpu, created_at=now) for gpu in gpus]
    )
    return gpus


def _fits(host: Host, spec: Spec, organization_id: int) -> bool:
    """Re-check vCPUs, memory and whole-machine allocations under the host's row lock
    (placements and allocations of one host queue here, briefly, so two placements never both
    take its last cores, and an allocation made meanwhile is seen)."""
    locked = Host.objects.select_for_update().filter(pk=host.pk).values("cpu_cores", "memory_total")
    capacity = locked.get()
    if allocations_holding_for_others(organization_id, host).exists():
        return False
    reserved = Environment.objects.filter(host=host, status__in=ACTIVE_STATES).aggregate(
        vcpu=Coalesce(Sum("spec__vcpu"), 0), memory_gib=Coalesce(Sum("spec__memory_gib"), 0)
    )
    return (
        capacity["cpu_cores"] - reserved["vcpu"] >= spec.vcpu
        and capacity["memory_total"] - reserved["memory_gib"] * GIB >= spec.memory_bytes
    )


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
        organization=environment.organization,
    )
    for host in candidates:
        try:
            with transaction.atomic():
                gpus = _take_gpus(environment, host, gpu_count, spec.gpu_model)
                if gpu_count and not gpus:
                    continue
                if not _fits(host, spec, environment.organization_id):
                    raise _Retry
                return Placement(host=host, gpus=gpus)
        except (IntegrityError, _Retry):
            # Another placement committed an assignment for one of these GPUs between our
            # snapshot and our lock, or took the host's last cores: try the next host.
            continue
    raise NoCapacity(
        no_capacity_message(
            spec, gpu_count, environment.region, only_host, environment.organization_id
        )
    )


class _Retry(Exception):
    pass


def no_capacity_message(
    spec: Spec,
    gpu_count: int,
    region: Region | None,
    only_host: Host | None = None,
    organization_id: int | None = None,
) -> str:
    """Say what is missing and what is free instead (another region, another GPU model)."""
    if only_host is not None:
        held = (
            allocations_holding_for_others(organization_id, only_host).order_by("ends_at").first()
        )
        if held is not None:
            return _(
                "Its host %(host)s is held by a whole-machine allocation (%(status)s, until "
                "%(end)s): nothing else starts there meanwhile."
            ) % {
                "host": only_host.name,
                "status": held.get_status_display(),
                "end": timezone.localtime(held.ends_at).strftime("%Y-%m-%d %H:%M %Z"),
            }
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
        .filter(host__in=schedulable_hosts(organization_id))
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
