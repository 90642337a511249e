"""An environment's life: create, start, stop, restart, delete, start without GPU.

The state machine (ARCHITECTURE.md §4) is ``TRANSITIONS`` below. Every change of status is a
conditional update (``filter(pk=..., status__in=FROM).update(status=TO)``), so of two racing
callers exactly one wins, and writes an event (the environment's system log) and an audit
event, and is pushed live to the pages. Work on the host goes through the durable command
channel (``environment_run``, ``environment_stop``, ...); its outcome comes back through
``results``.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from remotegpu_agent import protocol

from accounts.choices import AuditAction
from accounts.models import Organization, SSHKey, User
from accounts.services.audit import audit_record
from machines.choices import HostStatus
from machines.models import AgentCommand, Region
from machines.services.commands import command_create
from remotegpu.core.errors import Conflict, ValidationError

from ..choices import EnvironmentStatus, PlacementStrategy, PortRole, StatusReason
from ..models import Environment, EnvironmentEvent, GPUAssignment, Image, PortAllocation, Spec
from .access import environment_access_changed
from .autostop import auto_stop_validate
from .billing import environment_billing_changed, environment_require_funds
from .images import image_resolve, registry_auth_for
from .jupyter import jupyter_token, jupyter_token_new, jupyter_wanted
from .placement import NoCapacity, place
from .realtime import environment_notify

S = EnvironmentStatus

TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.SCHEDULED, S.STARTING, S.STOPPED, S.FAILED, S.DELETING, S.DELETED}),
    S.SCHEDULED: frozenset({S.PROVISIONING, S.FAILED, S.DELETING}),
    S.PROVISIONING: frozenset({S.RUNNING, S.FAILED, S.DELETING}),
    S.RUNNING: frozenset({S.STOPPING, S.STARTING, S.STOPPED, S.FAILED, S.DELETING}),
    S.STOPPING: frozenset({S.STOPPED, S.RUNNING, S.FAILED, S.DELETING}),
    S.STOPPED: frozenset({S.PENDING, S.STARTING, S.FAILED, S.DELETING}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPED, S.FAILED, S.DELETING}),
    S.DELETING: frozenset({S.DELETED}),
    S.FAILED: frozenset({S.DELETING, S.DELETED}),
    S.DELETED: frozenset(),
}

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV_PREFIX = "REMOTEGPU_"
MAX_ENV_VARS = 100
MAX_ENV_VALUE = 4096
MAX_EXTRA_PORTS = 16
DELETE_TIMEOUT = timedelta(days=7)  # a delete waits this long for an offline host to return
STOP_TIMEOUT = timedelta(minutes=5)


def provision_timeout() -> timedelta:
    return timedelta(seconds=settings.ENVIRONMENT_PROVISION_TIMEOUT)


# Transitions -------------------------------------------------------------------------------


def environment_transition(
    environment: Environment,
    *,
    source,
    target: str,
    message: str,
    reason: str = "",
    actor: User | None = None,
    action: str = AuditAction.ENVIRONMENT_STATUS_CHANGED,
    details: dict | None = None,
    **fields,
) -> bool:
    """Move ``environment`` from one of ``source`` to ``target`` if it is still there; the
    row count says whether this caller won. Writes the event and the audit record, and pushes
    the change to the pages once committed."""
    sources = {source} if isinstance(source, str) else set(source)
    for state in sources:
        if target not in TRANSITIONS[state]:
            raise AssertionError(f"no transition {state} -> {target}")
    now = timezone.now()
    changes = {
        "status": target,
        "status_reason": reason,
        "status_message": str(message)[:500],
        "status_changed_at": now,
        **fields,
    }
    # No savepoint: inside a caller's transaction, a failure here fails the caller's too.
    with transaction.atomic(savepoint=False):
        if not Environment.objects.filter(pk=environment.pk, status__in=sources).update(**changes):
            return False
        previous = environment.status
        for name, value in changes.items():
            setattr(environment, name, value)
        EnvironmentEvent.objects.create(
            environment=environment,
            created_at=now,
            status=target,
            message=str(message)[:500],
            details={"from": previous, "reason": reason, **(details or {})},
        )
        audit_record(
            action,
            actor=actor,
            organization=environment.organization,
            target=environment,
            details={"from": previous, "to": target, "reason": reason},
        )
        environment_notify(environment, event=str(message)[:500])
        environment_access_changed(environment, previous, target)
        environment_billing_changed(environment, previous, target)
    return True


def environment_event(environment: Environment, message: str, **details) -> None:
    """A line in the system log that changes no status (pulling, pulled)."""
    EnvironmentEvent.objects.create(
        environment=environment,
        status=environment.status,
        message=str(message)[:500],
        details=details,
    )
    environment_notify(environment, event=str(message)[:500])


def environment_release_gpus(environment: Environment) -> int:
    return GPUAssignment.objects.filter(environment=environment, released_at__isnull=True).update(
        released_at=timezone.now()
    )


def environment_release_ports(environment: Environment) -> int:
    deleted, _counts = PortAllocation.objects.filter(environment=environment).delete()
    return deleted


# Input -------------------------------------------------------------------------------------


def _validate_env(variables) -> dict[str, str]:
    if variables in (None, ""):
        return {}
    if not isinstance(variables, dict):
        raise ValidationError.for_field("env", _("Give variables as an object of names."))
    if len(variables) > MAX_ENV_VARS:
        raise ValidationError.for_field(
            "env", _("At most %(count)d variables.") % {"count": MAX_ENV_VARS}
        )
    errors = []
    for name, value in variables.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            errors.append(
                _("%(name)s is not a valid variable name (letters, digits, _).") % {"name": name}
            )
        elif name.startswith(RESERVED_ENV_PREFIX):
            errors.append(_("%(name)s: names starting REMOTEGPU_ are reserved.") % {"name": name})
        elif not isinstance(value, str) or "\x00" in value or len(value) > MAX_ENV_VALUE:
            errors.append(
                _("%(name)s: the value must be text of at most %(max)d characters.")
                % {"name": name, "max": MAX_ENV_VALUE}
            )
    if errors:
        raise ValidationError(_("Some variables are invalid."), fields={"env": errors})
    return dict(variables)


def _port(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError.for_field(field, _("A port is a number from 1 to 65535."))
    return value


def _validate_ports(image: Image | None, extra_ports) -> list[dict]:
    """The image's ports plus the extra ones asked for, each once."""
    ports = [dict(port) for port in (image.ports if image is not None else [])]
    if extra_ports in (None, ""):
        extra_ports = []
    if not isinstance(extra_ports, list) or len(extra_ports) > MAX_EXTRA_PORTS:
        raise ValidationError.for_field(
            "ports", _("Give at most %(count)d ports.") % {"count": MAX_EXTRA_PORTS}
        )
    for item in extra_ports:
        entry = item if isinstance(item, dict) else {"port": item}
        port = _port(entry.get("port"), "ports")
        role = entry.get("role") or PortRole.TCP
        if role not in PortRole.values:
            raise ValidationError.for_field(
                "ports", _("Unknown port role %(role)s.") % {"role": role}
            )
        if any(existing["port"] == port for existing in ports):
            raise ValidationError.for_field(
                "ports", _("Port %(port)d is asked for twice.") % {"port": port}
            )
        ports.append({"port": port, "role": role, "name": str(entry.get("name", ""))[:50]})
    return ports


