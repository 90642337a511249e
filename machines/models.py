from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import (
    BigIntegerRangeField,
    DateTimeRangeField,
    RangeOperators,
)
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from remotegpu_agent import protocol

from remotegpu.core.models import TimeStampedModel

from .choices import (
    OPEN_ALLOCATION_STATES,
    OPEN_COMMAND_STATES,
    AlertMetric,
    AlertStatus,
    AllocationStatus,
    CommandKind,
    CommandStatus,
    Comparison,
    GPUHealth,
    HostStatus,
    OnboardingAuth,
    OnboardingStatus,
    Severity,
)

# Seconds an agent's clock may be off the server's before the server's time stamps its samples.
MAX_CLOCK_SKEW = 30.0


class Region(TimeStampedModel):
    """A cluster of hosts in one place (a data centre, a room, a rack row)."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    slug = models.SlugField(_("slug"), max_length=60, unique=True)
    location = models.CharField(_("location"), max_length=200, blank=True)
    description = models.TextField(_("description"), blank=True)

    class Meta:
        verbose_name = _("region")
        verbose_name_plural = _("regions")
        ordering = ["name"]

    def __str__(self):
        return self.name


class Host(TimeStampedModel):
    """A GPU server. What it is comes from its agent, not from what someone typed."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    address = models.CharField(
        _("address"),
        max_length=255,
        unique=True,
        null=True,
        blank=True,
        help_text=_("Host name or IP address operators and SSH reach it at."),
    )
    region = models.ForeignKey(
        Region,
        verbose_name=_("region"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="hosts",
    )
    labels = models.JSONField(_("labels"), default=dict, blank=True)
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=HostStatus.choices,
        default=HostStatus.PENDING,
        db_index=True,
    )
    status_reason = models.CharField(_("status reason"), max_length=200, blank=True)
    status_changed_at = models.DateTimeField(_("status changed"), default=timezone.now)
    heartbeat_interval = models.PositiveIntegerField(
        _("heartbeat interval (s)"),
        default=15,
        validators=[MinValueValidator(1), MaxValueValidator(protocol.MAX_HEARTBEAT_INTERVAL)],
        help_text=_("How often the agent reports, told to it when it connects."),
    )
    # What the agent says it runs at (it may be started with its own interval); offline
    # detection trusts this over the configured figure.
    agent_heartbeat_interval = models.FloatField(
        _("agent's heartbeat interval (s)"), null=True, blank=True, editable=False
    )
    # Reported by the agent.
    hostname = models.CharField(_("host name"), max_length=255, blank=True)
    cpu_model = models.CharField(_("CPU model"), max_length=200, blank=True)
    cpu_cores = models.PositiveIntegerField(_("CPU cores"), default=0)
    memory_total = models.BigIntegerField(_("memory (bytes)"), default=0)
    disk_total = models.BigIntegerField(_("disk (bytes)"), default=0)
    os = models.CharField(_("operating system"), max_length=200, blank=True)
    kernel = models.CharField(_("kernel"), max_length=200, blank=True)
    docker_version = models.CharField(_("Docker version"), max_length=50, blank=True)
    agent_version = models.CharField(_("agent version"), max_length=50, blank=True)
    gpu_backend = models.CharField(_("GPU back end"), max_length=20, blank=True)
    containers = models.JSONField(_("managed containers"), default=list, blank=True)
    # Whether the agent could list its containers in the latest inventory: without Docker
    # ``containers`` is unknown, and nothing is concluded from it.
    containers_known = models.BooleanField(_("containers known"), default=False)
    images = models.JSONField(_("images present"), default=list, blank=True)
    # Environments' ports are published on host ports from this range, unique per host.
    port_range_start = models.PositiveIntegerField(
        _("first published port"),
        default=40000,
        validators=[MinValueValidator(1024), MaxValueValidator(65535)],
    )
    port_range_end = models.PositiveIntegerField(
        _("last published port"),
        default=44999,
        validators=[MinValueValidator(1024), MaxValueValidator(65535)],
    )
    # The agent's SSH gateway (0: not serving) and its host key, as the agent reports them.
    ssh_port = models.PositiveIntegerField(_("SSH gateway port"), default=0, editable=False)
    ssh_host_key = models.CharField(_("SSH host key"), max_length=1000, blank=True, editable=False)
    ssh_host_key_fingerprint = models.CharField(
        _("SSH host key fingerprint"), max_length=100, blank=True, editable=False
    )
    # The environments with an SSH or terminal session open as of ``sessions_seen_at`` (the
    # latest heartbeat that listed any): idle auto-stop counts them as activity.
    session_environments = models.JSONField(default=list, blank=True, editable=False)
    sessions_seen_at = models.DateTimeField(null=True, blank=True, editable=False)
    connected = models.BooleanField(_("agent connected"), default=False)
    # The channel of the agent's newest socket: an older socket closing late must not mark a
    # reconnected host disconnected.
    agent_connection = models.CharField(max_length=200, blank=True, editable=False)
    last_seen_at = models.DateTimeField(_("last seen"), null=True, blank=True, db_index=True)
    # How far the agent's clock is behind the server's, in seconds (negative: ahead), as of
    # the latest heartbeat. Beyond a limit the server's time stamps the samples instead.
    clock_offset = models.FloatField(_("agent clock offset (s)"), null=True, blank=True)
    # The latest heartbeat, for list pages that must not touch the metrics tables.
    cpu_percent = models.FloatField(_("CPU %"), null=True, blank=True)
    memory_used = models.BigIntegerField(_("memory used"), null=True, blank=True)
    disk_used = models.BigIntegerField(_("disk used"), null=True, blank=True)

    class Meta:
        verbose_name = _("host")
        verbose_name_plural = _("hosts")
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def effective_heartbeat_interval(self) -> float:
        """Seconds between heartbeats: what the agent said it runs at, else the configured."""
        return self.agent_heartbeat_interval or self.heartbeat_interval

    @property
    def clock_skewed(self) -> bool:
        """The agent's clock is so far off that its samples carry the server's time."""
        return self.clock_offset is not None and abs(self.clock_offset) > MAX_CLOCK_SKEW

    @property
    def clock_offset_abs(self) -> float | None:
        return None if self.clock_offset is None else abs(self.clock_offset)

    @property
    def has_container_runtime(self) -> bool:
        """The agent drives a Docker Engine here: environments can be placed on it."""
        return bool(self.docker_version)

    @property
    def labels_text(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in sorted(self.labels.items()))


