from django.db import models
from django.utils.translation import gettext_lazy as _


class EnvironmentStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    SCHEDULED = "scheduled", _("Scheduled")
    PROVISIONING = "provisioning", _("Provisioning")
    RUNNING = "running", _("Running")
    STOPPING = "stopping", _("Stopping")
    STOPPED = "stopped", _("Stopped")
    STARTING = "starting", _("Starting")
    DELETING = "deleting", _("Deleting")
    DELETED = "deleted", _("Deleted")
    FAILED = "failed", _("Failed")


class StatusReason(models.TextChoices):
    """Why an environment is where it is (``failed``, ``stopped``, ``pending``)."""

    USER = "user", _("By its user")
    OPERATOR = "operator", _("By an operator")
    NO_CAPACITY = "no_capacity", _("No capacity")
    WAITING_FOR_GPUS = "waiting_for_gpus", _("Waiting for its GPUs")
    IMAGE_PULL_FAILED = "image_pull_failed", _("The image could not be pulled")
    PROVISION_FAILED = "provision_failed", _("The container could not be started")
    PROVISION_TIMEOUT = "provision_timeout", _("Provisioning took too long")
    LOST = "lost", _("Its container disappeared")
    HOST_LOST = "host_lost", _("Its host is gone")
    RECLAIMED = "reclaimed", _("Its whole-machine allocation was reclaimed")
    EXITED = "exited", _("Its container exited")
    QUOTA = "quota", _("Over quota")
    OUT_OF_BALANCE = "out_of_balance", _("Out of balance")
    IDLE = "idle", _("Idle")
    SCHEDULED = "scheduled", _("Its auto-stop time came")


class PortRole(models.TextChoices):
    SSH = "ssh", _("SSH")
    JUPYTER = "jupyter", _("Jupyter")
    HTTP = "http", _("HTTP")
    TCP = "tcp", _("TCP")


class PlacementStrategy(models.TextChoices):
    BINPACK = "binpack", _("Binpack (fill busy hosts first)")
    SPREAD = "spread", _("Spread (prefer idle hosts)")


# States in which an environment holds a host's CPU and memory (and its GPUs, if it has any).
ACTIVE_STATES = frozenset(
    {
        EnvironmentStatus.SCHEDULED,
        EnvironmentStatus.PROVISIONING,
        EnvironmentStatus.RUNNING,
        EnvironmentStatus.STARTING,
        EnvironmentStatus.STOPPING,
    }
)
# States in which the environment's container should exist on its host.
CONTAINER_STATES = ACTIVE_STATES | {EnvironmentStatus.DELETING}
TERMINAL_STATES = frozenset({EnvironmentStatus.DELETED})