def _validate_name(organization: Organization, name) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ValidationError.for_field(
            "name",
            _("Use 1 to 63 lower-case letters, digits and hyphens, not starting or ending in one."),
        )
    if (
        Environment.objects.filter(organization=organization, name=name)
        .exclude(status=S.DELETED)
        .exists()
    ):
        raise ValidationError.for_field(
            "name",
            _("An environment of this organisation is already called %(name)s.") % {"name": name},
        )
    return name


def _validate_spec(spec: Spec, region: Region | None) -> None:
    if not spec.is_active:
        raise ValidationError.for_field("spec", _("This spec is not offered."))
    if (
        region is not None
        and spec.regions.exists()
        and not spec.regions.filter(pk=region.pk).exists()
    ):
        raise ValidationError.for_field(
            "region", _("%(spec)s is not offered in %(region)s.") % {"spec": spec, "region": region}
        )


def _check_quota(organization: Organization, *, gpus: int, new_environment: bool) -> None:
    """Takes the organisation's row lock, so two creates (or starts) cannot both take its last
    unit, nor both pass its funds and spend-limit check: call it first in their transaction."""
    locked = Organization.objects.select_for_update().get(pk=organization.pk)
    if new_environment:
        count = Environment.objects.filter(organization=locked).exclude(status=S.DELETED).count()
        if count >= locked.environment_quota:
            raise Conflict(
                _("Your organisation may have %(quota)d environments; delete one first.")
                % {"quota": locked.environment_quota},
                code="quota",
            )
    if gpus:
        held = GPUAssignment.objects.filter(
            environment__organization=locked, released_at__isnull=True
        ).count()
        if held + gpus > locked.gpu_quota:
            raise Conflict(
                _(
                    "Your organisation's GPU quota is %(quota)d and it holds %(held)d: "
                    "%(count)d more would exceed it."
                )
                % {"quota": locked.gpu_quota, "held": held, "count": gpus},
                code="quota",
            )