class GPU(TimeStampedModel):
    host = models.ForeignKey(
        Host, verbose_name=_("host"), on_delete=models.CASCADE, related_name="gpus"
    )
    uuid = models.CharField(_("UUID"), max_length=100, unique=True)
    index = models.PositiveSmallIntegerField(_("index"))
    model = models.CharField(_("model"), max_length=100)
    memory_total = models.BigIntegerField(_("memory (bytes)"))
    driver_version = models.CharField(_("driver version"), max_length=50, blank=True)
    cuda_version = models.CharField(_("CUDA version"), max_length=20, blank=True)
    compute_capability = models.CharField(_("compute capability"), max_length=10, blank=True)
    health = models.CharField(
        _("health"), max_length=16, choices=GPUHealth.choices, default=GPUHealth.OK, db_index=True
    )
    # Latest heartbeat figures; NULL before the first heartbeat and for a figure the GPU or its
    # driver cannot give (unknown, never 0).
    utilization = models.FloatField(_("utilisation %"), null=True, blank=True)
    memory_used = models.BigIntegerField(_("memory used"), null=True, blank=True)
    temperature = models.FloatField(_("temperature °C"), null=True, blank=True)
    power_draw = models.FloatField(_("power W"), null=True, blank=True)
    power_limit = models.FloatField(_("power limit W"), null=True, blank=True)
    ecc_errors = models.BigIntegerField(_("ECC errors"), null=True, blank=True)

    class Meta:
        verbose_name = _("GPU")
        verbose_name_plural = _("GPUs")
        ordering = ["host__name", "index"]

    def __str__(self):
        return f"{self.host.name}#{self.index} {self.model}"


