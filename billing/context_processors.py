from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db.models import Exists, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils.functional import SimpleLazyObject

from .models import Meter, RunInterval, Wallet
from .services.wallets import wallet_is_low


@dataclass(frozen=True)
class NavigationWallet:
    balance: Decimal
    currency: str
    burn_rate: Decimal
    is_low: bool


def _navigation_wallet(organization) -> NavigationWallet:
    """The wallet with its burn rate (its running meters' prices) in one query. Read, never
    made here: a page view writes nothing; the billing page makes the wallet."""
    running = RunInterval.objects.filter(meter=OuterRef("pk"), ended_at__isnull=True)
    burn_rate = (
        Meter.objects.filter(wallet=OuterRef("pk"))
        .filter(Exists(running))
        .values("wallet")
        .annotate(total=Sum("rate"))
        .values("total")
    )
    wallet = (
        Wallet.objects.filter(organization=organization)
        .annotate(burn_rate=Coalesce(Subquery(burn_rate), Decimal(0)))
        .first()
    )
    if wallet is None:
        return NavigationWallet(Decimal(0), settings.BILLING_CURRENCY, Decimal(0), False)
    return NavigationWallet(
        wallet.balance, wallet.currency, wallet.burn_rate, wallet_is_low(wallet, wallet.burn_rate)
    )


def wallet(request):
    """The current organisation's balance and burn rate for the navigation bar: one query,
    run only when a template shows them (partials and JSON pay nothing)."""
    organization = getattr(request, "organization", None)
    user = getattr(request, "user", None)
    if organization is None or user is None or not user.is_authenticated:
        return {}
    return {"navigation_wallet": SimpleLazyObject(lambda: _navigation_wallet(organization))}
