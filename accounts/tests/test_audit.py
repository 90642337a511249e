"""The audit log: what is recorded, that it cannot be changed, who sees what, filters, export."""

import csv
import io
import re
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts.choices import AuditAction, Role
from accounts.models import AuditEvent, Membership
from accounts.services.audit import audit_record
from accounts.services.organizations import organization_set_active, organization_switch
from accounts.services.users import user_set_active
from accounts.tests.factories import PASSWORD, UserFactory

AGENT = "pytest-browser/1.0 (audit)"
IP = "203.0.113.9"
ORIGIN = {"REMOTE_ADDR": IP, "HTTP_USER_AGENT": AGENT}

SSH_KEY = (
    Ed25519PrivateKey.generate()
    .public_key()
    .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    .decode()
)


def _only(action) -> AuditEvent:
    events = list(AuditEvent.objects.filter(action=action))
    assert len(events) == 1, [str(event) for event in events]
    return events[0]


def _assert_origin(event: AuditEvent) -> None:
    assert event.ip == IP
    assert event.user_agent == AGENT


# What is recorded -------------------------------------------------------------------------


def test_login_and_logout_are_recorded(client, member):
    response = client.post(
        "/accounts/login/", {"login": member.email, "password": PASSWORD}, **ORIGIN
    )
    assert response.status_code == 302
    event = _only(AuditAction.LOGIN)
    assert event.actor_id == member.pk
    assert event.actor_email == member.email
    _assert_origin(event)

    response = client.post("/accounts/logout/", **ORIGIN)
    assert response.status_code == 302
    event = _only(AuditAction.LOGOUT)
    assert event.actor_id == member.pk
    _assert_origin(event)


def test_failed_login_is_recorded(client, member):
    response = client.post(
        "/accounts/login/", {"login": member.email, "password": "wrong"}, **ORIGIN
    )
    assert response.status_code == 200
    event = _only(AuditAction.LOGIN_FAILED)
    assert event.actor is None
    assert event.actor_email == member.email
    assert event.details == {"email": member.email}
    _assert_origin(event)
    assert not AuditEvent.objects.filter(action=AuditAction.LOGIN).exists()


def test_token_create_and_revoke_are_recorded(client, member, organization):
    client.force_login(member)
    organization_switch(user=member, organization=organization)
    client.post("/settings/tokens/new/", {"name": "ci", "write_enabled": "on"}, **ORIGIN)
    created = _only(AuditAction.TOKEN_CREATED)
    _assert_origin(created)
    assert created.organization_id == organization.pk
    assert created.details["write_enabled"] is True

    client.post(f"/settings/tokens/{created.target_id}/revoke/", **ORIGIN)
    revoked = _only(AuditAction.TOKEN_REVOKED)
    _assert_origin(revoked)
    assert revoked.target_id == created.target_id
    assert revoked.actor_id == member.pk


def test_ssh_key_add_and_remove_are_recorded(client, member, organization):
    client.force_login(member)
    organization_switch(user=member, organization=organization)
    client.post("/settings/ssh-keys/new/", {"name": "k", "public_key": SSH_KEY}, **ORIGIN)
    added = _only(AuditAction.SSH_KEY_ADDED)
    _assert_origin(added)
    assert added.details["fingerprint"].startswith("SHA256:")
    assert added.organization_id == organization.pk

    client.post(f"/settings/ssh-keys/{added.target_id}/delete/", **ORIGIN)
    removed = _only(AuditAction.SSH_KEY_REMOVED)
    _assert_origin(removed)
    assert removed.details == added.details


def test_member_role_change_and_removal_are_recorded(client, owner, member, organization):
    membership = Membership.objects.get(user=member, organization=organization)
    client.force_login(owner)
    client.post(f"/org/members/{membership.pk}/role/", {"role": Role.ADMIN}, **ORIGIN)
    changed = _only(AuditAction.MEMBER_ROLE_CHANGED)
    _assert_origin(changed)
    assert changed.organization_id == organization.pk
    assert changed.target_repr == member.email
    assert changed.details == {"role": ["member", "admin"]}

    client.post(f"/org/members/{membership.pk}/remove/", **ORIGIN)
    removed = _only(AuditAction.MEMBER_REMOVED)
    _assert_origin(removed)
    assert removed.actor_id == owner.pk
    assert removed.target_id == str(member.pk)