class HostGPUModel(models.Model):
    """How many healthy GPUs of one model a host has, kept by a database trigger on the GPU
    table (migration 0009): placement reads one small row per host instead of counting every
    GPU of the fleet. Heartbeats update figures only, which does not fire the trigger."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="gpu_counts")
    model = models.CharField(_("model"), max_length=100)
    healthy = models.IntegerField(_("healthy GPUs"), default=0)

    class Meta:
        verbose_name = _("host GPU count")
        verbose_name_plural = _("host GPU counts")
        constraints = [
            models.UniqueConstraint(fields=["host", "model"], name="unique_host_gpu_model"),
        ]

    def __str__(self):
        return f"{self.host_id}: {self.healthy} × {self.model}"


class JoinToken(TimeStampedModel):
    """Lets agents join. Only a digest is stored; the operator sees the token once."""

    name = models.CharField(_("name"), max_length=100)
    key = models.CharField(_("key"), max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    region = models.ForeignKey(
        Region,
        verbose_name=_("region"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    labels = models.JSONField(_("labels to apply"), default=dict, blank=True)
    expires_at = models.DateTimeField(_("expires"))
    max_uses = models.PositiveIntegerField(_("maximum uses"), default=1)
    uses = models.PositiveIntegerField(_("uses"), default=0)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )

    class Meta:
        verbose_name = _("join token")
        verbose_name_plural = _("join tokens")
        ordering = ["-created_at"]

    def __str__(self):
        return self.name

    @property
    def is_usable(self) -> bool:
        return (
            self.revoked_at is None
            and self.uses < self.max_uses
            and self.expires_at > timezone.now()
        )


class HostCredential(TimeStampedModel):
    """The per-host secret an agent authenticates with: ``rhc_<key>_<secret>``, digest only."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="credentials")
    key = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    join_token = models.ForeignKey(
        JoinToken, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_used_at = models.DateTimeField(_("last used"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked"), null=True, blank=True)

    class Meta:
        verbose_name = _("host credential")
        verbose_name_plural = _("host credentials")
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.host} (rhc_{self.key}_…)"


class AgentCommand(TimeStampedModel):
    """A durable command: a row first, then a message; resent until acknowledged."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="commands")
    kind = models.CharField(_("kind"), max_length=40, choices=CommandKind.choices)
    payload = models.JSONField(_("payload"), default=dict, blank=True)
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=CommandStatus.choices,
        default=CommandStatus.PENDING,
        db_index=True,
    )
    deadline = models.DateTimeField(_("deadline"))
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    sent_at = models.DateTimeField(_("sent"), null=True, blank=True)
    acked_at = models.DateTimeField(_("acknowledged"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    result = models.JSONField(_("result"), default=dict, blank=True)
    error = models.TextField(_("error"), blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        verbose_name = _("agent command")
        verbose_name_plural = _("agent commands")
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["host", "status"])]

    def __str__(self):
        return f"{self.kind} → {self.host_id} ({self.status})"

    @property
    def is_open(self) -> bool:
        """Not finished yet: pending, sent or acknowledged."""
        return self.status in OPEN_COMMAND_STATES


class HostFigures(models.Model):
    """A host's figures at (or averaged over) ``time``; raw samples and rollups share them."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="+")
    time = models.DateTimeField(db_index=True)
    cpu_percent = models.FloatField()
    memory_used = models.BigIntegerField()
    memory_total = models.BigIntegerField()
    disk_used = models.BigIntegerField()
    disk_total = models.BigIntegerField()
    load1 = models.FloatField(default=0)

    class Meta:
        abstract = True

    def __str__(self):
        return f"{self.host_id} @ {self.time:%Y-%m-%d %H:%M:%S}"


class GPUFigures(models.Model):
    """One GPU's figures at (or averaged over) ``time``. NULL: a figure the GPU or its driver
    cannot give (no temperature sensor, power on some boards, ECC on consumer cards)."""

    gpu = models.ForeignKey(GPU, on_delete=models.CASCADE, related_name="+")
    time = models.DateTimeField(db_index=True)
    utilization = models.FloatField(null=True)
    memory_used = models.BigIntegerField()
    temperature = models.FloatField(null=True)
    power_draw = models.FloatField(null=True)
    ecc_errors = models.BigIntegerField(null=True)

    class Meta:
        abstract = True

    def __str__(self):
        return f"{self.gpu_id} @ {self.time:%Y-%m-%d %H:%M:%S}"


class HostSample(HostFigures):
    """One heartbeat's host figures, kept raw for ``METRIC_RAW_RETENTION_HOURS``; ``time`` is
    the agent's clock."""

    class Meta:
        verbose_name = _("host sample")
        verbose_name_plural = _("host samples")
        constraints = [
            models.UniqueConstraint(fields=["host", "time"], name="unique_host_sample"),
        ]


class GPUSample(GPUFigures):
    """One heartbeat's figures for one GPU."""

    class Meta:
        verbose_name = _("GPU sample")
        verbose_name_plural = _("GPU samples")
        constraints = [
            models.UniqueConstraint(fields=["gpu", "time"], name="unique_gpu_sample"),
        ]


class HostSampleRollup(HostFigures):
    """Host figures averaged over 5-minute buckets, kept for weeks (raw samples are not)."""

    class Meta:
        verbose_name = _("host sample rollup")
        verbose_name_plural = _("host sample rollups")
        constraints = [
            models.UniqueConstraint(fields=["host", "time"], name="unique_host_rollup"),
        ]


class GPUSampleRollup(GPUFigures):
    """GPU figures averaged over 5-minute buckets (ECC errors: the bucket's maximum)."""

    class Meta:
        verbose_name = _("GPU sample rollup")
        verbose_name_plural = _("GPU sample rollups")
        constraints = [
            models.UniqueConstraint(fields=["gpu", "time"], name="unique_gpu_rollup"),
        ]


# The rules every fleet starts with (migration 0004) are stored under English names; pages and
# notifications show them in the reader's language for as long as nobody renames them.
DEFAULT_ALERT_RULE_LABELS = {
    "GPU temperature above 85 °C": _("GPU temperature above 85 °C"),
    "GPU memory above 95 %": _("GPU memory above 95 %"),
    "Disk above 90 %": _("Disk above 90 %"),
    "Host offline": _("Host offline"),
}


class AlertRule(TimeStampedModel):
    """When ``metric`` compared with ``threshold`` holds for ``for_duration`` seconds: alert."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    metric = models.CharField(_("metric"), max_length=32, choices=AlertMetric.choices)
    comparison = models.CharField(
        _("comparison"), max_length=4, choices=Comparison.choices, default=Comparison.GT
    )
    threshold = models.FloatField(_("threshold"), default=0)
    for_duration = models.PositiveIntegerField(_("for (seconds)"), default=0)
    severity = models.CharField(
        _("severity"), max_length=16, choices=Severity.choices, default=Severity.WARNING
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    notify_email = models.BooleanField(_("e-mail operators"), default=True)
    webhook_url = models.URLField(_("webhook URL"), blank=True)
    webhook_secret = models.CharField(
        _("webhook secret"),
        max_length=200,
        blank=True,
        help_text=_("Payloads are signed with HMAC-SHA256 of this secret."),
    )

    class Meta:
        verbose_name = _("alert rule")
        verbose_name_plural = _("alert rules")
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def label(self) -> str:
        """The name to show: a default rule's in the active language, any other as stored."""
        return str(DEFAULT_ALERT_RULE_LABELS.get(self.name, self.name))


class Alert(TimeStampedModel):
    """One rule's condition on one host (or GPU): pending → firing → acknowledged → resolved."""

    rule = models.ForeignKey(
        AlertRule, verbose_name=_("rule"), on_delete=models.CASCADE, related_name="alerts"
    )
    host = models.ForeignKey(
        Host, verbose_name=_("host"), on_delete=models.CASCADE, related_name="alerts"
    )
    gpu = models.ForeignKey(
        GPU,
        verbose_name=_("GPU"),
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="alerts",
    )
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=AlertStatus.choices,
        default=AlertStatus.PENDING,
        db_index=True,
    )
    severity = models.CharField(_("severity"), max_length=16, choices=Severity.choices)
    value = models.FloatField(_("value"), null=True, blank=True)
    message = models.CharField(_("message"), max_length=300, blank=True)
    since = models.DateTimeField(_("condition since"))
    fired_at = models.DateTimeField(_("fired"), null=True, blank=True)
    acknowledged_at = models.DateTimeField(_("acknowledged"), null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    resolved_at = models.DateTimeField(_("resolved"), null=True, blank=True)

    class Meta:
        verbose_name = _("alert")
        verbose_name_plural = _("alerts")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "host", "gpu"],
                condition=models.Q(status__in=["pending", "firing", "acknowledged"]),
                nulls_distinct=False,
                name="one_open_alert_per_target",
            ),
        ]

    def __str__(self):
        return f"{self.rule} on {self.gpu or self.host} ({self.status})"


