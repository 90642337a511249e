"""Host lifecycle: connection, inventory, operator states, labels, offline detection."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import (
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    Q,
    Value,
)
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _
from remotegpu_agent import protocol

from accounts.choices import AuditAction
from accounts.models import User
from accounts.services.audit import audit_record
from accounts.services.ssh_keys import ssh_key_parse
from accounts.services.users import user_require_operator
from remotegpu.core.errors import ValidationError

from ..choices import OPERATOR_STATES, GPUHealth, HostStatus
from ..models import GPU, Host

logger = logging.getLogger(__name__)

LABEL_KEY = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9._/-]{0,62}[a-zA-Z0-9])?$")
OFFLINE_AFTER_MISSED_HEARTBEATS = 3


def _not_a_label(item: str) -> ValidationError:
    return ValidationError.for_field(
        "labels", _("“%(item)s” is not a key=value label.") % {"item": item[:60]}
    )


def _label(key: str, value: str, item: str) -> tuple[str, str]:
    key, value = key.strip(), value.strip()
    # A value may not hold the separators of the text form, so labels edit back as they show.
    # No control characters either (PostgreSQL refuses NUL in text and JSON).
    if (
        not LABEL_KEY.match(key)
        or len(value) > 100
        or any(c in ",\n" or not c.isprintable() for c in value)
    ):
        raise _not_a_label(item)
    return key, value


def labels_parse(text: str) -> dict[str, str]:
    """``"gpu=a100, zone=b"`` → ``{"gpu": "a100", "zone": "b"}``; a field error when malformed."""
    labels: dict[str, str] = {}
    for item in re.split(r"[,\n]", text or ""):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise _not_a_label(item)
        key, value = _label(key, value, item)
        labels[key] = value
    return labels


def labels_validate(labels) -> dict[str, str]:
    """The object form of labels, checked key by key with the rules of ``labels_parse``."""
    if not isinstance(labels, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in labels.items()
    ):
        raise ValidationError.for_field("labels", _("Labels must be an object of strings."))
    return dict(_label(key, value, f"{key}={value}") for key, value in labels.items())


# Agent connection --------------------------------------------------------------------------


def host_connected(host: Host, connection: str) -> None:
    """The agent's socket ``connection`` is up: online again unless an operator state holds."""
    now = timezone.now()
    Host.objects.filter(pk=host.pk).update(
        connected=True, agent_connection=connection, last_seen_at=now
    )
    Host.objects.filter(pk=host.pk, status__in=[HostStatus.PENDING, HostStatus.OFFLINE]).update(
        status=HostStatus.ONLINE, status_reason="", status_changed_at=now
    )


def host_disconnected(host_id: int, connection: str = "") -> None:
    """The socket ``connection`` closed. The host stays online until heartbeats are missed (a
    reconnect is usually seconds away); offline detection decides. When the agent already has
    a newer socket, the old one's late goodbye changes nothing."""
    queryset = Host.objects.filter(pk=host_id)
    if connection:
        queryset = queryset.filter(agent_connection=connection)
    queryset.update(connected=False)


# What the columns hold (PositiveIntegerField, PositiveSmallIntegerField); the protocol already
# keeps every integer within 64 bits.
MAX_CPU_CORES = 2**31 - 1
MAX_GPU_INDEX = 2**15 - 1


def _check_range(name: str, value: int, maximum: int = 2**63 - 1) -> None:
    if not 0 <= value <= maximum:
        raise protocol.ProtocolError(f"inventory.{name}: {value} is out of range")


def _gateway_fields(inventory) -> dict:
    """The SSH gateway's port and host key, with the key's fingerprint (``ssh-keygen -l``)."""
    if not 0 <= inventory.ssh_port <= 65535:
        raise protocol.ProtocolError(f"inventory.ssh_port: {inventory.ssh_port} is out of range")
    if not inventory.ssh_port or not inventory.ssh_host_key:
        return {"ssh_port": 0, "ssh_host_key": "", "ssh_host_key_fingerprint": ""}
    try:
        parsed = ssh_key_parse(inventory.ssh_host_key[:1000])
    except ValidationError as exc:
        raise protocol.ProtocolError(f"inventory.ssh_host_key: {exc.message}") from exc
    return {
        "ssh_port": inventory.ssh_port,
        "ssh_host_key": parsed.openssh,
        "ssh_host_key_fingerprint": parsed.fingerprint,
    }