# Ports and the command ---------------------------------------------------------------------


def _allocate_ports(environment: Environment, ports: list[dict]) -> None:
    """Host ports from the host's range, lowest free first (under the placement's host lock)."""
    host = environment.host
    used = set(PortAllocation.objects.filter(host=host).values_list("host_port", flat=True))
    candidates = (
        port for port in range(host.port_range_start, host.port_range_end + 1) if port not in used
    )
    allocations = []
    for entry in ports:
        host_port = next(candidates, None)
        if host_port is None:
            raise NoCapacity(_("Host %(host)s has no free ports left.") % {"host": host.name})
        allocations.append(
            PortAllocation(
                environment=environment,
                host=host,
                host_port=host_port,
                container_port=entry["port"],
                role=entry.get("role", PortRole.TCP),
                name=entry.get("name", ""),
            )
        )
    PortAllocation.objects.bulk_create(allocations)


def _run_payload(environment: Environment, gpu_uuids: list[str]) -> dict:
    spec = environment.spec
    ports = list(environment.ports.all())
    image_env = environment.image.env if environment.image is not None else {}
    env = {
        **image_env,
        **environment.env,
        "REMOTEGPU_ENVIRONMENT_ID": str(environment.pk),
        "REMOTEGPU_ENVIRONMENT_NAME": environment.name,
        "REMOTEGPU_PUBLIC_HOST": environment.host.address or environment.host.hostname,
        **{f"REMOTEGPU_PORT_{port.container_port}": str(port.host_port) for port in ports},
    }
    token = jupyter_token(environment)
    if token:
        env["JUPYTER_TOKEN"] = token
    keys = environment.ssh_keys.values_list("public_key", flat=True)
    if keys:
        env["REMOTEGPU_SSH_PUBLIC_KEYS"] = "\n".join(keys)
    run = protocol.EnvironmentRun(
        environment_id=environment.pk,
        organization_id=environment.organization_id,
        image=environment.image_reference,
        command=list(environment.command),
        env=env,
        gpu_uuids=gpu_uuids,
        nano_cpus=spec.vcpu * 1_000_000_000,
        memory=spec.memory_bytes,
        pids_limit=settings.ENVIRONMENT_PIDS_LIMIT,
        ports=[protocol.PortSpec(port.container_port, port.host_port) for port in ports],
        registry_auth=registry_auth_for(environment.image_reference),
    )
    return asdict(run)


def _send(environment: Environment, kind: str, payload: dict, timeout: timedelta) -> AgentCommand:
    command = command_create(host=environment.host, kind=kind, payload=payload, timeout=timeout)
    Environment.objects.filter(pk=environment.pk).update(last_command=command)
    environment.last_command = command
    return command


def _send_run(environment: Environment, gpus) -> AgentCommand:
    return _send(
        environment,
        "environment_run",
        _run_payload(environment, [gpu.uuid for gpu in gpus]),
        provision_timeout(),
    )


# Services ----------------------------------------------------------------------------------