class OnboardingJob(TimeStampedModel):
    """Bringing a server in over SSH: connect, confirm its host key, install, join, start."""

    name = models.CharField(_("host name"), max_length=100)
    address = models.CharField(_("address"), max_length=255)
    port = models.PositiveIntegerField(_("SSH port"), default=22)
    username = models.CharField(_("user"), max_length=100)
    auth_method = models.CharField(
        _("authentication"), max_length=16, choices=OnboardingAuth.choices
    )
    # The password or private key, encrypted with a key derived from SECRET_KEY; wiped when
    # the job ends.
    secret_encrypted = models.TextField(blank=True, editable=False)
    region = models.ForeignKey(
        Region, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    labels = models.JSONField(_("labels"), default=dict, blank=True)
    host_key_type = models.CharField(_("host key type"), max_length=40, blank=True)
    host_key_fingerprint = models.CharField(_("host key fingerprint"), max_length=100, blank=True)
    host_key_confirmed = models.BooleanField(_("host key confirmed"), default=False)
    status = models.CharField(
        _("status"),
        max_length=24,
        choices=OnboardingStatus.choices,
        default=OnboardingStatus.PENDING,
        db_index=True,
    )
    step = models.CharField(_("current step"), max_length=40, blank=True)
    steps = models.JSONField(_("steps"), default=list, blank=True)
    error = models.TextField(_("error"), blank=True)
    host = models.ForeignKey(
        Host, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)

    class Meta:
        verbose_name = _("onboarding job")
        verbose_name_plural = _("onboarding jobs")
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.username}@{self.address}:{self.port} → {self.name}"