@transaction.atomic
def host_apply_inventory(host: Host, inventory) -> None:
    """Store what the agent says the host is, and its GPUs by UUID; GPUs gone are marked lost.
    One transaction with its listeners: an environment marked lost and its GPUs released are
    seen together or not at all.

    Figures no column can hold are refused whole (``ProtocolError``), before anything is
    written."""
    facts = inventory.facts
    _check_range("facts.cpu_cores", facts.cpu_cores, MAX_CPU_CORES)
    _check_range("facts.memory_total", facts.memory_total)
    _check_range("facts.disk_total", facts.disk_total)
    if not 0 <= facts.heartbeat_interval <= protocol.MAX_HEARTBEAT_INTERVAL:
        raise protocol.ProtocolError(
            f"inventory.facts.heartbeat_interval: {facts.heartbeat_interval} is out of range"
        )
    for info in inventory.gpus:
        _check_range("gpus.index", info.index, MAX_GPU_INDEX)
        _check_range("gpus.memory_total", info.memory_total)
    Host.objects.filter(pk=host.pk).update(
        hostname=facts.hostname[:255],
        cpu_model=facts.cpu_model[:200],
        cpu_cores=facts.cpu_cores,
        memory_total=facts.memory_total,
        disk_total=facts.disk_total,
        os=facts.os[:200],
        kernel=facts.kernel[:200],
        docker_version=facts.docker_version[:50],
        agent_version=facts.agent_version[:50],
        gpu_backend=facts.gpu_backend[:20],
        # 0 means an agent too old to say: offline detection falls back to the configured one.
        agent_heartbeat_interval=facts.heartbeat_interval or None,
        containers=[asdict(container) for container in inventory.containers],
        containers_known=inventory.containers_known,
        images=list(inventory.images),
        **_gateway_fields(inventory),
        last_seen_at=timezone.now(),
    )
    uuids = [info.uuid[:100] for info in inventory.gpus]
    # A GPU UUID is unique in the fleet: a host never takes over another live host's GPU row (a
    # stolen or buggy credential must not be able to move GPUs between hosts). A retired host's
    # GPUs move with the machine when it joins again as a new host.
    owners = dict(
        GPU.objects.filter(uuid__in=uuids).exclude(host=host).values_list("uuid", "host__status")
    )
    foreign = {uuid for uuid, status in owners.items() if status != HostStatus.RETIRED}
    if foreign:
        logger.warning("host %s claims GPUs of other hosts: %s", host.pk, sorted(foreign))
    if len(owners) > len(foreign):
        logger.info("host %s takes over GPUs of retired hosts", host.pk)
    seen = []
    for info in inventory.gpus:
        if info.uuid[:100] in foreign:
            continue
        GPU.objects.update_or_create(
            uuid=info.uuid[:100],
            defaults={
                "host": host,
                "index": info.index,
                "model": info.name[:100],
                "memory_total": info.memory_total,
                "driver_version": info.driver_version[:50],
                "cuda_version": info.cuda_version[:20],
                "compute_capability": info.compute_capability[:10],
                "health": GPUHealth.OK,
            },
        )
        seen.append(info.uuid[:100])
    GPU.objects.filter(host=host).exclude(uuid__in=seen).update(health=GPUHealth.LOST)
    for listener in _inventory_listeners:
        listener(host, inventory)


# Apps above this one (environments) learn of every inventory, and of a host's retirement,
# without this app importing them.
_inventory_listeners: list[Callable[[Host, protocol.Inventory], None]] = []
_retired_listeners: list[Callable[[Host], None]] = []


def inventory_listener(function: Callable[[Host, protocol.Inventory], None]):
    """Register ``function(host, inventory)``, called inside the inventory's transaction."""
    _inventory_listeners.append(function)
    return function


def host_retired_listener(function: Callable[[Host], None]):
    """Register ``function(host)``, called inside the transaction that retires ``host``."""
    _retired_listeners.append(function)
    return function


# Operator states ---------------------------------------------------------------------------