def environment_create(
    *,
    user: User,
    organization: Organization,
    name: str,
    spec: Spec,
    image: Image | None = None,
    image_reference: str = "",
    region: Region | None = None,
    env: dict | None = None,
    ports: list | None = None,
    ssh_keys: list[SSHKey] | None = None,
    command: list[str] | None = None,
    strategy: str = PlacementStrategy.BINPACK,
    stop_at=None,
    max_runtime_minutes: int | None = None,
    idle_stop_minutes: int | None = None,
    idle_gpu_percent: int = 5,
) -> Environment:
    """Validate, check quotas, place and send the host its ``environment_run``, in one
    transaction: on any error nothing is left behind (no row, no GPU, no port).
    ``stop_at``, ``max_runtime_minutes`` and ``idle_stop_minutes``: its auto-stop
    (``autostop``)."""
    name = _validate_name(organization, name)
    image, image_reference = image_resolve(
        organization=organization, image=image, reference=image_reference
    )
    _validate_spec(spec, region)
    variables = _validate_env(env)
    port_list = _validate_ports(image, ports)
    keys = list(ssh_keys or [])
    if any(key.user_id != user.pk for key in keys):
        raise ValidationError.for_field("ssh_keys", _("Choose among your own SSH keys."))
    if strategy not in PlacementStrategy.values:
        raise ValidationError.for_field("strategy", _("Unknown placement strategy."))
    if command is None:
        command = list(image.command) if image is not None else []
    auto_stop = auto_stop_validate(
        stop_at, max_runtime_minutes, idle_stop_minutes, idle_gpu_percent
    )
    try:
        with transaction.atomic():
            _check_quota(organization, gpus=spec.gpu_count, new_environment=True)
            environment_require_funds(organization, spec, region=region)
            environment = Environment.objects.create(
                organization=organization,
                created_by=user,
                name=name,
                spec=spec,
                image=image,
                image_reference=image_reference,
                command=command,
                env=variables,
                region=region,
                strategy=strategy,
                jupyter_token_sealed=jupyter_token_new()[1] if jupyter_wanted(port_list) else "",
                **auto_stop,
            )
            if keys:
                environment.ssh_keys.set(keys)
            audit_record(
                AuditAction.ENVIRONMENT_CREATED,
                actor=user,
                organization=organization,
                target=environment,
                details={"spec": spec.name, "image": image_reference},
            )
            placement = place(environment, gpu_count=spec.gpu_count)
            environment_transition(
                environment,
                source=S.PENDING,
                target=S.SCHEDULED,
                message=_("Scheduled on %(host)s.") % {"host": placement.host.name},
                host=placement.host,
                details={"gpus": [gpu.uuid for gpu in placement.gpus]},
            )
            _allocate_ports(environment, port_list)
            environment_transition(
                environment,
                source=S.SCHEDULED,
                target=S.PROVISIONING,
                message=_("Provisioning: the host is preparing the container."),
                deadline=timezone.now() + provision_timeout(),
            )
            _send_run(environment, placement.gpus)
    except IntegrityError as exc:  # a concurrent create took the name between check and insert
        raise ValidationError.for_field(
            "name",
            _("An environment of this organisation is already called %(name)s.") % {"name": name},
        ) from exc
    return environment


def _require_host(environment: Environment) -> None:
    if environment.host is None:
        raise Conflict(_("This environment has no host."))


