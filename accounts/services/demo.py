"""The demo data ``make run`` seeds: one operator, one organisation with an owner and a member."""

from __future__ import annotations

from allauth.account.models import EmailAddress
from django.db import transaction

from ..choices import Role
from ..models import Organization, User
from .organizations import membership_add, organization_create

DEMO_PASSWORD = "remotegpu-demo"  # noqa: S105  (printed for the local demo; never for production)
DEMO_USERS = {
    "operator": "operator@remotegpu.local",
    "owner": "owner@demo.remotegpu.local",
    "member": "member@demo.remotegpu.local",
}
DEMO_ORGANIZATION = "demo-lab"


def _user(email: str, *, name: str, staff: bool = False) -> User:
    user = User.objects.filter(email=email).first()
    if user is None:
        user = User.objects.create_user(
            email=email, password=DEMO_PASSWORD, name=name, is_staff=staff, is_superuser=staff
        )
    EmailAddress.objects.update_or_create(
        user=user, email=email, defaults={"verified": True, "primary": True}
    )
    return user


@transaction.atomic
def demo_seed() -> dict[str, str]:
    """Create the demo users and organisation if missing. Safe to run any number of times."""
    _user(DEMO_USERS["operator"], name="Operator", staff=True)
    owner = _user(DEMO_USERS["owner"], name="Demo Owner")
    member = _user(DEMO_USERS["member"], name="Demo Member")
    organization = Organization.objects.filter(slug=DEMO_ORGANIZATION).first()
    if organization is None:
        organization = organization_create(user=owner, name="Demo Lab", slug=DEMO_ORGANIZATION)
    membership_add(actor=owner, organization=organization, user=owner, role=Role.OWNER)
    membership_add(actor=owner, organization=organization, user=member, role=Role.MEMBER)
    return {**DEMO_USERS, "password": DEMO_PASSWORD}
