"""Reads of accounts: every query that scopes data to a user or organisation lives here."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from .choices import MANAGER_ROLES, InvitationStatus
from .models import (
    APIToken,
    AuditEvent,
    Invitation,
    Membership,
    Notification,
    Organization,
    SSHKey,
    User,
)


def organization_list_for_user(user: User) -> QuerySet[Organization]:
    """Organisations the user belongs to (operators: all), with member counts."""
    queryset = Organization.objects.all()
    if not user.is_staff:
        # A subquery, not a join: joining the user's memberships would make the count below
        # count only that one membership.
        queryset = queryset.filter(
            pk__in=Membership.objects.filter(user=user).values("organization_id")
        )
    return queryset.annotate(member_count=Count("memberships", distinct=True)).order_by("name")


def organization_get_for_user(user: User, slug: str) -> Organization | None:
    queryset = Organization.objects.all()
    if not user.is_staff:
        queryset = queryset.filter(memberships__user=user)
    return queryset.filter(slug=slug).first()


def organization_default_for_user(user: User) -> Organization | None:
    """The organisation a request that names none works in: the user's remembered one while
    they are still an active member, else their personal one, else their oldest."""
    memberships = Membership.objects.filter(user=user, organization__is_active=True).select_related(
        "organization"
    )
    if user.current_organization_id:
        current = memberships.filter(organization_id=user.current_organization_id).first()
        if current is not None:
            return current.organization
    first = memberships.order_by("-organization__is_personal", "created_at").first()
    return first.organization if first is not None else None


def membership_list(organization: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization=organization)
        .select_related("user")
        .order_by("user__email")
    )


def invitation_list(organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(organization=organization).select_related("invited_by")


def invitation_list_pending_for_user(user: User) -> QuerySet[Invitation]:
    return Invitation.objects.filter(
        email__iexact=user.email, status=InvitationStatus.PENDING
    ).select_related("organization", "invited_by")


def token_list(user: User) -> QuerySet[APIToken]:
    return APIToken.objects.filter(user=user)


def ssh_key_list(user: User) -> QuerySet[SSHKey]:
    return SSHKey.objects.filter(user=user)


def audit_event_list_for_user(user: User) -> QuerySet[AuditEvent]:
    """Operators see every event; owners and admins see their organisations' events."""
    queryset = AuditEvent.objects.select_related("organization")
    if user.is_staff:
        return queryset
    managed = Membership.objects.filter(user=user, role__in=MANAGER_ROLES).values("organization_id")
    return queryset.filter(organization_id__in=managed)


def notification_list(user: User) -> QuerySet[Notification]:
    return Notification.objects.filter(user=user)


def dashboard_figures(organization: Organization) -> dict:
    """The organisation's real figures for the dashboard, in one query per table."""
    members = Membership.objects.filter(organization=organization)
    user_ids = members.values("user_id")
    figures = members.aggregate(
        members=Count("id"),
        admins=Count("id", filter=Q(role__in=MANAGER_ROLES)),
    )
    figures["tokens"] = APIToken.objects.filter(
        user_id__in=user_ids, revoked_at__isnull=True
    ).count()
    figures["ssh_keys"] = SSHKey.objects.filter(user_id__in=user_ids).count()
    figures["pending_invitations"] = Invitation.objects.filter(
        organization=organization, status=InvitationStatus.PENDING
    ).count()
    return figures