def environment_start(
    *, user: User, environment: Environment, without_gpu: bool = False, wait: bool = False
) -> Environment:
    """Start a stopped environment on its host, with its spec's GPUs or ``without_gpu``.

    Its GPUs may have been taken while it was stopped: then ``NoCapacity`` says so, unless
    ``wait``, which leaves it pending until they are free (beat tries again)."""
    _require_host(environment)
    if environment.status not in (S.STOPPED, S.PENDING):
        raise Conflict(
            _("Only a stopped environment can be started; this one is %(status)s.")
            % {"status": environment.get_status_display()}
        )
    gpu_count = 0 if without_gpu else environment.spec.gpu_count
    with transaction.atomic():
        _check_quota(environment.organization, gpus=gpu_count, new_environment=False)
        environment_require_funds(
            environment.organization,
            environment.spec,
            region=environment.host.region,
            without_gpu=without_gpu,
            environment=environment,
        )
        try:
            with transaction.atomic():
                placement = place(environment, gpu_count=gpu_count, only_host=environment.host)
        except NoCapacity:
            if not wait:
                raise
            if environment_transition(
                environment,
                source=S.STOPPED,
                target=S.PENDING,
                reason=StatusReason.WAITING_FOR_GPUS,
                message=_("Waiting for its GPUs on %(host)s to be free.")
                % {"host": environment.host.name},
                actor=user,
                action=AuditAction.ENVIRONMENT_STARTED,
            ):
                return environment
            if environment.status == S.PENDING:
                return environment
            raise
        message = (
            _("Starting without GPU.")
            if without_gpu
            else _("Starting on %(host)s.") % {"host": environment.host.name}
        )
        if not environment_transition(
            environment,
            source={S.STOPPED, S.PENDING},
            target=S.STARTING,
            message=message,
            actor=user,
            action=AuditAction.ENVIRONMENT_STARTED,
            without_gpu=without_gpu,
            deadline=timezone.now() + provision_timeout(),
        ):
            raise Conflict(_("The environment changed meanwhile; reload and try again."))
        _send_run(environment, placement.gpus)
    return environment


def environment_stop(
    *,
    user: User | None,
    environment: Environment,
    reason: str | None = None,
    message: str = "",
) -> Environment:
    """Stop the container (it is removed; ``/workspace`` stays); its GPUs are released once
    the host confirms. ``reason``: why, when the system stops it (auto-stop, balance); by
    default its user's or an operator's choice."""
    _require_host(environment)
    if reason is None:
        reason = (
            StatusReason.USER if user is not None and not user.is_staff else StatusReason.OPERATOR
        )
    with transaction.atomic():
        if not environment_transition(
            environment,
            source=S.RUNNING,
            target=S.STOPPING,
            reason=reason,
            message=message or _("Stopping."),
            actor=user,
            action=AuditAction.ENVIRONMENT_STOPPED,
        ):
            raise Conflict(
                _("Only a running environment can be stopped; this one is %(status)s.")
                % {"status": environment.get_status_display()}
            )
        _send(environment, "environment_stop", {"environment_id": environment.pk}, STOP_TIMEOUT)
    return environment


def environment_restart(*, user: User, environment: Environment) -> Environment:
    _require_host(environment)
    with transaction.atomic():
        if not environment_transition(
            environment,
            source=S.RUNNING,
            target=S.STARTING,
            message=_("Restarting."),
            actor=user,
            action=AuditAction.ENVIRONMENT_RESTARTED,
            deadline=timezone.now() + STOP_TIMEOUT,
        ):
            raise Conflict(
                _("Only a running environment can be restarted; this one is %(status)s.")
                % {"status": environment.get_status_display()}
            )
        _send(environment, "environment_restart", {"environment_id": environment.pk}, STOP_TIMEOUT)
    return environment


DELETABLE = frozenset(TRANSITIONS) - {S.DELETING, S.DELETED}


def environment_delete(*, user: User | None, environment: Environment) -> Environment:
    """Remove the container and its volume; GPUs and ports are freed once the host confirms
    (at once when it never had a host)."""
    with transaction.atomic():
        # Never placed (pending, or failed before placement), or its host was retired (it
        # failed then, and that host will not answer): nothing to ask a host to remove.
        if environment.host is None or environment.host.status == HostStatus.RETIRED:
            if not environment_transition(
                environment,
                source={S.PENDING, S.FAILED},
                target=S.DELETED,
                reason=StatusReason.USER,
                message=_("Deleted."),
                actor=user,
                action=AuditAction.ENVIRONMENT_DELETED,
                deleted_at=timezone.now(),
            ):
                raise Conflict(_("This environment is already being deleted."))
            return environment
        if not environment_transition(
            environment,
            source=DELETABLE,
            target=S.DELETING,
            reason=StatusReason.USER,
            message=_("Deleting its container and volume."),
            actor=user,
            action=AuditAction.ENVIRONMENT_DELETED,
        ):
            raise Conflict(_("This environment is already being deleted."))
        _send(environment, "environment_delete", {"environment_id": environment.pk}, DELETE_TIMEOUT)
    return environment
