from decimal import Decimal

from billing.models import LedgerEntry, Price
from billing.services.demo import DEMO_CREDIT, DEMO_PRICES, billing_demo_seed


def test_the_demo_gets_prices_and_its_credit_once(organization):
    first = billing_demo_seed(organization.slug)
    second = billing_demo_seed(organization.slug)
    assert Price.objects.count() == len(DEMO_PRICES)
    assert first["balance"] == second["balance"] == DEMO_CREDIT
    assert LedgerEntry.objects.count() == 1


def test_an_existing_price_list_is_left_alone(organization):
    Price.objects.create(resource="gpu_hour", amount=Decimal("9"))
    billing_demo_seed(organization.slug)
    assert list(Price.objects.values_list("amount", flat=True)) == [Decimal("9")]
