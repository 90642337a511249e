"""Reads of the fleet."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.contrib.postgres.aggregates import ArrayAgg
from django.contrib.postgres.fields import ArrayField
from django.db.models import (
    Avg,
    CharField,
    Count,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    IntegerField,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Cast, Coalesce, NullIf
from django.utils import timezone

from accounts.models import Membership, User

from .choices import AlertStatus, GPUHealth, HostStatus
from .models import (
    GPU,
    AgentCommand,
    Alert,
    AlertRule,
    Allocation,
    GPUSample,
    GPUSampleRollup,
    Host,
    HostCredential,
    HostSample,
    HostSampleRollup,
    JoinToken,
    Region,
)


def region_list() -> QuerySet[Region]:
    return Region.objects.annotate(host_count=Count("hosts")).order_by("name")


def _gpus_of_host():
    return GPU.objects.filter(host=OuterRef("pk")).exclude(health=GPUHealth.LOST)


def host_list_base() -> QuerySet[Host]:
    """Hosts in list order, nothing computed: what filters and pagination work on."""
    return Host.objects.order_by("name")


def host_list() -> QuerySet[Host]:
    """Hosts with their GPU count. The count is a correlated subquery, not a join with GROUP
    BY, so that a page of 50 out of 10,000 hosts aggregates 50 hosts' GPUs, and the
    paginator's COUNT(*) touches only the hosts table."""
    gpu_count = _gpus_of_host().order_by().values("host").annotate(n=Count("id")).values("n")
    return (
        Host.objects.select_related("region")
        .annotate(gpu_count=Coalesce(Subquery(gpu_count, output_field=IntegerField()), 0))
        .order_by("name")
    )


def gpu_list() -> QuerySet[GPU]:
    return GPU.objects.select_related("host", "host__region").order_by("host__name", "index")


def join_token_list() -> QuerySet[JoinToken]:
    return JoinToken.objects.select_related("region", "created_by")


def command_list() -> QuerySet[AgentCommand]:
    return AgentCommand.objects.select_related("host", "requested_by")


def fleet_summary() -> dict:
    """Figures of the fleet overview, in two queries."""
    hosts = Host.objects.aggregate(
        total=Count("id"),
        **{status: Count("id", filter=Q(status=status)) for status in HostStatus.values},
    )
    gpus = GPU.objects.exclude(health=GPUHealth.LOST).aggregate(total=Count("id"))
    return {"hosts": hosts, "gpus": gpus}


# Operator pages ----------------------------------------------------------------------------


def host_list_with_figures() -> QuerySet[Host]:
    """``host_list()`` with what the host list page shows: GPU models and memory use in %."""
    gpu_models = (
        _gpus_of_host()
        .order_by()
        .values("host")
        .annotate(models=ArrayAgg("model", distinct=True))
        .values("models")
    )
    return host_list().annotate(
        gpu_models=Coalesce(Subquery(gpu_models, output_field=ArrayField(CharField())), Value([])),
        memory_percent=ExpressionWrapper(
            Cast("memory_used", FloatField()) * 100 / NullIf("memory_total", 0),
            output_field=FloatField(),
        ),
    )


def host_list_recently_offline(limit: int = 10) -> QuerySet[Host]:
    return (
        Host.objects.filter(status=HostStatus.OFFLINE)
        .select_related("region")
        .order_by("-status_changed_at")[:limit]
    )


# Which GPUs are allocated is the environments app's to say (it sits above this one): it
# registers a function returning a queryset of the ids of GPUs environments hold.
_allocated_gpu_ids: Callable[[], QuerySet] | None = None


def allocated_gpu_source(function: Callable[[], QuerySet]):
    global _allocated_gpu_ids
    _allocated_gpu_ids = function
    return function


def _allocated() -> Q:
    if _allocated_gpu_ids is None:
        return Q(pk__in=[])
    return Q(pk__in=_allocated_gpu_ids())


