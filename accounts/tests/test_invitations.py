"""Invitations: e-mailed links, accepting and declining, resending, revoking, expiry."""

import re
from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from accounts.choices import AuditAction, InvitationStatus, Role
from accounts.models import AuditEvent, Invitation, Membership, Notification, User
from accounts.services.invitations import (
    invitation_accept,
    invitation_create,
    invitation_decline,
    invitation_expire_due,
    invitation_resend,
    invitation_revoke,
)
from accounts.tasks import invitation_expire_task
from accounts.tests.factories import UserFactory
from remotegpu.core.errors import Conflict, NotFound, PermissionDenied, ValidationError

LINK = re.compile(r"https?://\S+/invitations/(?P<key>[-\w]+)/")


@pytest.fixture
def invitee(db):
    return UserFactory(email="invitee@example.com")


def _link_path(message) -> str:
    match = LINK.search(message.body)
    assert match, message.body
    return f"/invitations/{match['key']}/"


def _invite(actor, organization, email="invitee@example.com", role=Role.MEMBER, capture=None):
    """Create an invitation, running on-commit callbacks so that its e-mail is sent."""
    with capture(execute=True):
        return invitation_create(actor=actor, organization=organization, email=email, role=role)


def _messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def test_create_sends_one_email_with_link(
    owner, organization, django_capture_on_commit_callbacks, settings
):
    settings.SITE_URL = "https://gpu.example.com/"
    invitation, key = _invite(
        owner,
        organization,
        email=" Invitee@Example.com ",
        capture=django_capture_on_commit_callbacks,
    )
    assert invitation.email == "invitee@example.com"
    assert invitation.status == InvitationStatus.PENDING
    assert invitation.send_count == 1
    assert key not in invitation.key_digest
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["invitee@example.com"]
    assert organization.name in message.subject
    assert f"https://gpu.example.com/invitations/{key}/" in message.body
    assert owner.email in message.body
    event = AuditEvent.objects.get(action=AuditAction.INVITATION_SENT)
    assert event.details == {"email": "invitee@example.com", "role": Role.MEMBER}


def test_no_email_when_transaction_does_not_commit(owner, organization):
    invitation_create(actor=owner, organization=organization, email="x@example.com")
    assert mail.outbox == []  # on_commit callbacks never ran: nothing is sent early


def test_accept_via_portal_link(
    client, owner, organization, invitee, django_capture_on_commit_callbacks
):
    _invite(owner, organization, role=Role.ADMIN, capture=django_capture_on_commit_callbacks)
    path = _link_path(mail.outbox[0])

    # Signed out, the link leads to the sign-in page and back.
    response = client.get(path)
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")

    client.force_login(invitee)
    page = client.get(path)
    assert page.status_code == 200
    assert page.context["wrong_recipient"] is False
    assert b'value="accept"' in page.content

    response = client.post(path, {"decision": "accept"})
    assert response.status_code == 302
    assert response.url == "/"
    membership = Membership.objects.get(user=invitee, organization=organization)
    assert membership.role == Role.ADMIN
    invitation = Invitation.objects.get()
    assert invitation.status == InvitationStatus.ACCEPTED
    assert invitation.responded_at is not None
    invitee.refresh_from_db()
    assert invitee.current_organization == organization
    assert client.get("/").context["organization"] == organization
    # The inviter hears about it.
    assert Notification.objects.filter(user=owner, title__contains=invitee.email).exists()
    assert AuditEvent.objects.filter(
        action=AuditAction.INVITATION_ACCEPTED, actor=invitee, organization=organization
    ).exists()

    # A used link cannot be used again.
    response = client.post(path, {"decision": "accept"})
    assert response.status_code == 200
    assert "This invitation is Accepted." in _messages(response)


def test_wrong_email_is_refused(
    client, owner, organization, invitee, member, django_capture_on_commit_callbacks
):
    _invite(owner, organization, capture=django_capture_on_commit_callbacks)
    path = _link_path(mail.outbox[0])
    stranger = UserFactory()
    client.force_login(stranger)
    page = client.get(path)
    assert page.status_code == 200
    assert page.context["wrong_recipient"] is True
    assert b'value="accept"' not in page.content

    response = client.post(path, {"decision": "accept"})
    assert response.status_code == 200
    assert any("another e-mail address" in message for message in _messages(response))
    assert not Membership.objects.filter(user=stranger).exists()
    assert Invitation.objects.get().status == InvitationStatus.PENDING

    key = path.split("/")[2]
    with pytest.raises(PermissionDenied):
        invitation_decline(user=stranger, key=key)
    assert Invitation.objects.get().status == InvitationStatus.PENDING