def test_invitation_sent_and_accepted_are_recorded(
    client, owner, organization, django_capture_on_commit_callbacks
):
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            "/org/invitations/new/", {"email": "new@example.com", "role": "member"}, **ORIGIN
        )
    sent = _only(AuditAction.INVITATION_SENT)
    _assert_origin(sent)
    assert sent.organization_id == organization.pk

    invitee = UserFactory(email="new@example.com")
    path = re.search(r"/invitations/[-\w]+/", mail.outbox[0].body).group(0)
    invitee_client = Client()
    invitee_client.force_login(invitee)
    invitee_client.post(path, {"decision": "accept"}, REMOTE_ADDR="198.51.100.4")
    accepted = _only(AuditAction.INVITATION_ACCEPTED)
    assert accepted.actor_id == invitee.pk
    assert accepted.organization_id == organization.pk
    assert accepted.ip == "198.51.100.4"
    assert _only(AuditAction.MEMBER_ADDED).target_id == str(invitee.pk)


def test_operator_disable_enable_user_and_organization_are_recorded(
    client, operator, member, organization
):
    client.force_login(operator)
    client.post(
        "/admin/accounts/user/",
        {"action": "disable_users", "_selected_action": [member.pk]},
        **ORIGIN,
    )
    disabled = _only(AuditAction.USER_DISABLED)
    _assert_origin(disabled)
    assert disabled.actor_id == operator.pk
    assert disabled.target_id == str(member.pk)

    user_set_active(operator=operator, user=member, active=True)
    assert _only(AuditAction.USER_ENABLED).target_id == str(member.pk)

    client.post(
        "/admin/accounts/organization/",
        {"action": "disable_organizations", "_selected_action": [organization.pk]},
        **ORIGIN,
    )
    _assert_origin(_only(AuditAction.ORGANIZATION_DISABLED))
    organization_set_active(operator=operator, organization=organization, active=True)
    assert _only(AuditAction.ORGANIZATION_ENABLED).organization_id == organization.pk


def test_audit_record_without_request_or_user(db):
    event = audit_record(AuditAction.LOGIN_FAILED, actor_email="ghost@example.com")
    assert event.ip is None
    assert event.user_agent == ""
    assert event.actor is None
    assert event.actor_email == "ghost@example.com"


# Append-only ------------------------------------------------------------------------------


