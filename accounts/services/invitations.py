from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from remotegpu.core.errors import Conflict, NotFound, PermissionDenied, ValidationError

from ..choices import MANAGER_ROLES, AuditAction, InvitationStatus, Role
from ..models import Invitation, Membership, Organization, User
from .audit import audit_record
from .notifications import notification_create
from .organizations import membership_add, membership_require_role
from .users import user_language


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def invitation_url(key: str) -> str:
    return settings.SITE_URL.rstrip("/") + reverse("accounts:invitation_respond", args=[key])


def _send(invitation: Invitation, key: str) -> None:
    context = {
        "invitation": invitation,
        "url": invitation_url(key),
        "organization": invitation.organization,
        "inviter": invitation.invited_by,
    }
    subject = _("You are invited to join %(organization)s on RemoteGPU") % {
        "organization": invitation.organization.name
    }
    body = render_to_string("accounts/email/invitation.txt", context)
    transaction.on_commit(
        lambda: send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [invitation.email])
    )


def _issue_key(invitation: Invitation) -> str:
    key = secrets.token_urlsafe(32)
    invitation.key_digest = _digest(key)
    invitation.expires_at = timezone.now() + timedelta(days=settings.INVITATION_EXPIRY_DAYS)
    invitation.sent_at = timezone.now()
    invitation.send_count += 1
    return key


@transaction.atomic
def invitation_create(
    *, actor: User, organization: Organization, email: str, role: str = Role.MEMBER
) -> tuple[Invitation, str]:
    """Invite an e-mail address; returns the invitation and the key its link carries."""
    actor_role = membership_require_role(actor, organization, MANAGER_ROLES)
    email = email.strip().lower()
    if role not in Role.values:
        raise ValidationError.for_field("role", _("Unknown role."))
    if role == Role.OWNER and actor_role != Role.OWNER:
        raise PermissionDenied(_("Only owners can invite owners."))
    if Membership.objects.filter(organization=organization, user__email__iexact=email).exists():
        raise ValidationError.for_field("email", _("This person is already a member."))
    if Invitation.objects.filter(
        organization=organization, email__iexact=email, status=InvitationStatus.PENDING
    ).exists():
        raise ValidationError.for_field(
            "email", _("An invitation to this address is already pending; resend it instead.")
        )
    invitation = Invitation(organization=organization, email=email, role=role, invited_by=actor)
    key = _issue_key(invitation)
    invitation.save()
    _send(invitation, key)
    audit_record(
        AuditAction.INVITATION_SENT,
        actor=actor,
        organization=organization,
        target=invitation,
        details={"email": email, "role": role},
    )
    return invitation, key


def _require_pending(invitation: Invitation) -> None:
    if invitation.status != InvitationStatus.PENDING:
        raise Conflict(
            _("This invitation is %(status)s.") % {"status": invitation.get_status_display()}
        )


@transaction.atomic
def invitation_resend(*, actor: User, invitation: Invitation) -> str:
    """Send a fresh link (the old one stops working) and restart the expiry clock."""
    membership_require_role(actor, invitation.organization, MANAGER_ROLES)
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.status == InvitationStatus.EXPIRED:
        invitation.status = InvitationStatus.PENDING
    _require_pending(invitation)
    key = _issue_key(invitation)
    invitation.save()
    _send(invitation, key)
    audit_record(
        AuditAction.INVITATION_RESENT,
        actor=actor,
        organization=invitation.organization,
        target=invitation,
    )
    return key


@transaction.atomic
def invitation_revoke(*, actor: User, invitation: Invitation) -> Invitation:
    membership_require_role(actor, invitation.organization, MANAGER_ROLES)
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    _require_pending(invitation)
    invitation.status = InvitationStatus.REVOKED
    invitation.responded_at = timezone.now()
    invitation.save(update_fields=["status", "responded_at", "updated_at"])
    audit_record(
        AuditAction.INVITATION_REVOKED,
        actor=actor,
        organization=invitation.organization,
        target=invitation,
    )
    return invitation


def invitation_get_by_key(key: str) -> Invitation:
    invitation = (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(key_digest=_digest(key))
        .first()
    )
    if invitation is None:
        raise NotFound(_("This invitation link is not valid."))
    return invitation


def _respondable(user: User, key: str) -> Invitation:
    invitation = invitation_get_by_key(key)
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.email.lower() != user.email.lower():
        raise PermissionDenied(
            _("This invitation was sent to another e-mail address. Sign in as its recipient.")
        )
    if invitation.is_expired:
        raise Conflict(_("This invitation has expired. Ask for a new one."))
    _require_pending(invitation)
    return invitation


@transaction.atomic
def invitation_accept(*, user: User, key: str) -> Membership:
    invitation = _respondable(user, key)
    if not invitation.organization.is_active:
        raise PermissionDenied(_("This organisation has been disabled by an operator."))
    invitation.status = InvitationStatus.ACCEPTED
    invitation.responded_at = timezone.now()
    invitation.save(update_fields=["status", "responded_at", "updated_at"])
    membership = membership_add(
        actor=user, organization=invitation.organization, user=user, role=invitation.role
    )
    user.current_organization = invitation.organization
    user.save(update_fields=["current_organization"])
    audit_record(
        AuditAction.INVITATION_ACCEPTED,
        actor=user,
        organization=invitation.organization,
        target=invitation,
    )
    if invitation.invited_by_id:
        with translation.override(user_language(invitation.invited_by)):
            title = _("%(email)s joined %(organization)s") % {
                "email": user.email,
                "organization": invitation.organization.name,
            }
        notification_create(
            invitation.invited_by,
            title,
            organization=invitation.organization,
            url=reverse("accounts:member_list"),
        )
    return membership


@transaction.atomic
def invitation_decline(*, user: User, key: str) -> Invitation:
    invitation = _respondable(user, key)
    invitation.status = InvitationStatus.DECLINED
    invitation.responded_at = timezone.now()
    invitation.save(update_fields=["status", "responded_at", "updated_at"])
    audit_record(
        AuditAction.INVITATION_DECLINED,
        actor=user,
        organization=invitation.organization,
        target=invitation,
    )
    return invitation


def invitation_expire_due() -> int:
    """Mark pending invitations past their expiry as expired (run by beat)."""
    return Invitation.objects.filter(
        status=InvitationStatus.PENDING, expires_at__lte=timezone.now()
    ).update(status=InvitationStatus.EXPIRED)
