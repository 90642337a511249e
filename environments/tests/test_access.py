"""Who may open an environment through the SSH gateway and the web terminal, the map the
agents get, and when they get a new one."""

from __future__ import annotations

import pytest

from accounts.choices import Role
from accounts.models import Membership, Organization
from accounts.services.ssh_keys import ssh_key_add, ssh_key_delete
from accounts.tests.factories import MembershipFactory, OrganizationFactory, UserFactory
from environments.choices import EnvironmentStatus as S
from environments.services import access
from environments.services.autostop import environment_activity_source  # noqa: F401
from environments.services.connection import environment_connection
from machines.services import gateway
from machines.services.gateway import gateway_sessions_seen, host_access_map

from .factories import EnvironmentFactory, host_with_gpus

pytestmark = pytest.mark.django_db

KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEHQ6x9m8bHtHtYqz8o3QvJwSxH4oKqQ5cCzFv0b4d8F b",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxE2kPz0hTNm3y1cQY6S6b5rRlnO0gK3i3Ew6DqgBvs c",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK3cV8Y1l2t0Z5s0Sg2aVqkY0vXx9lBz7o5Wm2cN8pQr d",
]


@pytest.fixture
def sent(monkeypatch):
    """Hosts told to fetch a new map (``agent.access`` events), in order."""
    calls = []
    monkeypatch.setattr(gateway, "send_to_agent", lambda host_id, event: calls.append(host_id))
    return calls


@pytest.fixture
def world():
    host = host_with_gpus(2)
    owner = MembershipFactory(role=Role.OWNER)
    organization = owner.organization
    admin = MembershipFactory(organization=organization, role=Role.ADMIN)
    creator = MembershipFactory(organization=organization, role=Role.MEMBER)
    member = MembershipFactory(organization=organization, role=Role.MEMBER)
    outsider = MembershipFactory(role=Role.OWNER)
    keys = {}
    for membership, key in zip((owner, admin, creator, member), KEYS, strict=True):
        keys[membership.user.pk] = ssh_key_add(
            user=membership.user, name="k", public_key=key
        ).fingerprint
    environment = EnvironmentFactory(
        organization=organization,
        created_by=creator.user,
        host=host,
        status=S.RUNNING,
        container_id="c0ffee",
    )
    return {
        "host": host,
        "environment": environment,
        "owner": owner,
        "admin": admin,
        "creator": creator,
        "member": member,
        "outsider": outsider,
        "keys": keys,
    }


def test_the_map_holds_the_creators_and_the_managers_keys_only(world):
    (entry,) = host_access_map(world["host"].pk).environments
    keys = world["keys"]
    assert entry.environment_id == world["environment"].pk
    assert entry.container == "c0ffee"
    expected = {world[name].user.pk for name in ("owner", "admin", "creator")}
    assert set(entry.fingerprints) == {keys[user] for user in expected}
    assert set(entry.users) == {str(user) for user in expected}
    assert keys[world["member"].user.pk] not in entry.fingerprints


def test_only_running_environments_with_a_container_are_in_the_map(world):
    other = EnvironmentFactory(host=world["host"], status=S.STOPPED, container_id="")
    starting = EnvironmentFactory(host=world["host"], status=S.STARTING, container_id="")
    ids = {entry.environment_id for entry in host_access_map(world["host"].pk).environments}
    assert ids == {world["environment"].pk}
    assert other.pk not in ids
    assert starting.pk not in ids


def test_inactive_users_and_organisations_open_nothing(world):
    world["owner"].user.is_active = False
    world["owner"].user.save()
    (entry,) = host_access_map(world["host"].pk).environments
    assert str(world["owner"].user.pk) not in entry.users
    Organization.objects.filter(pk=world["environment"].organization_id).update(is_active=False)
    (entry,) = host_access_map(world["host"].pk).environments
    assert entry.fingerprints == []
    assert entry.users == []