def test_audit_events_are_append_only(db):
    event = audit_record(AuditAction.LOGIN_FAILED, actor_email="x@example.com")
    event.actor_email = "changed@example.com"
    with pytest.raises(TypeError):
        event.save()
    with pytest.raises(TypeError):
        event.delete()
    with pytest.raises(TypeError):
        AuditEvent.objects.filter(pk=event.pk).update(actor_email="changed@example.com")
    with pytest.raises(TypeError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(TypeError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).actor_email == "x@example.com"


def test_admin_cannot_change_or_delete_audit_events(client, operator, db):
    event = audit_record(AuditAction.LOGIN_FAILED, actor_email="x@example.com")
    client.force_login(operator)
    assert client.get("/admin/accounts/auditevent/").status_code == 200
    response = client.post(f"/admin/accounts/auditevent/{event.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


# Scope ------------------------------------------------------------------------------------


@pytest.fixture
def scoped_events(owner, outsider, organization, other_organization):
    """One event in each organisation and one with none (a sign-in)."""
    return {
        "mine": audit_record(
            AuditAction.ORGANIZATION_UPDATED, actor=owner, organization=organization
        ),
        "theirs": audit_record(
            AuditAction.ORGANIZATION_UPDATED, actor=outsider, organization=other_organization
        ),
        "global": audit_record(AuditAction.LOGIN, actor=owner),
    }


@pytest.mark.parametrize("role_fixture", ["owner", "admin_user"])
def test_managers_see_only_their_organizations_events(
    request, client, token_client_for, scoped_events, role_fixture
):
    user = request.getfixturevalue(role_fixture)
    client.force_login(user)
    page = client.get("/audit/")
    assert page.status_code == 200
    assert [event.pk for event in page.context["page_obj"]] == [scoped_events["mine"].pk]

    body = token_client_for(user).get("/api/v1/audit-events/").json()
    assert [row["id"] for row in body["results"]] == [scoped_events["mine"].pk]


def test_members_get_404(client, token_client_for, member, scoped_events):
    client.force_login(member)
    assert client.get("/audit/").status_code == 404
    assert client.get("/audit/export.csv").status_code == 404
    assert token_client_for(member).get("/api/v1/audit-events/").json()["results"] == []
    response = token_client_for(member).get(f"/api/v1/audit-events/{scoped_events['mine'].pk}/")
    assert response.status_code == 404


def test_operators_see_everything(client, token_client_for, operator, scoped_events):
    client.force_login(operator)
    page = client.get("/audit/")
    assert page.status_code == 200
    shown = {event.pk for event in page.context["page_obj"]}
    assert {event.pk for event in scoped_events.values()} <= shown

    body = token_client_for(operator).get("/api/v1/audit-events/?page_size=500").json()
    assert {event.pk for event in scoped_events.values()} <= {row["id"] for row in body["results"]}


def test_outsiders_cannot_read_events_by_id(token_client_for, outsider, scoped_events):
    client = token_client_for(outsider)
    assert client.get(f"/api/v1/audit-events/{scoped_events['mine'].pk}/").status_code == 404
    assert client.get(f"/api/v1/audit-events/{scoped_events['theirs'].pk}/").status_code == 200


# Filters ----------------------------------------------------------------------------------


@pytest.fixture
def filter_events(owner, admin_user, organization):
    now = timezone.now()
    old = now - timedelta(days=10)
    return {
        "recent_owner": AuditEvent.objects.create(
            action=AuditAction.TOKEN_CREATED,
            actor=owner,
            actor_email=owner.email,
            organization=organization,
        ),
        "recent_admin": AuditEvent.objects.create(
            action=AuditAction.MEMBER_REMOVED,
            actor=admin_user,
            actor_email=admin_user.email,
            organization=organization,
        ),
        "old_owner": AuditEvent.objects.create(
            action=AuditAction.MEMBER_REMOVED,
            actor=owner,
            actor_email=owner.email,
            organization=organization,
            created_at=old,
        ),
    }


def _portal_ids(client, query):
    response = client.get("/audit/", query)
    assert response.status_code == 200
    return {event.pk for event in response.context["page_obj"]}


def _api_ids(client, query):
    response = client.get("/api/v1/audit-events/", query)
    assert response.status_code == 200
    return {row["id"] for row in response.json()["results"]}


def test_filters(client, token_client_for, owner, admin_user, filter_events):
    client.force_login(owner)
    api = token_client_for(owner)
    ids = {name: event.pk for name, event in filter_events.items()}
    since = (timezone.now() - timedelta(days=2)).date().isoformat()
    until = (timezone.now() - timedelta(days=5)).date().isoformat()
    cases = [
        ({"action": AuditAction.MEMBER_REMOVED}, {ids["recent_admin"], ids["old_owner"]}),
        ({"action": AuditAction.TOKEN_CREATED}, {ids["recent_owner"]}),
        ({"actor": admin_user.email.split("@")[0]}, {ids["recent_admin"]}),
        ({"since": since}, {ids["recent_owner"], ids["recent_admin"]}),
        ({"until": until}, {ids["old_owner"]}),
        ({"action": AuditAction.MEMBER_REMOVED, "since": since}, {ids["recent_admin"]}),
    ]
    for query, expected in cases:
        assert _portal_ids(client, query) == expected, query
        assert _api_ids(api, query) == expected, query


def test_invalid_filter_is_400_not_500(client, token_client_for, owner, filter_events):
    response = token_client_for(owner).get("/api/v1/audit-events/", {"action": "nonsense"})
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["action"]
    client.force_login(owner)
    assert client.get("/audit/", {"since": "not-a-date"}).status_code == 200


# CSV export -------------------------------------------------------------------------------


def _csv(response) -> list[list[str]]:
    text = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(text)))


def test_csv_export_has_header_and_only_callers_rows(client, owner, scoped_events, organization):
    client.force_login(owner)
    response = client.get("/audit/export.csv", REMOTE_ADDR=IP, HTTP_USER_AGENT=AGENT)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    rows = _csv(response)
    assert rows[0] == [
        "time",
        "actor",
        "organization",
        "action",
        "target_type",
        "target_id",
        "target",
        "ip",
        "user_agent",
        "details",
    ]
    assert len(rows) == 2
    assert rows[1][1] == owner.email
    assert rows[1][2] == organization.slug
    assert rows[1][3] == AuditAction.ORGANIZATION_UPDATED


def test_csv_export_applies_filters(client, owner, filter_events):
    client.force_login(owner)
    rows = _csv(client.get("/audit/export.csv", {"action": AuditAction.MEMBER_REMOVED}))
    assert len(rows) == 3
    assert {row[3] for row in rows[1:]} == {AuditAction.MEMBER_REMOVED}


def test_csv_export_for_operator_includes_everything(client, operator, scoped_events):
    client.force_login(operator)
    rows = _csv(client.get("/audit/export.csv"))
    assert {row[3] for row in rows[1:]} >= {AuditAction.ORGANIZATION_UPDATED, AuditAction.LOGIN}
    assert len(rows) - 1 == AuditEvent.objects.count()
