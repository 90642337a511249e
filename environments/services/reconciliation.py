"""Desired state wins: what the agents report is compared with the database, and converges.

- On every inventory in which the agent could list its containers: an environment the
  database thinks is running whose container is gone is ``failed(lost)`` and frees its GPUs;
  each container's Docker state is noted; a labelled container no live environment owns is
  recorded as an orphan.
- Periodically (beat, ``environment_sweep``): orphans past their grace period are removed;
  a running environment whose container stayed exited is ``stopped(exited)``; provisioning or
  starting past its deadline ends with ``provision_timeout``; environments waiting for their
  GPUs are started when the GPUs are free.
- When an operator retires a host: its environments are ``failed(host_lost)`` with their GPUs
  and ports released, and one being deleted is deleted (the host will not answer again; what
  is left on its disks goes with the machine).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

from machines.models import Host
from machines.services.allocations import allocation_reclaimed_listener
from machines.services.commands import command_create
from machines.services.hosts import host_retired_listener, inventory_listener
from remotegpu.core.errors import ApplicationError

from ..choices import CONTAINER_STATES, StatusReason
from ..choices import EnvironmentStatus as S
from ..models import Environment, OrphanContainer
from .autostop import environment_auto_stop_sweep
from .lifecycle import (
    TRANSITIONS,
    environment_release_gpus,
    environment_release_ports,
    environment_start,
    environment_transition,
)

logger = logging.getLogger(__name__)

EXITED_STATES = frozenset({"exited", "dead"})
# A running environment whose container stays exited this long is stopped: Docker restarts a
# crashed container itself ("unless-stopped"), so "exited" that lasts means it was stopped.
EXITED_GRACE = timedelta(seconds=60)
REMOVAL_TIMEOUT = timedelta(minutes=10)


def _orphan_grace() -> timedelta:
    return timedelta(seconds=settings.ENVIRONMENT_ORPHAN_GRACE_SECONDS)


@inventory_listener
def environment_reconcile_host(host: Host, inventory) -> None:
    """Compare one host's reported containers with its environments (inside the inventory's
    transaction)."""
    if not inventory.containers_known:
        return  # Docker did not answer: its containers are unknown, not gone
    now = timezone.now()
    reported = {c.environment: c for c in inventory.containers if c.environment}
    environments = list(
        Environment.objects.select_related("organization").filter(
            host=host, status__in=CONTAINER_STATES | {S.STOPPED, S.FAILED}
        )
    )
    for environment in environments:
        container = reported.get(str(environment.pk))
        if environment.status == S.RUNNING and container is None:
            listed_before_it_ran = (
                environment.agent_ran_at is not None and inventory.time < environment.agent_ran_at
            )
            if not listed_before_it_ran:
                _mark_lost(environment)
            continue
        state = container.state if container is not None else ""
        if environment.status in CONTAINER_STATES and state != environment.container_state:
            Environment.objects.filter(pk=environment.pk).update(
                container_state=state, container_state_since=now
            )
    live = {str(e.pk) for e in environments if e.status in CONTAINER_STATES}
    orphans = [c for c in inventory.containers if c.environment not in live]
    OrphanContainer.objects.bulk_create(
        [
            OrphanContainer(host=host, container_id=c.id, environment_label=c.environment)
            for c in orphans
        ],
        ignore_conflicts=True,
    )
    OrphanContainer.objects.filter(host=host).exclude(
        container_id__in=[c.id for c in orphans]
    ).delete()


@host_retired_listener
def environments_host_retired(host: Host) -> int:
    """Fail every environment of a retired host (``host_lost``), freeing its GPUs and ports;
    finish the deletes it can no longer confirm. Returns how many changed."""
    changed = 0
    environments = Environment.objects.filter(host=host).exclude(status__in=[S.FAILED, S.DELETED])
    for environment in environments.select_related("organization"):
        if environment.status == S.DELETING:
            done = environment_transition(
                environment,
                source=S.DELETING,
                target=S.DELETED,
                reason=StatusReason.HOST_LOST,
                message=_("Deleted: its host was retired and will not confirm it."),
                deleted_at=timezone.now(),
            )
        else:
            done = environment_transition(
                environment,
                source=environment.status,
                target=S.FAILED,
                reason=StatusReason.HOST_LOST,
                message=_("Its host %(host)s was retired; its GPUs are released.")
                % {"host": host.name},
                container_state="",
            )
        if done:
            environment_release_gpus(environment)
            environment_release_ports(environment)
            changed += 1
    return changed


@allocation_reclaimed_listener
def environments_allocation_reclaimed(allocation) -> int:
    """The host removed its tenant organisation's containers and volumes: the organisation's
    environments there are deleted (their `/workspace` went with the reclaim), their GPUs and
    ports released. Returns how many changed."""
    changed = 0
    now = timezone.now()
    message = _("Deleted: the whole-machine allocation of %(host)s was reclaimed.") % {
        "host": allocation.host.name
    }
    environments = Environment.objects.filter(
        host_id=allocation.host_id, organization_id=allocation.organization_id
    ).exclude(status=S.DELETED)
    for environment in environments.select_related("organization"):
        if S.DELETED not in TRANSITIONS[environment.status]:
            environment_transition(
                environment,
                source=environment.status,
                target=S.DELETING,
                reason=StatusReason.RECLAIMED,
                message=message,
            )
        if environment_transition(
            environment,
            source=environment.status,
            target=S.DELETED,
            reason=StatusReason.RECLAIMED,
            message=message,
            container_state="",
            deleted_at=now,
        ):
            environment_release_gpus(environment)
            environment_release_ports(environment)
            changed += 1
    return changed


def _mark_lost(environment: Environment) -> None:
    if environment_transition(
        environment,
        source=S.RUNNING,
        target=S.FAILED,
        reason=StatusReason.LOST,
        message=_("Its container is gone from the host; its GPUs are released."),
        container_state="",
    ):
        environment_release_gpus(environment)
        environment_release_ports(environment)
        logger.warning("environment %s lost its container", environment.pk)


def _stop_exited(now) -> int:
    stopped = 0
    for environment in Environment.objects.select_related("organization", "host").filter(
        status=S.RUNNING,
        container_state__in=EXITED_STATES,
        container_state_since__lte=now - EXITED_GRACE,
    ):
        with transaction.atomic():
            if environment_transition(
                environment,
                source=S.RUNNING,
                target=S.STOPPED,
                reason=StatusReason.EXITED,
                message=_("Its container exited and stayed down; it is stopped."),
                stopped_at=now,
            ):
                environment_release_gpus(environment)
                command_create(
                    host=environment.host,
                    kind="environment_stop",
                    payload={"environment_id": environment.pk},
                )
                stopped += 1
    return stopped


def _expire(now) -> int:
    expired = 0
    for environment in Environment.objects.select_related("organization", "host").filter(
        status__in=[S.PROVISIONING, S.STARTING], deadline__lte=now
    ):
        message = _("It did not start before its deadline.")
        with transaction.atomic():
            if environment.status == S.PROVISIONING:
                done = environment_transition(
                    environment,
                    source=S.PROVISIONING,
                    target=S.FAILED,
                    reason=StatusReason.PROVISION_TIMEOUT,
                    message=message,
                    deadline=None,
                )
                if done:
                    environment_release_ports(environment)
            else:
                done = environment_transition(
                    environment,
                    source=S.STARTING,
                    target=S.STOPPED,
                    reason=StatusReason.PROVISION_TIMEOUT,
                    message=message,
                    deadline=None,
                    stopped_at=now,
                )
            if done:
                environment_release_gpus(environment)
                expired += 1
    return expired


def _remove_orphans(now) -> int:
    """Orphans past their grace: a deleted or unknown environment's container goes with its
    volume; a stopped or failed one's container goes and its volume stays."""
    removed = 0
    due = OrphanContainer.objects.select_related("host").filter(
        first_seen_at__lte=now - _orphan_grace()
    )
    due = due.filter(removal_requested_at__isnull=True) | due.filter(
        removal_requested_at__lte=now - REMOVAL_TIMEOUT
    )
    for orphan in due:
        kind, payload = "container_remove", {"container_id": orphan.container_id}
        if orphan.environment_label.isdigit():
            environment_id = int(orphan.environment_label)
            keep_volume = Environment.objects.filter(
                pk=environment_id, status__in=[S.STOPPED, S.FAILED, S.PENDING]
            ).exists()
            kind = "environment_stop" if keep_volume else "environment_delete"
            payload = {"environment_id": environment_id}
        with transaction.atomic():
            command_create(host=orphan.host, kind=kind, payload=payload)
            OrphanContainer.objects.filter(pk=orphan.pk).update(removal_requested_at=now)
        logger.info("removing orphan container %s on %s", orphan.container_id[:12], orphan.host)
        removed += 1
    return removed


def _start_waiting() -> int:
    started = 0
    for environment in Environment.objects.select_related("organization", "host", "spec").filter(
        status=S.PENDING, status_reason=StatusReason.WAITING_FOR_GPUS
    ):
        try:
            environment_start(user=None, environment=environment)
            started += 1
        except ApplicationError:  # its GPUs are still taken, or its quota is spent: wait on
            continue
    return started


def environment_sweep() -> dict[str, int]:
    """One pass of the periodic reconciliation (beat, every few seconds)."""
    now = timezone.now()
    return {
        "expired": _expire(now),
        "exited": _stop_exited(now),
        "orphans_removed": _remove_orphans(now),
        "started": _start_waiting(),
        **environment_auto_stop_sweep(now),
    }
