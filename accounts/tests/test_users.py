"""Operators disabling and enabling users: sign-in, live sessions and tokens all stop at once."""

import pytest
from django.contrib.sessions.models import Session
from django.test import Client

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from accounts.services.users import user_end_sessions, user_set_active
from accounts.tests.factories import PASSWORD
from remotegpu.core.errors import PermissionDenied


def _sessions_of(user) -> int:
    return sum(
        1
        for session in Session.objects.all()
        if str(session.get_decoded().get("_auth_user_id")) == str(user.pk)
    )


def _login(client, user, password=PASSWORD):
    return client.post("/accounts/login/", {"login": user.email, "password": password})


def _assert_disabled(member, signed_in: Client, bearer) -> None:
    member.refresh_from_db()
    assert member.is_active is False
    # The open session is gone: the next request is anonymous and sent to sign in.
    response = signed_in.get("/")
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")
    assert _sessions_of(member) == 0
    # No new sign-in.
    fresh = Client()
    response = _login(fresh, member)
    assert "_auth_user_id" not in fresh.session
    assert fresh.get("/").status_code == 302
    # Tokens are refused.
    response = bearer.get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "This user account is disabled."


@pytest.fixture
def signed_in(member):
    client = Client()
    assert _login(client, member).status_code == 302
    assert client.get("/").status_code == 200
    return client


def test_disable_user_via_service(
    member, operator, signed_in, token_client_for, django_capture_on_commit_callbacks
):
    bearer = token_client_for(member)
    assert bearer.get("/api/v1/me/").status_code == 200
    assert _sessions_of(member) == 1

    with django_capture_on_commit_callbacks(execute=True):
        user_set_active(operator=operator, user=member, active=False)
    _assert_disabled(member, signed_in, bearer)
    event = AuditEvent.objects.get(action=AuditAction.USER_DISABLED)
    assert event.actor_id == operator.pk
    assert event.target_id == str(member.pk)


def test_disable_user_via_admin_action(
    client, member, operator, signed_in, token_client_for, django_capture_on_commit_callbacks
):
    bearer = token_client_for(member)
    client.force_login(operator)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/accounts/user/",
            {"action": "disable_users", "_selected_action": [member.pk, operator.pk]},
        )
    assert response.status_code == 302
    _assert_disabled(member, signed_in, bearer)
    # An operator's own account is left out of a bulk disable.
    operator.refresh_from_db()
    assert operator.is_active is True
    assert client.get("/admin/accounts/user/").status_code == 200


def test_reenable_restores_access(member, operator, token_client_for):
    bearer = token_client_for(member)
    user_set_active(operator=operator, user=member, active=False)
    assert bearer.get("/api/v1/me/").status_code == 401

    user_set_active(operator=operator, user=member, active=True)
    member.refresh_from_db()
    assert member.is_active is True
    assert bearer.get("/api/v1/me/").status_code == 200
    client = Client()
    assert _login(client, member).status_code == 302
    assert client.get("/").status_code == 200
    assert list(
        AuditEvent.objects.exclude(action=AuditAction.TOKEN_CREATED)
        .order_by("id")
        .values_list("action", flat=True)
    ) == [AuditAction.USER_DISABLED, AuditAction.USER_ENABLED, AuditAction.LOGIN]


def test_reenable_via_admin_action(client, member, operator):
    user_set_active(operator=operator, user=member, active=False)
    client.force_login(operator)
    response = client.post(
        "/admin/accounts/user/", {"action": "enable_users", "_selected_action": [member.pk]}
    )
    assert response.status_code == 302
    member.refresh_from_db()
    assert member.is_active is True


def test_setting_same_state_records_nothing(member, operator):
    user_set_active(operator=operator, user=member, active=True)
    assert not AuditEvent.objects.exists()


def test_non_operator_cannot_disable(member, owner):
    with pytest.raises(PermissionDenied):
        user_set_active(operator=owner, user=member, active=False)
    member.refresh_from_db()
    assert member.is_active is True
    assert not AuditEvent.objects.exists()


def test_operator_cannot_disable_self(operator):
    with pytest.raises(PermissionDenied):
        user_set_active(operator=operator, user=operator, active=False)
    operator.refresh_from_db()
    assert operator.is_active is True


def test_non_operator_cannot_use_admin(client, owner, member):
    client.force_login(owner)
    response = client.post(
        "/admin/accounts/user/", {"action": "disable_users", "_selected_action": [member.pk]}
    )
    assert response.status_code == 302
    assert response.url.startswith("/admin/login/")
    member.refresh_from_db()
    assert member.is_active is True


def test_end_sessions_leaves_other_users_alone(member, owner):
    mine, theirs = Client(), Client()
    _login(mine, member)
    _login(theirs, owner)
    assert user_end_sessions(member) == 1
    assert _sessions_of(member) == 0
    assert _sessions_of(owner) == 1
    assert theirs.get("/").status_code == 200
