"""What billing is told about environments and whole-machine allocations.

Billing imports none of the apps it bills; this module is where they meet. An environment's
run is metered from the moment the agent reports it running until it leaves running (a stop
bills until the host confirms it); its kept volume is metered while it is stopped; an active
allocation is metered as a whole machine, and environments on a machine the organisation
has allocated are not metered twice. Hosts are billing sources: heartbeats tell billing up to
when what runs on them was seen.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from accounts.models import Organization
from billing.choices import MeterKind
from billing.services.balance import out_of_balance_listener
from billing.services.metering import meter_close, meter_open, sources_seen
from billing.services.prices import Quantities, rate_for, rates_for, region_source
from billing.services.wallets import wallet_require_funds
from machines.choices import AllocationStatus
from machines.models import Allocation, Host, Region
from machines.services.allocations import allocation_status_listener
from machines.services.heartbeats import heartbeats_stored_listener
from machines.services.hosts import OFFLINE_AFTER_MISSED_HEARTBEATS
from remotegpu.core.errors import Conflict

from ..choices import EnvironmentStatus, StatusReason
from ..models import Environment, Spec

S = EnvironmentStatus
# A stopping container still runs on its host until the agent says it stopped.
BILLED_STATES = frozenset({S.RUNNING, S.STOPPING})


def host_source(host_id: int) -> str:
    return f"host:{host_id}"


def run_reference(environment: Environment) -> str:
    return f"environment:{environment.pk}:run"


def volume_reference(environment: Environment) -> str:
    return f"environment:{environment.pk}:volume"


def spec_quantities(
    spec: Spec, *, region: Region | None = None, without_gpu: bool = False
) -> Quantities:
    slug = region.slug if region is not None else ""
    if without_gpu or spec.is_cpu_only:
        kind = MeterKind.CPU_ONLY if without_gpu else MeterKind.COMPUTE
        return Quantities(kind=kind, region=slug, vcpu=spec.vcpu, memory_gib=spec.memory_gib)
    return Quantities(
        kind=MeterKind.COMPUTE,
        region=slug,
        gpu_model=spec.gpu_model,
        gpu_count=spec.gpu_count,
        vcpu=spec.vcpu,
        memory_gib=spec.memory_gib,
    )


def spec_rate(spec: Spec, *, region: Region | None = None, without_gpu: bool = False) -> Decimal:
    """The price per hour of running ``spec`` (in ``region``, or at the default price)."""
    return rate_for(spec_quantities(spec, region=region, without_gpu=without_gpu))


def specs_rates(specs: list[Spec], *, region: Region | None = None) -> dict[int, Decimal]:
    """Each spec's price per hour (in ``region``, or at the default price), in one query."""
    rates = rates_for([spec_quantities(spec, region=region) for spec in specs])
    return {spec.pk: rate for spec, rate in zip(specs, rates, strict=True)}


def specs_rates_by_region(specs: list[Spec]) -> dict[Region | None, dict[int, Decimal]]:
    """Each spec's price per hour in every region, and at the default price (``None``: a host
    in no region), in one query."""
    regions: list[Region | None] = [None, *Region.objects.order_by("name")]
    rates = iter(
        rates_for([spec_quantities(spec, region=region) for region in regions for spec in specs])
    )
    return {region: {spec.pk: next(rates) for spec in specs} for region in regions}


# On their way to running: not billed yet, but they will be, so a spend limit counts them.
STARTING_STATES = frozenset({S.PENDING, S.PROVISIONING, S.STARTING})


def starting_rate(organization: Organization, *, exclude: Environment | None = None) -> Decimal:
    """What the organisation's environments on their way to running will cost per hour."""
    environments = list(
        Environment.objects.filter(organization=organization, status__in=STARTING_STATES)
        .exclude(pk=exclude.pk if exclude is not None else None)
        .select_related("spec", "host__region")
    )
    quantities = [
        spec_quantities(
            environment.spec,
            region=environment.host.region if environment.host else None,
            without_gpu=environment.without_gpu,
        )
        for environment in environments
    ]
    return sum(rates_for(quantities), Decimal(0)) if quantities else Decimal(0)


def environment_require_funds(
    organization: Organization,
    spec: Spec,
    *,
    region: Region | None,
    without_gpu: bool = False,
    environment: Environment | None = None,
) -> None:
    """Creating or starting (``environment``) needs an hour of the spec's price in the
    wallet, and keeps what runs and what is starting within the spend limit."""
    wallet_require_funds(
        organization,
        spec_rate(spec, region=region, without_gpu=without_gpu),
        field="spec",
        starting_rate=lambda: starting_rate(organization, exclude=environment),
    )


