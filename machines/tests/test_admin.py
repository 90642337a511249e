"""The fleet's admin: its actions and edits go through the services (rules and audit)."""

from __future__ import annotations

import json

import pytest
from django.contrib.messages import get_messages
from django.test import Client

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from machines.choices import CommandStatus, HostStatus
from machines.models import AgentCommand, Host, HostCredential, JoinToken

from .factories import HostFactory, host_joined, join_token_issue


@pytest.fixture
def admin_client(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def _action(client, model: str, action: str, objects) -> list[str]:
    response = client.post(
        f"/admin/machines/{model}/",
        {"action": action, "_selected_action": [str(o.pk) for o in objects]},
        follow=True,
    )
    assert response.status_code == 200
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_status_action_changes_what_it_may_and_reports_the_rest(admin_client):
    online = HostFactory(name="a-online", status=HostStatus.ONLINE)
    retired = HostFactory(name="b-retired", status=HostStatus.RETIRED)

    notes = _action(admin_client, "host", "set_maintenance", [online, retired])

    assert Host.objects.get(pk=online.pk).status == HostStatus.MAINTENANCE
    assert Host.objects.get(pk=retired.pk).status == HostStatus.RETIRED
    assert any("b-retired" in note for note in notes)
    assert "1 hosts changed." in notes
    assert AuditEvent.objects.filter(action=AuditAction.HOST_STATUS_CHANGED).count() == 1


def test_revoke_credentials_and_ping_actions(admin_client):
    joined = host_joined("gpu-admin")

    _action(admin_client, "host", "ping", [joined.host])
    _action(admin_client, "host", "revoke_credentials", [joined.host])

    command = AgentCommand.objects.get(host=joined.host)
    assert (command.kind, command.status) == ("ping", CommandStatus.PENDING)
    assert not HostCredential.objects.filter(host=joined.host, revoked_at__isnull=True).exists()


def test_join_token_revoke_action(admin_client, operator):
    issued = join_token_issue(operator)
    _action(admin_client, "jointoken", "revoke", [issued.join_token])
    assert JoinToken.objects.get(pk=issued.join_token.pk).revoked_at is not None


def _host_form(host, labels) -> dict:
    return {
        "name": host.name,
        "address": host.address,
        "region": host.region_id,
        "labels": json.dumps(labels) if not isinstance(labels, str) else labels,
        "heartbeat_interval": host.heartbeat_interval,
        "port_range_start": host.port_range_start,
        "port_range_end": host.port_range_end,
        "gpus-TOTAL_FORMS": "0",
        "gpus-INITIAL_FORMS": "0",
        "gpus-MIN_NUM_FORMS": "0",
        "gpus-MAX_NUM_FORMS": "1000",
    }


def test_labels_edited_in_the_admin_are_validated_and_audited(admin_client):
    host = HostFactory(labels={"old": "1"})
    url = f"/admin/machines/host/{host.pk}/change/"

    for bad in (["gpu=a100"], {"bad key": "x"}, "not json"):
        response = admin_client.post(url, _host_form(host, bad))
        assert response.status_code == 200  # the form again, with its error
        assert response.context["adminform"].form.errors["labels"]
        assert Host.objects.get(pk=host.pk).labels == {"old": "1"}

    response = admin_client.post(url, _host_form(host, {"gpu": "h100"}))
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Host.objects.get(pk=host.pk).labels == {"gpu": "h100"}
    event = AuditEvent.objects.get(action=AuditAction.HOST_LABELS_CHANGED)
    assert event.details == {"labels": [{"old": "1"}, {"gpu": "h100"}]}


def test_join_token_labels_are_validated_in_the_admin(admin_client, operator):
    issued = join_token_issue(operator, labels={"a": "b"})
    token = issued.join_token
    response = admin_client.post(
        f"/admin/machines/jointoken/{token.pk}/change/",
        {
            "name": token.name,
            "region": "",
            "labels": json.dumps(["x"]),
            "expires_at_0": token.expires_at.strftime("%Y-%m-%d"),
            "expires_at_1": token.expires_at.strftime("%H:%M:%S"),
            "max_uses": token.max_uses,
        },
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["labels"]
    assert JoinToken.objects.get(pk=token.pk).labels == {"a": "b"}