def test_decline_via_portal(
    client, owner, organization, invitee, django_capture_on_commit_callbacks
):
    _invite(owner, organization, capture=django_capture_on_commit_callbacks)
    path = _link_path(mail.outbox[0])
    client.force_login(invitee)
    response = client.post(path, {"decision": "decline"})
    assert response.status_code == 302
    assert Invitation.objects.get().status == InvitationStatus.DECLINED
    assert not Membership.objects.filter(user=invitee, organization=organization).exists()
    assert AuditEvent.objects.filter(action=AuditAction.INVITATION_DECLINED).exists()


def test_revoke(owner, organization, invitee):
    invitation, key = invitation_create(actor=owner, organization=organization, email=invitee.email)
    invitation_revoke(actor=owner, invitation=invitation)
    invitation.refresh_from_db()
    assert invitation.status == InvitationStatus.REVOKED
    with pytest.raises(Conflict):
        invitation_accept(user=invitee, key=key)
    with pytest.raises(Conflict):
        invitation_revoke(actor=owner, invitation=invitation)
    assert not Membership.objects.filter(user=invitee, organization=organization).exists()


def test_member_cannot_revoke_or_resend(owner, member, organization, invitee):
    invitation, _key = invitation_create(
        actor=owner, organization=organization, email=invitee.email
    )
    with pytest.raises(PermissionDenied):
        invitation_revoke(actor=member, invitation=invitation)
    with pytest.raises(PermissionDenied):
        invitation_resend(actor=member, invitation=invitation)
    invitation.refresh_from_db()
    assert invitation.status == InvitationStatus.PENDING


def test_portal_revoke(client, owner, organization, invitee):
    invitation, _key = invitation_create(
        actor=owner, organization=organization, email=invitee.email
    )
    client.force_login(owner)
    response = client.post(f"/org/invitations/{invitation.pk}/revoke/")
    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.status == InvitationStatus.REVOKED


def test_resend_issues_new_key_and_resets_expiry(
    client, owner, organization, invitee, django_capture_on_commit_callbacks
):
    invitation, old_key = _invite(owner, organization, capture=django_capture_on_commit_callbacks)
    soon = timezone.now() + timedelta(hours=1)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=soon)

    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/org/invitations/{invitation.pk}/resend/")
    assert response.status_code == 302
    assert len(mail.outbox) == 2
    new_path = _link_path(mail.outbox[1])
    assert old_key not in new_path

    invitation.refresh_from_db()
    assert invitation.send_count == 2
    assert invitation.expires_at > timezone.now() + timedelta(days=6)
    assert AuditEvent.objects.filter(action=AuditAction.INVITATION_RESENT).count() == 1

    client.force_login(invitee)
    assert client.get(f"/invitations/{old_key}/").status_code == 404
    with pytest.raises(NotFound):
        invitation_accept(user=invitee, key=old_key)
    assert client.post(new_path, {"decision": "accept"}).status_code == 302
    assert Membership.objects.filter(user=invitee, organization=organization).exists()


def test_expired_invitation_is_refused(client, owner, organization, invitee):
    invitation, key = invitation_create(actor=owner, organization=organization, email=invitee.email)
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(minutes=1)
    )
    with pytest.raises(Conflict) as caught:
        invitation_accept(user=invitee, key=key)
    assert "expired" in str(caught.value.message)

    client.force_login(invitee)
    page = client.get(f"/invitations/{key}/")
    assert page.status_code == 200
    assert b'value="accept"' not in page.content
    assert b"This invitation has expired" in page.content
    response = client.post(f"/invitations/{key}/", {"decision": "accept"})
    assert response.status_code == 200
    assert not Membership.objects.filter(user=invitee, organization=organization).exists()


def test_invitation_expire_due(owner, organization):
    due, _ = invitation_create(actor=owner, organization=organization, email="due@example.com")
    _fresh, _ = invitation_create(actor=owner, organization=organization, email="new@example.com")
    revoked, _ = invitation_create(actor=owner, organization=organization, email="rev@example.com")
    invitation_revoke(actor=owner, invitation=revoked)
    past = timezone.now() - timedelta(seconds=1)
    Invitation.objects.filter(pk__in=[due.pk, revoked.pk]).update(expires_at=past)

    assert invitation_expire_due() == 1
    assert invitation_expire_task.delay().get() == 0  # the beat task wraps the same service
    statuses = dict(Invitation.objects.values_list("email", "status"))
    assert statuses == {
        "due@example.com": InvitationStatus.EXPIRED,
        "new@example.com": InvitationStatus.PENDING,
        "rev@example.com": InvitationStatus.REVOKED,
    }