def _host_allocated_to(environment: Environment) -> bool:
    return Allocation.objects.filter(
        host_id=environment.host_id,
        organization_id=environment.organization_id,
        status=AllocationStatus.ACTIVE,
    ).exists()


def environment_billing_changed(environment: Environment, previous: str, target: str) -> None:
    """Open or close the environment's meters for its move from ``previous`` to ``target``;
    called inside the transaction that moves it."""
    now = timezone.now()
    was_billed, is_billed = previous in BILLED_STATES, target in BILLED_STATES
    if was_billed and not is_billed:
        meter_close(run_reference(environment), now)
    if target == S.RUNNING and not was_billed and environment.host_id:
        meter_close(volume_reference(environment), now)
        if not _host_allocated_to(environment):
            _run_meter_open(environment, now)  # a restart's run starts now, not at first
    if target == S.STOPPED and environment.host_id:
        region = environment.host.region
        meter_open(
            reference=volume_reference(environment),
            organization=environment.organization,
            label=gettext_noop("%(name)s (volume)"),
            label_args={"name": environment.name},
            quantities=Quantities(
                kind=MeterKind.STORAGE,
                region=region.slug if region else "",
                storage_gib=environment.spec.disk_gib,
            ),
            at=now,
        )
    if target in (S.DELETING, S.DELETED, S.FAILED):
        meter_close(volume_reference(environment), now)


def _run_meter_open(environment: Environment, at: datetime) -> None:
    host = environment.host
    meter_open(
        reference=run_reference(environment),
        organization=environment.organization,
        label=environment.name,
        quantities=spec_quantities(
            environment.spec, region=host.region, without_gpu=environment.without_gpu
        ),
        at=at,
        source=host_source(host.pk),
    )


def _running_on_allocated_host(allocation: Allocation):
    return Environment.objects.filter(
        host_id=allocation.host_id,
        organization_id=allocation.organization_id,
        status__in=BILLED_STATES,
    ).select_related("host__region", "organization", "spec")


@allocation_status_listener
def allocation_billing_changed(allocation: Allocation) -> None:
    """An active allocation is billed as a whole machine; the organisation's environments
    already running on it stop being billed on their own meanwhile. An allocation that failed
    leaves them running, billed again from then on (one reclaimed removes them)."""
    reference = f"allocation:{allocation.pk}"
    now = timezone.now()
    if allocation.status != AllocationStatus.ACTIVE:
        meter_close(reference, now)
        if allocation.status == AllocationStatus.FAILED:
            for environment in _running_on_allocated_host(allocation):
                _run_meter_open(environment, now)
        return
    for environment in _running_on_allocated_host(allocation):
        meter_close(run_reference(environment), now)
    host = Host.objects.select_related("region").get(pk=allocation.host_id)
    models = sorted(host.gpu_counts.values_list("model", flat=True))
    meter_open(
        reference=reference,
        organization=allocation.organization,
        label=gettext_noop("Whole machine %(host)s"),
        label_args={"host": host.name},
        quantities=Quantities(
            kind=MeterKind.MACHINE,
            region=host.region.slug if host.region else "",
            gpu_model=models[0] if models else "",
        ),
        source=host_source(host.pk),
    )


@heartbeats_stored_listener
def hosts_seen(seen: dict[int, tuple[datetime, float]]) -> None:
    """A host silent for as long as makes it offline was offline: not billed meanwhile."""
    sources_seen(
        {
            host_source(pk): (when, interval * OFFLINE_AFTER_MISSED_HEARTBEATS)
            for pk, (when, interval) in seen.items()
        }
    )


@out_of_balance_listener
def stop_for_balance(organization: Organization) -> None:
    """Stop every running environment of an organisation out of balance; volumes stay."""
    from .lifecycle import environment_stop  # lifecycle calls this module on each transition

    running = Environment.objects.filter(organization=organization, status=S.RUNNING)
    for environment in running.select_related("host", "organization"):
        try:
            environment_stop(
                user=None,
                environment=environment,
                reason=StatusReason.OUT_OF_BALANCE,
                message=_("Stopped: the organisation's balance ran out."),
            )
        except Conflict:  # it stopped meanwhile
            continue


@region_source
def region_slugs() -> list[str]:
    return list(Region.objects.values_list("slug", flat=True))
