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