def gpu_figures_by_model() -> list[dict]:
    """GPUs per model: total (lost ones apart), healthy, degraded, lost, allocated (held by an
    environment) and free (healthy, on an online host, held by none)."""
    allocated = _allocated()
    return list(
        GPU.objects.values("model")
        .annotate(
            total=Count("id", filter=~Q(health=GPUHealth.LOST)),
            healthy=Count("id", filter=Q(health=GPUHealth.OK)),
            degraded=Count("id", filter=Q(health=GPUHealth.DEGRADED)),
            lost=Count("id", filter=Q(health=GPUHealth.LOST)),
            allocated=Count("id", filter=allocated),
            free=Count(
                "id",
                filter=Q(health=GPUHealth.OK, host__status=HostStatus.ONLINE) & ~allocated,
            ),
        )
        .order_by("-total", "model")
    )


def host_allocation_counts() -> dict[str, int]:
    """Online hosts with GPUs by how much of them environments hold: free (none), partly,
    fully (every healthy GPU)."""
    allocated = _allocated()
    held = GPU.objects.filter(allocated, host=OuterRef("pk")).order_by().values("host")
    rows = (
        Host.objects.filter(status=HostStatus.ONLINE)
        .annotate(
            healthy=Count("gpus", filter=Q(gpus__health=GPUHealth.OK)),
            held=Coalesce(
                Subquery(held.annotate(n=Count("pk")).values("n"), output_field=IntegerField()),
                Value(0),
            ),
        )
        .filter(healthy__gt=0)
        .values_list("healthy", "held")
    )
    counts = {"free": 0, "partly": 0, "fully": 0}
    for healthy, held_count in rows:
        key = "free" if held_count == 0 else "fully" if held_count >= healthy else "partly"
        counts[key] += 1
    return counts


def host_credential_list(host: Host) -> QuerySet[HostCredential]:
    return HostCredential.objects.filter(host=host, revoked_at__isnull=True).order_by("-created_at")


# Metrics -----------------------------------------------------------------------------------

METRIC_RANGES = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
METRIC_POINTS = 120  # buckets per range: 30 s for an hour, 84 min for a week
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DateBin(Func):
    """PostgreSQL's ``date_bin(stride, source, origin)``: the start of ``source``'s bucket."""

    function = "date_bin"
    output_field = DateTimeField()


def _window(range_name: str, now: datetime | None) -> tuple[timedelta, datetime]:
    span = METRIC_RANGES[range_name]
    step = span / METRIC_POINTS
    now = now or timezone.now()
    # Buckets start on multiples of the step since the epoch, so that a refresh a few seconds
    # later lands on the same buckets and the chart does not shimmer.
    first = (now - span - _EPOCH) // step * step + _EPOCH
    return step, first


def _sample_models(range_name: str):
    """Raw samples where they still cover the range; 5-minute rollups beyond a day."""
    if METRIC_RANGES[range_name] > timedelta(hours=24):
        return HostSampleRollup, GPUSampleRollup
    return HostSample, GPUSample


def _bucketed(queryset, step: timedelta):
    return queryset.annotate(
        bucket=DateBin(
            Value(step, output_field=DurationField()),
            F("time"),
            Value(_EPOCH, output_field=DateTimeField()),
        )
    ).values("bucket")