def test_a_creator_who_left_loses_access(world):
    Membership.objects.filter(pk=world["creator"].pk).delete()
    (entry,) = host_access_map(world["host"].pk).environments
    assert str(world["creator"].user.pk) not in entry.users


def test_may_open(world):
    environment = world["environment"]
    for name in ("owner", "admin", "creator"):
        assert access.environment_may_open(environment, world[name].user), name
    for name in ("member", "outsider"):
        assert not access.environment_may_open(environment, world[name].user), name
    assert not access.environment_may_open(environment, UserFactory())
    environment.status = S.STOPPED
    assert not access.environment_may_open(environment, world["owner"].user)


def test_changes_send_the_hosts_a_new_map(world, sent, django_capture_on_commit_callbacks):
    host_id = world["host"].pk
    with django_capture_on_commit_callbacks(execute=True):
        ssh_key_delete(actor=world["admin"].user, key=world["admin"].user.ssh_keys.get())
    assert sent == [host_id]
    with django_capture_on_commit_callbacks(execute=True):
        Membership.objects.filter(pk=world["member"].pk).update(role=Role.ADMIN)  # no signal
        membership = Membership.objects.get(pk=world["member"].pk)
        membership.save()
    assert sent == [host_id, host_id]
    with django_capture_on_commit_callbacks(execute=True):
        world["outsider"].user.is_active = False
        world["outsider"].user.save()  # no environment of theirs runs: nobody to tell
    assert sent == [host_id, host_id]
    with django_capture_on_commit_callbacks(execute=True):
        world["owner"].user.save(update_fields=["last_login"])  # not about access
    assert sent == [host_id, host_id]


def test_an_environment_leaving_running_sends_a_new_map(world, sent):
    from environments.services.lifecycle import environment_transition

    environment = world["environment"]
    environment_transition(environment, source=S.RUNNING, target=S.STOPPING, message="stopping")
    assert sent == [world["host"].pk]


def test_connection_has_the_ssh_command_config_and_host_key(world):
    host = world["host"]
    host.address = "gpu-7.example.org"
    host.ssh_port = 2222
    host.ssh_host_key = KEYS[0].rsplit(" ", 1)[0]
    host.ssh_host_key_fingerprint = "SHA256:abc"
    host.save()
    environment = world["environment"]
    environment.refresh_from_db()
    ssh = environment_connection(environment).ssh
    assert ssh.user == f"env-{environment.pk}"
    assert ssh.command == f"ssh -p 2222 env-{environment.pk}@gpu-7.example.org"
    assert "HostName gpu-7.example.org" in ssh.config
    assert f"User env-{environment.pk}" in ssh.config
    assert ssh.known_hosts == f"[gpu-7.example.org]:2222 {host.ssh_host_key}"
    assert ssh.host_key_fingerprint == "SHA256:abc"


def test_connection_without_a_gateway_has_no_ssh(world):
    assert environment_connection(world["environment"]).ssh is None


def test_sessions_count_as_activity_for_idle_stop(world):
    from django.utils import timezone

    environment = world["environment"]
    assert access.environment_last_session(environment) is None
    now = timezone.now()
    gateway_sessions_seen(world["host"].pk, [str(environment.pk), "x", "99999"], now)
    environment.refresh_from_db()
    assert access.environment_last_session(environment) == now
    other = EnvironmentFactory(host=world["host"], status=S.RUNNING, container_id="x")
    assert access.environment_last_session(other) is None
    gateway_sessions_seen(world["host"].pk, [], now)  # nothing open: the last moment stays
    environment.host.refresh_from_db()
    assert access.environment_last_session(environment) == now


def test_the_map_costs_four_queries_for_many_environments(world, django_assert_num_queries):
    """Environments, memberships and keys (three), and the host's allocations (one)."""
    for _ in range(5):
        EnvironmentFactory(
            organization=OrganizationFactory(),
            host=world["host"],
            status=S.RUNNING,
            container_id="c",
        )
    with django_assert_num_queries(4):
        host_access_map(world["host"].pk)
