from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils.crypto import get_random_string
from django.utils.text import slugify
from django.utils.translation import gettext as _

from remotegpu.core.errors import NotFound, PermissionDenied, ValidationError

from ..choices import MANAGER_ROLES, AuditAction, Role
from ..models import Membership, Organization, User
from .audit import audit_record
from .users import user_require_operator

RESERVED_SLUGS = frozenset({"new", "admin", "api", "static", "media", "settings"})


def _unique_slug(name: str) -> str:
    base = slugify(name)[:50] or "org"
    if base in RESERVED_SLUGS:
        base = f"{base}-org"
    slug = base
    while Organization.objects.filter(slug=slug).exists():
        slug = f"{base}-{get_random_string(4, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
    return slug


def _validate_slug(slug: str) -> None:
    if slug != slugify(slug) or not slug:
        raise ValidationError.for_field(
            "slug", _("Use lower-case letters, digits and hyphens only.")
        )
    if slug in RESERVED_SLUGS:
        raise ValidationError.for_field("slug", _("This name is reserved."))
    if Organization.objects.filter(slug=slug).exists():
        raise ValidationError.for_field("slug", _("This slug is already taken."))


@transaction.atomic
def organization_create(
    *, user: User, name: str, slug: str = "", is_personal: bool = False
) -> Organization:
    """Create an organisation with ``user`` as its owner and make it the user's current one."""
    name = name.strip()
    if not name:
        raise ValidationError.for_field("name", _("A name is required."))
    if slug:
        _validate_slug(slug)
    else:
        slug = _unique_slug(name)
    try:
        with transaction.atomic():
            organization = Organization.objects.create(
                name=name, slug=slug, is_personal=is_personal
            )
    except IntegrityError as exc:
        raise ValidationError.for_field("slug", _("This slug is already taken.")) from exc
    Membership.objects.create(user=user, organization=organization, role=Role.OWNER)
    user.current_organization = organization
    user.save(update_fields=["current_organization"])
    audit_record(
        AuditAction.ORGANIZATION_CREATED, actor=user, organization=organization, target=organization
    )
    return organization


def organization_create_personal(user: User) -> Organization:
    label = user.name or user.email.split("@")[0]
    return organization_create(
        user=user, name=_("%(name)s's workspace") % {"name": label}, is_personal=True
    )


@transaction.atomic
def organization_update(*, actor: User, organization: Organization, name: str) -> Organization:
    membership_require_role(actor, organization, MANAGER_ROLES)
    name = name.strip()
    if not name:
        raise ValidationError.for_field("name", _("A name is required."))
    before = organization.name
    organization.name = name
    organization.save(update_fields=["name", "updated_at"])
    audit_record(
        AuditAction.ORGANIZATION_UPDATED,
        actor=actor,
        organization=organization,
        target=organization,
        details={"name": [before, name]},
    )
    return organization


def membership_get(user: User, organization: Organization) -> Membership | None:
    return Membership.objects.filter(user=user, organization=organization).first()


def membership_role(user: User, organization: Organization) -> str | None:
    """The user's role in the organisation; operators act as owners everywhere."""
    if user.is_staff:
        return Role.OWNER
    membership = membership_get(user, organization)
    return membership.role if membership else None


def membership_require_role(user: User, organization: Organization, roles) -> str:
    role = membership_role(user, organization)
    if role is None:
        raise NotFound()
    if not organization.is_active and not user.is_staff:
        raise PermissionDenied(_("This organisation has been disabled by an operator."))
    if role not in roles:
        raise PermissionDenied(_("Only owners and admins can do this."))
    return role


def organization_switch(*, user: User, organization: Organization) -> None:
    if membership_role(user, organization) is None:
        raise NotFound()
    if not organization.is_active and not user.is_staff:
        raise PermissionDenied(_("This organisation has been disabled by an operator."))
    user.current_organization = organization
    user.save(update_fields=["current_organization"])


def _lock_owners(organization: Organization) -> int:
    owners = list(
        Membership.objects.select_for_update()
        .filter(organization=organization, role=Role.OWNER)
        .values_list("pk", flat=True)
    )
    return len(owners)


@transaction.atomic
def membership_change_role(*, actor: User, membership: Membership, role: str) -> Membership:
    """Change a member's role. Only owners grant or take away ownership; one owner must remain."""
    if role not in Role.values:
        raise ValidationError.for_field("role", _("Unknown role."))
    actor_role = membership_require_role(actor, membership.organization, MANAGER_ROLES)
    if (Role.OWNER in (role, membership.role)) and actor_role != Role.OWNER:
        raise PermissionDenied(_("Only owners can grant or remove the owner role."))
    demoting_owner = membership.role == Role.OWNER and role != Role.OWNER
    if demoting_owner and _lock_owners(membership.organization) <= 1:
        raise ValidationError.for_field(
            "role", _("The last owner cannot be demoted. Make someone else an owner first.")
        )
    before = membership.role
    membership.role = role
    membership.save(update_fields=["role", "updated_at"])
    audit_record(
        AuditAction.MEMBER_ROLE_CHANGED,
        actor=actor,
        organization=membership.organization,
        target=membership.user,
        details={"role": [before, role]},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: User, membership: Membership) -> None:
    """Remove a member, or let a member leave. The last owner can do neither."""
    organization = membership.organization
    leaving = membership.user_id == actor.pk
    if not leaving:
        actor_role = membership_require_role(actor, organization, MANAGER_ROLES)
        if membership.role == Role.OWNER and actor_role != Role.OWNER:
            raise PermissionDenied(_("Only owners can remove an owner."))
    if membership.role == Role.OWNER and _lock_owners(organization) <= 1:
        raise ValidationError(
            _("The last owner cannot leave or be removed. Make someone else an owner first.")
        )
    user = membership.user
    membership.delete()
    if user.current_organization_id == organization.pk:
        user.current_organization = None
        user.save(update_fields=["current_organization"])
    audit_record(
        AuditAction.MEMBER_REMOVED,
        actor=actor,
        organization=organization,
        target=user,
        details={"left": leaving},
    )


@transaction.atomic
def membership_add(
    *, actor: User | None, organization: Organization, user: User, role: str
) -> Membership:
    membership, created = Membership.objects.get_or_create(
        user=user, organization=organization, defaults={"role": role}
    )
    if created:
        audit_record(
            AuditAction.MEMBER_ADDED,
            actor=actor or user,
            organization=organization,
            target=user,
            details={"role": role},
        )
    return membership


@transaction.atomic
def organization_set_active(*, operator: User, organization: Organization, active: bool) -> None:
    """Operators disable an organisation (members lose access at once) or enable it again."""
    user_require_operator(operator)
    # Read the flag under a row lock: the caller's object may be stale.
    current = (
        Organization.objects.select_for_update()
        .values_list("is_active", flat=True)
        .get(pk=organization.pk)
    )
    organization.is_active = active
    if current == active:
        return
    organization.save(update_fields=["is_active", "updated_at"])
    audit_record(
        AuditAction.ORGANIZATION_ENABLED if active else AuditAction.ORGANIZATION_DISABLED,
        actor=operator,
        organization=organization,
        target=organization,
    )