def _rounded(value, digits: int = 2):
    return None if value is None else round(value, digits)


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def host_metrics(host: Host, range_name: str, now: datetime | None = None) -> dict:
    """The host's and each GPU's figures over ``range_name``, averaged per bucket in SQL.

    Three queries whatever the range or the number of GPUs."""
    step, first = _window(range_name, now)
    host_samples, gpu_samples = _sample_models(range_name)
    host_rows = (
        _bucketed(host_samples.objects.filter(host=host, time__gte=first), step)
        .annotate(
            cpu=Avg("cpu_percent"),
            memory=Avg(
                Cast("memory_used", FloatField()) * 100 / NullIf("memory_total", 0),
                output_field=FloatField(),
            ),
        )
        .order_by("bucket")
    )
    gpus = list(
        GPU.objects.filter(host=host)
        .exclude(health=GPUHealth.LOST)
        .order_by("index", "uuid")
        .values("id", "uuid", "index", "model", "memory_total")
    )
    gpu_rows = (
        _bucketed(gpu_samples.objects.filter(gpu__host=host, time__gte=first), step)
        .annotate(
            utilization=Avg("utilization"),
            memory_used=Avg("memory_used"),
            temperature=Avg("temperature"),
            power_draw=Avg("power_draw"),
        )
        .values("gpu_id", "bucket", "utilization", "memory_used", "temperature", "power_draw")
        .order_by("gpu_id", "bucket")
    )
    series = {
        gpu["id"]: {
            "uuid": gpu["uuid"],
            "index": gpu["index"],
            "model": gpu["model"],
            "memory_total": gpu["memory_total"],
            "t": [],
            "utilization": [],
            "memory_used": [],
            "temperature": [],
            "power_draw": [],
        }
        for gpu in gpus
    }
    for row in gpu_rows:
        gpu = series.get(row["gpu_id"])
        if gpu is None:  # a lost GPU's old samples
            continue
        gpu["t"].append(_epoch(row["bucket"]))
        gpu["utilization"].append(_rounded(row["utilization"]))
        gpu["memory_used"].append(int(row["memory_used"]))
        gpu["temperature"].append(_rounded(row["temperature"]))
        gpu["power_draw"].append(_rounded(row["power_draw"]))
    host_series = {"t": [], "cpu": [], "memory": []}
    for row in host_rows:
        host_series["t"].append(_epoch(row["bucket"]))
        host_series["cpu"].append(_rounded(row["cpu"]))
        host_series["memory"].append(_rounded(row["memory"]))
    return {
        "range": range_name,
        "step": int(step.total_seconds()),
        "host": host_series,
        "gpus": list(series.values()),
    }


def fleet_metrics(range_name: str, now: datetime | None = None) -> dict:
    """Average GPU utilisation across the fleet per bucket, and how many GPUs reported; one
    query."""
    step, first = _window(range_name, now)
    rows = (
        _bucketed(_sample_models(range_name)[1].objects.filter(time__gte=first), step)
        .annotate(utilization=Avg("utilization"), gpus=Count("gpu_id", distinct=True))
        .order_by("bucket")
    )
    result = {
        "range": range_name,
        "step": int(step.total_seconds()),
        "t": [],
        "utilization": [],
        "gpus": [],
    }
    for row in rows:
        result["t"].append(_epoch(row["bucket"]))
        result["utilization"].append(_rounded(row["utilization"]))
        result["gpus"].append(row["gpus"])
    return result


# Alerts ------------------------------------------------------------------------------------


def alert_list() -> QuerySet[Alert]:
    return Alert.objects.select_related("rule", "host", "gpu", "acknowledged_by").order_by(
        "-created_at", "-pk"
    )


def alert_rule_list() -> QuerySet[AlertRule]:
    """Rules with how many of their alerts are firing or acknowledged now."""
    return AlertRule.objects.annotate(
        open_alert_count=Count(
            "alerts",
            filter=Q(alerts__status__in=[AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED]),
        )
    ).order_by("name")


def alert_firing_count() -> int:
    return Alert.objects.filter(status=AlertStatus.FIRING).count()


# Whole-machine allocations -----------------------------------------------------------------


def allocation_list() -> QuerySet[Allocation]:
    """Every allocation, latest start first, with its host's GPUs (lost ones apart) in
    ``host.gpu_list``: list pages and the API show them without a query per row."""
    return Allocation.objects.select_related(
        "host", "host__region", "organization", "created_by", "reclaim_requested_by"
    ).prefetch_related(
        Prefetch(
            "host__gpus",
            queryset=GPU.objects.exclude(health=GPUHealth.LOST).order_by("index", "uuid"),
            to_attr="gpu_list",
        )
    )


def allocation_list_for_user(user: User) -> QuerySet[Allocation]:
    """The allocations of the user's active organisations (operators: every one)."""
    queryset = allocation_list()
    if user.is_staff:
        return queryset
    organizations = Membership.objects.filter(user=user, organization__is_active=True)
    return queryset.filter(organization_id__in=organizations.values("organization_id"))