_ALLOWED = {
    HostStatus.MAINTENANCE: {
        HostStatus.PENDING,
        HostStatus.ONLINE,
        HostStatus.OFFLINE,
        HostStatus.DRAINING,
    },
    HostStatus.DRAINING: {HostStatus.ONLINE, HostStatus.OFFLINE, HostStatus.MAINTENANCE},
    HostStatus.RETIRED: {
        HostStatus.PENDING,
        HostStatus.ONLINE,
        HostStatus.OFFLINE,
        HostStatus.MAINTENANCE,
        HostStatus.DRAINING,
    },
}


@transaction.atomic
def host_set_status(*, operator: User, host: Host, status: str, reason: str = "") -> Host:
    """Maintenance, draining and retired stop new placements without touching what runs;
    ``online`` returns a host to service (it goes offline by itself if its agent is gone)."""
    user_require_operator(operator)
    host = Host.objects.select_for_update().get(pk=host.pk)
    before = host.status
    if status == HostStatus.ONLINE:
        if before not in OPERATOR_STATES or before == HostStatus.RETIRED:
            raise ValidationError.for_field(
                "status", _("Only a host in maintenance or draining can return to service.")
            )
        status = HostStatus.ONLINE if host.connected else HostStatus.OFFLINE
    elif status not in _ALLOWED:
        raise ValidationError.for_field("status", _("Operators cannot set this status."))
    elif before not in _ALLOWED[status]:
        raise ValidationError.for_field(
            "status",
            _("A %(before)s host cannot become %(after)s.")
            % {"before": HostStatus(before).label, "after": HostStatus(status).label},
        )
    host.status = status
    host.status_reason = reason[:200]
    host.status_changed_at = timezone.now()
    host.save(update_fields=["status", "status_reason", "status_changed_at", "updated_at"])
    audit_record(
        AuditAction.HOST_STATUS_CHANGED,
        actor=operator,
        target=host,
        details={"status": [before, status], "reason": reason[:200]},
    )
    if status == HostStatus.RETIRED:
        from .realtime import disconnect_agent

        disconnect_agent(host.pk)
        for listener in _retired_listeners:
            listener(host)
    return host


@transaction.atomic
def host_set_labels(*, operator: User, host: Host, labels) -> Host:
    user_require_operator(operator)
    labels = labels_parse(labels) if isinstance(labels, str) else labels_validate(labels)
    before = host.labels
    host.labels = labels
    host.save(update_fields=["labels", "updated_at"])
    audit_record(
        AuditAction.HOST_LABELS_CHANGED,
        actor=operator,
        target=host,
        details={"labels": [before, labels]},
    )
    return host


# Offline detection -------------------------------------------------------------------------


def host_silent(now: datetime) -> Q:
    """Hosts whose last heartbeat is older than three of their intervals (the agent's own when
    it said one, else the configured one): ``last_seen < now - interval × 3``, in SQL."""
    interval = Coalesce(
        F("agent_heartbeat_interval"), F("heartbeat_interval"), output_field=FloatField()
    )
    missed = Value(timedelta(seconds=OFFLINE_AFTER_MISSED_HEARTBEATS), output_field=DurationField())
    threshold = ExpressionWrapper(
        Value(now, output_field=DateTimeField())
        - ExpressionWrapper(interval * missed, output_field=DurationField()),
        output_field=DateTimeField(),
    )
    return Q(last_seen_at__isnull=False, last_seen_at__lt=threshold)


def host_mark_offline_stale(now=None) -> list[Host]:
    """Online hosts that fell silent go offline. Run by beat every few seconds; the conditional
    update makes reruns harmless. Operators hear of it through the "host offline" alert rule
    (machines.services.alerts), which also covers a draining host that falls silent: it keeps
    its operator state, so the workloads it drains stay accounted for."""
    now = now or timezone.now()
    stale = list(Host.objects.filter(host_silent(now), status=HostStatus.ONLINE))
    went_offline = []
    for host in stale:
        changed = Host.objects.filter(pk=host.pk, status=HostStatus.ONLINE).update(
            status=HostStatus.OFFLINE,
            status_reason=_("No heartbeat for %(n)d intervals")
            % {"n": OFFLINE_AFTER_MISSED_HEARTBEATS},
            status_changed_at=now,
            connected=False,  # whatever socket it had is dead or hung
        )
        if changed:
            went_offline.append(host)
    return went_offline
