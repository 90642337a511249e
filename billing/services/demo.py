"""The demo's money (``make run``): a price list, when there is none, and a starting balance
for the demo organisation, credited once."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.utils.translation import gettext_noop

from accounts.models import Organization

from ..choices import EntryKind, PriceResource
from ..models import Price
from .wallets import wallet_get, wallet_post

DEMO_PRICES = {
    PriceResource.GPU_HOUR: Decimal("1.80"),
    PriceResource.VCPU_HOUR: Decimal("0.02"),
    PriceResource.MEMORY_GIB_HOUR: Decimal("0.005"),
    PriceResource.CPU_ONLY_HOUR: Decimal("0.10"),
    PriceResource.STORAGE_GIB_MONTH: Decimal("0.10"),
    PriceResource.MACHINE_HOUR: Decimal("12.00"),
}
DEMO_CREDIT = Decimal("100.00")


@transaction.atomic
def billing_demo_seed(organization_slug: str) -> dict[str, object]:
    """Idempotent: default prices for every resource if the list is empty, and 100 of
    promotional credit for the demo organisation (once)."""
    if not Price.objects.exists():
        Price.objects.bulk_create(
            Price(resource=resource, amount=amount) for resource, amount in DEMO_PRICES.items()
        )
    organization = Organization.objects.filter(slug=organization_slug).first()
    if organization is None:
        return {"prices": Price.objects.count(), "balance": None}
    wallet = wallet_get(organization)
    wallet_post(
        wallet,
        kind=EntryKind.PROMOTION,
        amount=DEMO_CREDIT,
        key=f"demo:{organization.pk}",
        description=gettext_noop("Demo credit"),
    )
    return {"prices": Price.objects.count(), "balance": wallet.balance}
