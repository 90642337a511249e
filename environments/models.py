from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization, SSHKey
from machines.models import GPU, Host, Region
from remotegpu.core.models import TimeStampedModel

from .choices import EnvironmentStatus, PlacementStrategy, PortRole, StatusReason

GIB = 1024**3


class Image(TimeStampedModel):
    """A container image customers may choose: public, or private to one organisation."""

    name = models.CharField(_("name"), max_length=100)
    reference = models.CharField(
        _("reference"),
        max_length=300,
        help_text=_("What Docker pulls, e.g. registry.example.com/team/pytorch:2.4-cuda12.4."),
    )
    description = models.TextField(_("description"), blank=True)
    framework = models.CharField(_("framework"), max_length=100, blank=True)
    cuda_version = models.CharField(_("CUDA version"), max_length=20, blank=True)
    command = models.JSONField(
        _("default command"),
        default=list,
        blank=True,
        help_text=_("Arguments, as a list; empty runs the image's own command."),
    )
    env = models.JSONField(_("environment variables"), default=dict, blank=True)
    # [{"port": 22, "role": "ssh", "name": "SSH"}]
    ports = models.JSONField(_("ports"), default=list, blank=True)
    organization = models.ForeignKey(
        Organization,
        verbose_name=_("organisation"),
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="images",
        help_text=_("Empty: every organisation may use it."),
    )
    is_active = models.BooleanField(_("offered"), default=True)

    class Meta:
        verbose_name = _("image")
        verbose_name_plural = _("images")
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["name", "organization"], nulls_distinct=False, name="unique_image_name"
            ),
        ]

    def __str__(self):
        return self.name

    @property
    def is_public(self) -> bool:
        return self.organization_id is None


class RegistryCredential(TimeStampedModel):
    """A login for a private registry; the password is stored encrypted and never shown."""

    registry = models.CharField(
        _("registry"),
        max_length=255,
        unique=True,
        help_text=_("Host and port as image references name it, e.g. registry.example.com:5000."),
    )
    username = models.CharField(_("user name"), max_length=200)
    password_encrypted = models.TextField(editable=False)

    class Meta:
        verbose_name = _("registry credential")
        verbose_name_plural = _("registry credentials")
        ordering = ["registry"]

    def __str__(self):
        return f"{self.username}@{self.registry}"


class Spec(TimeStampedModel):
    """What an environment gets: GPUs of one model, vCPUs, memory and disk."""

    name = models.CharField(_("name"), max_length=100, unique=True)
    description = models.CharField(_("description"), max_length=300, blank=True)
    gpu_model = models.CharField(
        _("GPU model"),
        max_length=100,
        blank=True,
        help_text=_("As the hosts report it, e.g. NVIDIA H100 80GB HBM3; empty for CPU only."),
    )
    gpu_count = models.PositiveSmallIntegerField(
        _("GPUs"), default=1, validators=[MaxValueValidator(64)]
    )
    vcpu = models.PositiveSmallIntegerField(
        _("vCPUs"), default=4, validators=[MinValueValidator(1), MaxValueValidator(1024)]
    )
    memory_gib = models.PositiveIntegerField(
        _("memory (GiB)"), default=16, validators=[MinValueValidator(1)]
    )
    disk_gib = models.PositiveIntegerField(_("disk (GiB)"), default=50)
    regions = models.ManyToManyField(
        Region,
        verbose_name=_("regions"),
        blank=True,
        related_name="specs",
        help_text=_("Where it is offered; none: every region."),
    )
    host_labels = models.JSONField(
        _("host labels"),
        default=dict,
        blank=True,
        help_text=_("Only hosts carrying all these labels take it."),
    )
    is_active = models.BooleanField(_("offered"), default=True)

    class Meta:
        verbose_name = _("spec")
        verbose_name_plural = _("specs")
        ordering = ["gpu_count", "name"]

    def __str__(self):
        return self.name

    @property
    def memory_bytes(self) -> int:
        return self.memory_gib * GIB

    @property
    def is_cpu_only(self) -> bool:
        return self.gpu_count == 0