def test_resending_expired_invitation_reopens_it(owner, organization, invitee):
    invitation, _ = invitation_create(actor=owner, organization=organization, email=invitee.email)
    Invitation.objects.filter(pk=invitation.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    invitation_expire_due()
    key = invitation_resend(actor=owner, invitation=invitation)
    invitation.refresh_from_db()
    assert invitation.status == InvitationStatus.PENDING
    invitation_accept(user=invitee, key=key)
    assert Membership.objects.filter(user=invitee, organization=organization).exists()


def test_duplicate_pending_invitation_is_field_error(owner, organization):
    invitation_create(actor=owner, organization=organization, email="dup@example.com")
    with pytest.raises(ValidationError) as caught:
        invitation_create(actor=owner, organization=organization, email="DUP@example.com")
    assert "already pending" in caught.value.fields["email"][0]
    assert Invitation.objects.count() == 1


def test_new_invitation_allowed_after_decline(owner, organization, invitee):
    _invitation, key = invitation_create(
        actor=owner, organization=organization, email=invitee.email
    )
    invitation_decline(user=invitee, key=key)
    invitation_create(actor=owner, organization=organization, email=invitee.email)
    assert Invitation.objects.filter(status=InvitationStatus.PENDING).count() == 1


def test_inviting_existing_member_is_field_error(owner, member, organization):
    with pytest.raises(ValidationError) as caught:
        invitation_create(actor=owner, organization=organization, email=member.email.upper())
    assert caught.value.fields["email"] == ["This person is already a member."]
    assert not Invitation.objects.exists()


def test_admin_cannot_invite_owner(admin_user, organization):
    with pytest.raises(PermissionDenied):
        invitation_create(
            actor=admin_user, organization=organization, email="o@example.com", role=Role.OWNER
        )
    assert not Invitation.objects.exists()


def test_owner_can_invite_owner(owner, organization):
    invitation, _key = invitation_create(
        actor=owner, organization=organization, email="o@example.com", role=Role.OWNER
    )
    assert invitation.role == Role.OWNER


def test_member_cannot_invite(member, organization):
    with pytest.raises(PermissionDenied):
        invitation_create(actor=member, organization=organization, email="x@example.com")


def test_unknown_role_is_field_error(owner, organization):
    with pytest.raises(ValidationError) as caught:
        invitation_create(
            actor=owner, organization=organization, email="x@example.com", role="king"
        )
    assert caught.value.fields["role"]


def test_portal_invite_and_errors(
    client, owner, member, organization, django_capture_on_commit_callbacks
):
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/org/invitations/new/", {"email": "friend@example.com", "role": Role.MEMBER}
        )
    assert response.status_code == 302
    assert len(mail.outbox) == 1

    response = client.post(
        "/org/invitations/new/", {"email": member.email, "role": Role.MEMBER}, follow=True
    )
    assert "This person is already a member." in _messages(response)

    page = client.get("/org/members/")
    assert "friend@example.com" in page.content.decode()


def test_accepting_into_disabled_organization_is_refused(operator, owner, organization, invitee):
    from accounts.services.organizations import organization_set_active

    _invitation, key = invitation_create(
        actor=owner, organization=organization, email=invitee.email
    )
    organization_set_active(operator=operator, organization=organization, active=False)
    with pytest.raises(PermissionDenied):
        invitation_accept(user=invitee, key=key)
    assert not Membership.objects.filter(user=invitee).exists()


def test_unknown_link_is_404(client, invitee):
    client.force_login(invitee)
    assert client.get("/invitations/not-a-real-key/").status_code == 404


@pytest.mark.django_db
def test_invitation_link_lets_its_holder_sign_up_when_signup_is_closed(
    client, owner, organization, settings
):
    settings.SIGNUP_OPEN = False
    _, key = invitation_create(actor=owner, organization=organization, email="new@example.com")
    closed = client.get("/accounts/signup/")
    assert "account/signup_closed.html" in [t.name for t in closed.templates]

    response = client.get(f"/invitations/{key}/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")

    response = client.post(
        "/accounts/signup/",
        {
            "email": "new@example.com",
            "password1": "a-Long-passw0rd!",
            "password2": "a-Long-passw0rd!",
        },
    )
    assert response.status_code == 302
    assert User.objects.filter(email="new@example.com").exists()


@pytest.mark.django_db
def test_closed_signup_refuses_people_without_an_invitation(client, settings):
    settings.SIGNUP_OPEN = False
    client.post(
        "/accounts/signup/",
        {
            "email": "x@example.com",
            "password1": "a-Long-passw0rd!",
            "password2": "a-Long-passw0rd!",
        },
    )
    assert not User.objects.filter(email="x@example.com").exists()
