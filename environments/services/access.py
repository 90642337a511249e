"""Who may open an environment through its host's SSH gateway (and its web terminal).

A running environment opens to the SSH keys of the member who created it and of its
organisation's owners and admins, while they are active members of an active organisation.
Any change to a key, a membership, a user or an environment's state sends the hosts concerned
a fresh access map (``machines.services.gateway``); the agent ends what it no longer allows.
"""

from __future__ import annotations

from collections import defaultdict

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from remotegpu_agent import protocol

from accounts.choices import Role
from accounts.models import Membership, Organization, SSHKey, User
from machines.services.gateway import (
    gateway_access_changed,
    gateway_access_provider,
    gateway_last_session,
)

from ..choices import EnvironmentStatus
from ..models import Environment
from .autostop import environment_activity_source

MANAGING_ROLES = (Role.OWNER, Role.ADMIN)


def environment_access_users(environments: list[Environment]) -> dict[int, set[int]]:
    """Environment id -> ids of the users who may open it. Two queries for any number."""
    organization_ids = {environment.organization_id for environment in environments}
    members: dict[int, dict[int, str]] = defaultdict(dict)
    for organization_id, user_id, role in Membership.objects.filter(
        organization_id__in=organization_ids,
        organization__is_active=True,
        user__is_active=True,
    ).values_list("organization_id", "user_id", "role"):
        members[organization_id][user_id] = role
    allowed = {}
    for environment in environments:
        roles = members.get(environment.organization_id, {})
        users = {user for user, role in roles.items() if role in MANAGING_ROLES}
        if environment.created_by_id in roles:
            users.add(environment.created_by_id)
        allowed[environment.pk] = users
    return allowed


def environment_may_open(environment: Environment, user: User) -> bool:
    """Whether ``user`` may open a shell in ``environment`` (the web terminal's check)."""
    if environment.status != EnvironmentStatus.RUNNING or not environment.container_id:
        return False
    return user.pk in environment_access_users([environment])[environment.pk]


@gateway_access_provider
def host_environment_access(host_id: int) -> list[protocol.GatewayAccess]:
    environments = list(
        Environment.objects.filter(host_id=host_id, status=EnvironmentStatus.RUNNING)
        .exclude(container_id="")
        .only("pk", "organization_id", "created_by_id", "container_id")
        .order_by("pk")
    )
    allowed = environment_access_users(environments)
    user_ids = set().union(*allowed.values()) if allowed else set()
    fingerprints: dict[int, list[str]] = defaultdict(list)
    for user_id, fingerprint in SSHKey.objects.filter(user_id__in=user_ids).values_list(
        "user_id", "fingerprint"
    ):
        fingerprints[user_id].append(fingerprint)
    return [
        protocol.GatewayAccess(
            environment_id=environment.pk,
            container=environment.container_id,
            fingerprints=sorted(
                {fp for user in allowed[environment.pk] for fp in fingerprints[user]}
            )[: protocol.MAX_KEYS],
            users=sorted(str(user) for user in allowed[environment.pk])[: protocol.MAX_KEYS],
        )
        for environment in environments
    ]


@environment_activity_source
def environment_last_session(environment: Environment):
    """Idle auto-stop: an open SSH or terminal session is activity."""
    return gateway_last_session(environment.host, environment.pk)


def _hosts_of_organizations(organization_ids) -> list[int]:
    return list(
        Environment.objects.filter(
            organization_id__in=organization_ids, status=EnvironmentStatus.RUNNING
        )
        .values_list("host_id", flat=True)
        .distinct()
    )


def access_changed_for_user(user_id: int) -> None:
    organization_ids = Membership.objects.filter(user_id=user_id).values("organization_id")
    gateway_access_changed(_hosts_of_organizations(organization_ids))


def environment_access_changed(environment: Environment, previous: str, target: str) -> None:
    """Called on every status change: running, or leaving running, changes the map."""
    if EnvironmentStatus.RUNNING in (previous, target):
        gateway_access_changed([environment.host_id])


@receiver([post_save, post_delete], sender=SSHKey)
def _key_changed(sender, instance: SSHKey, **kwargs):
    access_changed_for_user(instance.user_id)


@receiver(post_delete, sender=Membership)
def _membership_removed(sender, instance: Membership, **kwargs):
    gateway_access_changed(_hosts_of_organizations([instance.organization_id]))


@receiver(post_save, sender=Membership)
def _membership_saved(sender, instance: Membership, **kwargs):
    gateway_access_changed(_hosts_of_organizations([instance.organization_id]))


def _may_deactivate(created: bool, update_fields) -> bool:
    return not created and (update_fields is None or "is_active" in update_fields)


@receiver(post_save, sender=User)
def _user_saved(sender, instance: User, created: bool, update_fields=None, **kwargs):
    if _may_deactivate(created, update_fields):
        access_changed_for_user(instance.pk)


@receiver(post_save, sender=Organization)
def _organization_saved(sender, instance, created: bool, update_fields=None, **kwargs):
    if _may_deactivate(created, update_fields):
        gateway_access_changed(_hosts_of_organizations([instance.pk]))