class Environment(TimeStampedModel):
    """A container on one host with its GPUs, ports and a ``/workspace`` volume."""

    organization = models.ForeignKey(
        Organization,
        verbose_name=_("organisation"),
        on_delete=models.CASCADE,
        related_name="environments",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    name = models.CharField(_("name"), max_length=63)
    spec = models.ForeignKey(
        Spec, verbose_name=_("spec"), on_delete=models.PROTECT, related_name="environments"
    )
    image = models.ForeignKey(
        Image,
        verbose_name=_("image"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="environments",
    )
    image_reference = models.CharField(_("image reference"), max_length=300)
    command = models.JSONField(_("command"), default=list, blank=True)
    env = models.JSONField(_("environment variables"), default=dict, blank=True)
    ssh_keys = models.ManyToManyField(
        SSHKey, verbose_name=_("SSH keys"), blank=True, related_name="environments"
    )
    region = models.ForeignKey(
        Region,
        verbose_name=_("region"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="environments",
    )
    strategy = models.CharField(
        _("placement"),
        max_length=10,
        choices=PlacementStrategy.choices,
        default=PlacementStrategy.BINPACK,
    )
    host = models.ForeignKey(
        Host,
        verbose_name=_("host"),
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="environments",
    )
    status = models.CharField(
        _("status"),
        max_length=16,
        choices=EnvironmentStatus.choices,
        default=EnvironmentStatus.PENDING,
        db_index=True,
    )
    status_reason = models.CharField(
        _("reason"), max_length=24, choices=StatusReason.choices, blank=True
    )
    status_message = models.CharField(_("status message"), max_length=500, blank=True)
    status_changed_at = models.DateTimeField(_("status changed"), default=timezone.now)
    without_gpu = models.BooleanField(
        _("without GPU"), default=False, help_text=_("Runs on CPU only, with the same volume.")
    )
    container_id = models.CharField(_("container"), max_length=64, blank=True)
    # Docker's state of the container in the host's latest inventory, and since when.
    container_state = models.CharField(_("container state"), max_length=20, blank=True)
    container_state_since = models.DateTimeField(null=True, blank=True)
    # The agent's clock when the container last ran: an inventory listed before that moment
    # says nothing about this container.
    agent_ran_at = models.FloatField(null=True, blank=True, editable=False)
    # The command in flight for it; an outcome of an older command changes nothing.
    last_command = models.ForeignKey(
        "machines.AgentCommand", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    deadline = models.DateTimeField(_("deadline"), null=True, blank=True)
    # The latest pull progress (layers, bytes) while provisioning; cleared once it runs.
    progress = models.JSONField(_("progress"), default=dict, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    stopped_at = models.DateTimeField(_("stopped"), null=True, blank=True)
    deleted_at = models.DateTimeField(_("deleted"), null=True, blank=True)
    # Auto-stop (AutoDL's 定时关机): once at ``stop_at``, and after ``max_runtime_minutes`` of
    # each run; the owner is warned once per deadline (``auto_stop_warned_for``).
    stop_at = models.DateTimeField(_("stop at"), null=True, blank=True)
    max_runtime_minutes = models.PositiveIntegerField(
        _("maximum run time (minutes)"), null=True, blank=True
    )
    # Idle auto-stop: its GPUs under ``idle_gpu_percent`` and no session for this long.
    idle_stop_minutes = models.PositiveIntegerField(
        _("idle stop after (minutes)"), null=True, blank=True
    )
    idle_gpu_percent = models.PositiveSmallIntegerField(
        _("idle below GPU utilisation %"),
        default=5,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
    )
    auto_stop_warned_for = models.DateTimeField(null=True, blank=True, editable=False)
    # The JupyterLab token of an image that publishes a Jupyter port, sealed (services.jupyter).
    jupyter_token_sealed = models.TextField(blank=True, editable=False)

    class Meta:
        verbose_name = _("environment")
        verbose_name_plural = _("environments")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "name"],
                condition=~Q(status=EnvironmentStatus.DELETED),
                name="unique_live_environment_name",
            ),
        ]
        indexes = [models.Index(fields=["host", "status"])]

    def __str__(self):
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("environments:environment_detail", args=[self.pk])

    @property
    def auto_stop_at(self):
        """When auto-stop stops this run: the earlier of its stop time (one set before this run
        started does not count) and its start plus the maximum run time; None when neither."""
        if self.status != EnvironmentStatus.RUNNING or self.started_at is None:
            return None
        times = []
        if self.stop_at is not None and self.stop_at > self.started_at:
            times.append(self.stop_at)
        if self.max_runtime_minutes:
            times.append(self.started_at + timedelta(minutes=self.max_runtime_minutes))
        return min(times, default=None)

    @property
    def gpu_count(self) -> int:
        return 0 if self.without_gpu else self.spec.gpu_count


class GPUAssignment(models.Model):
    """An environment holds a GPU. At most one open assignment per GPU, enforced by the
    database: double-booking is impossible, whatever the scheduler does."""

    environment = models.ForeignKey(
        Environment, on_delete=models.CASCADE, related_name="gpu_assignments"
    )
    gpu = models.ForeignKey(GPU, on_delete=models.CASCADE, related_name="assignments")
    created_at = models.DateTimeField(default=timezone.now)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("GPU assignment")
        verbose_name_plural = _("GPU assignments")
        constraints = [
            models.UniqueConstraint(
                fields=["gpu"],
                condition=Q(released_at__isnull=True),
                name="one_open_assignment_per_gpu",
            ),
        ]

    def __str__(self):
        return f"{self.gpu_id} → {self.environment_id}"


class PortAllocation(models.Model):
    """A host port published for one of the environment's container ports; unique per host,
    released when the environment is deleted."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="ports")
    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="port_allocations")
    host_port = models.PositiveIntegerField(_("host port"))
    container_port = models.PositiveIntegerField(
        _("container port"), validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    role = models.CharField(_("role"), max_length=10, choices=PortRole.choices)
    name = models.CharField(_("name"), max_length=50, blank=True)

    class Meta:
        verbose_name = _("port allocation")
        verbose_name_plural = _("port allocations")
        ordering = ["container_port"]
        constraints = [
            models.UniqueConstraint(fields=["host", "host_port"], name="unique_host_port"),
            models.UniqueConstraint(
                fields=["environment", "container_port"], name="unique_environment_port"
            ),
        ]

    def __str__(self):
        return f"{self.host_id}:{self.host_port} → {self.container_port}"


class EnvironmentEvent(models.Model):
    """The system log: what happened to the environment and why (scheduled, pulling, started,
    stopped, failed)."""

    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="events")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    status = models.CharField(_("status"), max_length=16, choices=EnvironmentStatus.choices)
    message = models.CharField(_("message"), max_length=500)
    details = models.JSONField(_("details"), default=dict, blank=True)

    class Meta:
        verbose_name = _("environment event")
        verbose_name_plural = _("environment events")
        ordering = ["created_at", "pk"]

    def __str__(self):
        return f"{self.environment_id} {self.status}: {self.message}"


class OrphanContainer(models.Model):
    """A labelled container on a host that no live environment owns; removed after a grace
    period (it may be a create the database has not caught up with)."""

    host = models.ForeignKey(Host, on_delete=models.CASCADE, related_name="+")
    container_id = models.CharField(max_length=64)
    environment_label = models.CharField(max_length=64, blank=True)
    first_seen_at = models.DateTimeField(default=timezone.now)
    removal_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = _("orphan container")
        verbose_name_plural = _("orphan containers")
        constraints = [
            models.UniqueConstraint(fields=["host", "container_id"], name="unique_orphan"),
        ]

    def __str__(self):
        return f"{self.host_id}:{self.container_id[:12]}"
