"""The SSH gateway's access map: who may open what through a host's gateway.

The agent checks every SSH login against the map the server last sent it, so a login costs no
round trip and survives a short loss of the server. The map is rebuilt whole from the database
and sent when the agent connects, once a minute with the resync, and at once whenever access
changes (``gateway_access_changed``); the agent then ends the sessions it no longer allows.
What goes in it comes from providers registered by the apps that own the things reached
(environments; whole-machine tenants), so this app imports none of them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from remotegpu_agent import protocol

from accounts.models import Membership, SSHKey

from ..choices import AllocationStatus
from ..models import Allocation, Host
from .realtime import send_to_agent

AccessProvider = Callable[[int], list[protocol.GatewayAccess]]
_providers: list[AccessProvider] = []


def gateway_access_provider(function: AccessProvider) -> AccessProvider:
    """Register ``function(host_id)``: the gateway entries it contributes for that host."""
    _providers.append(function)
    return function


def host_access_map(host_id: int) -> protocol.AccessMap:
    entries = [entry for provider in _providers for entry in provider(host_id)]
    return protocol.AccessMap(environments=entries, tenants=host_tenant_access(host_id))


def host_tenant_access(host_id: int) -> list[protocol.TenantAccess]:
    """The host's active whole-machine allocation, if any: its tenant account opens to the
    keys of every active member of the organisation."""
    allocations = list(
        Allocation.objects.filter(
            host_id=host_id, status=AllocationStatus.ACTIVE, organization__is_active=True
        ).only("pk", "tenant_user", "organization_id")
    )
    if not allocations:
        return []
    fingerprints: dict[int, set[str]] = defaultdict(set)
    for organization_id, fingerprint in SSHKey.objects.filter(
        user__is_active=True,
        user__memberships__organization_id__in={a.organization_id for a in allocations},
    ).values_list("user__memberships__organization_id", "fingerprint"):
        fingerprints[organization_id].add(fingerprint)
    return [
        protocol.TenantAccess(
            allocation_id=allocation.pk,
            user=allocation.tenant_user,
            fingerprints=sorted(fingerprints[allocation.organization_id])[: protocol.MAX_KEYS],
        )
        for allocation in allocations
    ]


def _hosts_allocated_to(organization_ids) -> list[int]:
    return list(
        Allocation.objects.filter(
            organization_id__in=organization_ids, status=AllocationStatus.ACTIVE
        ).values_list("host_id", flat=True)
    )


@receiver([post_save, post_delete], sender=SSHKey)
def _tenant_key_changed(sender, instance: SSHKey, **kwargs):
    organization_ids = Membership.objects.filter(user_id=instance.user_id).values("organization_id")
    gateway_access_changed(_hosts_allocated_to(organization_ids))


@receiver([post_save, post_delete], sender=Membership)
def _tenant_membership_changed(sender, instance: Membership, **kwargs):
    gateway_access_changed(_hosts_allocated_to([instance.organization_id]))


def gateway_access_changed(host_ids: Iterable[int | None]) -> None:
    """Send each host's agent a fresh map once the current transaction commits."""
    for host_id in sorted({host_id for host_id in host_ids if host_id}):
        send_to_agent(host_id, {"type": "agent.access"})


# Sessions: each heartbeat lists the environments with an SSH or terminal session open; idle
# auto-stop counts the latest such moment as activity. Kept on the host's row, so that a host
# speaks only for environments placed on it.


def gateway_sessions_seen(host_id: int, environment_ids: list[str], at: datetime) -> None:
    ids = sorted({int(value) for value in environment_ids if value.isdigit()})
    if ids:
        Host.objects.filter(pk=host_id).update(session_environments=ids, sessions_seen_at=at)


def gateway_last_session(host: Host | None, environment_id: int) -> datetime | None:
    """When ``host`` last reported a session open in the environment (None: never)."""
    if host is None or environment_id not in (host.session_environments or []):
        return None
    return host.sessions_seen_at