class HostAsRange(models.Func):
    """``int8range(host_id, host_id, '[]')``: the host as a range, so that the allocations'
    exclusion constraint needs only GiST's built-in range operators (no btree_gist)."""

    function = "int8range"
    output_field = BigIntegerRangeField()

    def __init__(self, field: str):
        super().__init__(models.F(field), models.F(field), models.Value("[]"))


class TimeRange(models.Func):
    """``tstzrange(starts_at, ends_at)``: half-open, so one lease may end when the next starts."""

    function = "tstzrange"
    output_field = DateTimeRangeField()


class Allocation(TimeStampedModel):
    """A whole host lent to one organisation from ``starts_at`` to ``ends_at``.

    ``scheduled -> provisioning`` (the agent creates the tenant's Unix account) ``-> active ->
    reclaiming`` (the agent removes the organisation's containers, volumes, processes, account
    and files, and checks that nothing is left) ``-> reclaimed``; ``failed`` when the agent could
    not do it or found leftovers (``reclaim_report`` says which). While open, an allocation
    holds its host for its time range: the database refuses an overlapping one."""

    host = models.ForeignKey(
        Host, verbose_name=_("host"), on_delete=models.PROTECT, related_name="allocations"
    )
    organization = models.ForeignKey(
        "accounts.Organization",
        verbose_name=_("organisation"),
        on_delete=models.PROTECT,
        related_name="allocations",
    )
    starts_at = models.DateTimeField(_("starts"))
    ends_at = models.DateTimeField(_("ends"))
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=AllocationStatus.choices,
        default=AllocationStatus.SCHEDULED,
        db_index=True,
    )
    status_message = models.CharField(_("status message"), max_length=500, blank=True)
    # The tenant's Unix account on the host (``rgt<id>``), fixed when the allocation is made.
    tenant_user = models.CharField(_("tenant user"), max_length=32, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    activated_at = models.DateTimeField(_("activated"), null=True, blank=True)
    warned_24h_at = models.DateTimeField(_("warned a day before"), null=True, blank=True)
    warned_1h_at = models.DateTimeField(_("warned an hour before"), null=True, blank=True)
    reclaim_reason = models.CharField(_("reclaim reason"), max_length=200, blank=True)
    reclaim_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("reclaim requested by"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    reclaim_requested_at = models.DateTimeField(_("reclaim requested"), null=True, blank=True)
    reclaim_report = models.JSONField(_("reclaim report"), default=dict, blank=True)
    reclaimed_at = models.DateTimeField(_("reclaimed"), null=True, blank=True)
    # The agent command whose outcome moves the allocation on; older commands' late results
    # change nothing.
    last_command = models.ForeignKey(
        AgentCommand,
        verbose_name=_("last command"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        verbose_name = _("allocation")
        verbose_name_plural = _("allocations")
        ordering = ["-starts_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(ends_at__gt=models.F("starts_at")),
                name="allocation_ends_after_start",
            ),
            models.UniqueConstraint(
                fields=["tenant_user"],
                condition=~models.Q(tenant_user=""),
                name="unique_allocation_tenant_user",
            ),
            ExclusionConstraint(
                name="allocation_no_overlap_per_host",
                expressions=[
                    (HostAsRange("host"), RangeOperators.OVERLAPS),
                    (TimeRange("starts_at", "ends_at"), RangeOperators.OVERLAPS),
                ],
                condition=models.Q(status__in=sorted(OPEN_ALLOCATION_STATES)),
            ),
        ]
        indexes = [models.Index(fields=["status", "ends_at"])]

    def __str__(self):
        return f"{self.host} → {self.organization} ({self.status})"

    @property
    def is_open(self) -> bool:
        """Holding its host: scheduled, provisioning, active or reclaiming."""
        return self.status in OPEN_ALLOCATION_STATES
