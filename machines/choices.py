from django.db import models
from django.utils.translation import gettext_lazy as _


class HostStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    ONLINE = "online", _("Online")
    OFFLINE = "offline", _("Offline")
    MAINTENANCE = "maintenance", _("Maintenance")
    DRAINING = "draining", _("Draining")
    RETIRED = "retired", _("Retired")


# Operator-set states: the agent's comings and goings do not change them.
OPERATOR_STATES = frozenset({HostStatus.MAINTENANCE, HostStatus.DRAINING, HostStatus.RETIRED})


class GPUHealth(models.TextChoices):
    OK = "ok", _("Healthy")
    DEGRADED = "degraded", _("Degraded")
    LOST = "lost", _("Lost")


class CommandStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SENT = "sent", _("Sent")
    ACKED = "acked", _("Acknowledged")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")


OPEN_COMMAND_STATES = frozenset({CommandStatus.PENDING, CommandStatus.SENT, CommandStatus.ACKED})


class CommandKind(models.TextChoices):
    PING = "ping", _("Ping")
    COLLECT_DIAGNOSTICS = "collect_diagnostics", _("Collect diagnostics")
    IMAGE_PULL = "image_pull", _("Pull an image")
    ENVIRONMENT_RUN = "environment_run", _("Run an environment")
    ENVIRONMENT_STOP = "environment_stop", _("Stop an environment")
    ENVIRONMENT_RESTART = "environment_restart", _("Restart an environment")
    ENVIRONMENT_DELETE = "environment_delete", _("Delete an environment")
    ENVIRONMENT_LOGS = "environment_logs", _("Read an environment's logs")
    CONTAINER_REMOVE = "container_remove", _("Remove a container")
    TENANT_CREATE = "tenant_create", _("Create a tenant account")
    TENANT_RECLAIM = "tenant_reclaim", _("Reclaim a tenant's account and files")


# Reads whose rows are worth nothing once answered (a page following an environment's output
# asks every two seconds): kept an hour, not the 30 days of the others.
EPHEMERAL_COMMAND_KINDS = frozenset({CommandKind.PING, CommandKind.ENVIRONMENT_LOGS})


class AlertMetric(models.TextChoices):
    GPU_TEMPERATURE = "gpu_temperature", _("GPU temperature (°C)")
    GPU_MEMORY_PERCENT = "gpu_memory_percent", _("GPU memory used (%)")
    GPU_UTILIZATION = "gpu_utilization", _("GPU utilisation (%)")
    GPU_ECC_ERRORS = "gpu_ecc_errors", _("GPU ECC errors")
    CPU_PERCENT = "cpu_percent", _("CPU used (%)")
    MEMORY_PERCENT = "memory_percent", _("Memory used (%)")
    DISK_PERCENT = "disk_percent", _("Disk used (%)")
    HOST_OFFLINE = "host_offline", _("Host offline")


# Metrics evaluated per GPU; the others per host.
GPU_METRICS = frozenset(
    {
        AlertMetric.GPU_TEMPERATURE,
        AlertMetric.GPU_MEMORY_PERCENT,
        AlertMetric.GPU_UTILIZATION,
        AlertMetric.GPU_ECC_ERRORS,
    }
)


class Comparison(models.TextChoices):
    GT = "gt", ">"
    GTE = "gte", "≥"
    LT = "lt", "<"
    LTE = "lte", "≤"


class Severity(models.TextChoices):
    INFO = "info", _("Info")
    WARNING = "warning", _("Warning")
    CRITICAL = "critical", _("Critical")


class AlertStatus(models.TextChoices):
    PENDING = "pending", _("Pending")  # condition holds, for-duration not yet over
    FIRING = "firing", _("Firing")
    ACKNOWLEDGED = "acknowledged", _("Acknowledged")
    RESOLVED = "resolved", _("Resolved")


OPEN_ALERT_STATES = frozenset({AlertStatus.PENDING, AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED})


class OnboardingStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    AWAITING_CONFIRMATION = "awaiting_confirmation", _("Awaiting host key confirmation")
    RUNNING = "running", _("Running")
    SUCCEEDED = "succeeded", _("Succeeded")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")


class OnboardingAuth(models.TextChoices):
    PASSWORD = "password", _("Password")
    PRIVATE_KEY = "private_key", _("Private key")


class AllocationStatus(models.TextChoices):
    SCHEDULED = "scheduled", _("Scheduled")
    PROVISIONING = "provisioning", _("Provisioning")
    ACTIVE = "active", _("Active")
    RECLAIMING = "reclaiming", _("Reclaiming")
    RECLAIMED = "reclaimed", _("Reclaimed")
    FAILED = "failed", _("Failed")


# An allocation in one of these holds its host for its time range: no other may overlap it.
OPEN_ALLOCATION_STATES = frozenset(
    {
        AllocationStatus.SCHEDULED,
        AllocationStatus.PROVISIONING,
        AllocationStatus.ACTIVE,
        AllocationStatus.RECLAIMING,
    }
)
# The tenant organisation's environments may be placed on the host in these.
TENANT_PLACEMENT_STATES = frozenset({AllocationStatus.PROVISIONING, AllocationStatus.ACTIVE})
