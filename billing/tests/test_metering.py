from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.choices import EntryKind, MeterKind, PriceResource
from billing.models import MAX_PRICE, LedgerEntry, RunInterval
from billing.services.metering import (
    billed_seconds,
    billing_tick,
    meter_close,
    meter_open,
    sources_seen,
)
from billing.services.prices import Quantities, price_set, rate_for
from billing.services.wallets import ledger_balance, wallet_get
from remotegpu.core.errors import ValidationError

from .factories import PriceFactory

T0 = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
GPU = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def prices(db):
    PriceFactory(resource=PriceResource.GPU_HOUR, gpu_model="", amount=Decimal("2.000000"))
    PriceFactory(resource=PriceResource.GPU_HOUR, gpu_model=GPU, amount=Decimal("3.600000"))
    PriceFactory(
        resource=PriceResource.GPU_HOUR, region="eu", gpu_model=GPU, amount=Decimal("4.000000")
    )
    PriceFactory(resource=PriceResource.VCPU_HOUR, amount=Decimal("0.036000"))
    PriceFactory(resource=PriceResource.MEMORY_GIB_HOUR, amount=Decimal("0.010000"))
    PriceFactory(resource=PriceResource.STORAGE_GIB_MONTH, amount=Decimal("0.073000"))


def compute(**overrides):
    values = {
        "kind": MeterKind.COMPUTE,
        "gpu_model": GPU,
        "gpu_count": 1,
        "vcpu": 10,
        "memory_gib": 10,
    }
    return Quantities(**{**values, **overrides})


def test_the_most_specific_price_wins(prices):
    assert rate_for(compute()) == Decimal("3.600000") + Decimal("0.36") + Decimal("0.1")
    assert rate_for(compute(region="eu")) == Decimal("4.46")
    assert rate_for(compute(gpu_model="Tesla T4")) == Decimal("2.46")
    assert rate_for(compute(gpu_count=2, vcpu=0, memory_gib=0)) == Decimal("7.2")
    # 100 GiB × 0.073 per month / 730 hours = 0.01 per hour
    assert rate_for(Quantities(kind=MeterKind.STORAGE, storage_gib=100)) == Decimal("0.01")
    assert rate_for(Quantities(kind=MeterKind.CPU_ONLY)) == Decimal(0)


def test_a_tick_charges_whole_seconds_once(prices, organization):
    meter_open(
        reference="environment:1:run",
        organization=organization,
        label="train",
        quantities=compute(),
        at=T0 + timedelta(microseconds=300),  # rounded up to 10:00:01
    )
    first = billing_tick(T0 + timedelta(seconds=61, microseconds=900))
    assert first.entries == 1
    again = billing_tick(T0 + timedelta(seconds=61))
    assert again.entries == 0
    entry = LedgerEntry.objects.get()
    assert entry.kind == EntryKind.USAGE
    assert entry.seconds == 60
    assert entry.amount == Decimal("-0.067667")  # 4.06 × 60 / 3600, half up
    wallet = wallet_get(organization)
    assert wallet.balance == entry.amount == ledger_balance(wallet)

    meter_close("environment:1:run", T0 + timedelta(seconds=90, microseconds=999))
    billing_tick(T0 + timedelta(seconds=500))
    assert billed_seconds("environment:1:run") == 89
    assert sum(e.seconds for e in LedgerEntry.objects.all()) == 89
    assert billing_tick(T0 + timedelta(seconds=900)).entries == 0


def test_a_run_reopened_with_a_start_before_the_last_end_never_overlaps_it(prices, organization):
    """Whatever start its owner names, a meter's intervals never overlap: time billed once is
    not billed again."""
    opened = {"organization": organization, "label": "train", "quantities": compute()}
    meter_open(reference="environment:4:run", at=T0, **opened)
    meter_close("environment:4:run", T0 + timedelta(seconds=100))
    meter_open(reference="environment:4:run", at=T0 + timedelta(seconds=10), **opened)
    billing_tick(T0 + timedelta(seconds=160))
    intervals = RunInterval.objects.filter(meter__reference="environment:4:run")
    assert [(i.started_at - T0).seconds for i in intervals.order_by("id")] == [0, 100]
    assert billed_seconds("environment:4:run") == 160


def test_the_largest_prices_on_a_big_spec_are_metered_and_charged(organization, operator):
    """Each price may be at most MAX_PRICE and a higher one is refused with the field named;
    a rate is as wide as money, so eight GPUs and many vCPUs and GiB at the highest prices
    neither overflow the meter nor the tick."""
    with pytest.raises(ValidationError) as refused:
        price_set(operator=operator, resource=PriceResource.GPU_HOUR, amount=MAX_PRICE + Decimal(1))
    assert "amount" in refused.value.fields
    for resource in (
        PriceResource.GPU_HOUR,
        PriceResource.VCPU_HOUR,
        PriceResource.MEMORY_GIB_HOUR,
    ):
        price_set(operator=operator, resource=resource, amount=MAX_PRICE)
    quantities = compute(gpu_count=8, vcpu=256, memory_gib=2048)
    meter = meter_open(
        reference="environment:5:run",
        organization=organization,
        label="big",
        quantities=quantities,
        at=T0,
    )
    assert meter.rate == MAX_PRICE * (8 + 256 + 2048)
    billing_tick(T0 + timedelta(hours=24))
    assert LedgerEntry.objects.get().amount == -MAX_PRICE * (8 + 256 + 2048) * 24


def test_a_silent_source_is_not_billed_past_when_it_was_seen(prices, organization):
    meter_open(
        reference="environment:2:run",
        organization=organization,
        label="train",
        quantities=compute(),
        at=T0,
        source="host:9",
    )
    sources_seen({"host:9": (T0 + timedelta(seconds=30), 45)})
    billing_tick(T0 + timedelta(seconds=600))
    assert billed_seconds("environment:2:run") == 30
    # Back after ten minutes: the silence is not billed, what follows is.
    assert sources_seen({"host:9": (T0 + timedelta(seconds=630), 45)}) == 1
    sources_seen({"host:9": (T0 + timedelta(seconds=640), 45)})
    billing_tick(T0 + timedelta(seconds=700))
    assert billed_seconds("environment:2:run") == 40
    assert RunInterval.objects.filter(meter__reference="environment:2:run").count() == 2


def test_a_price_change_counts_from_the_next_second_billed(prices, organization, operator):
    meter_open(
        reference="environment:3:run",
        organization=organization,
        label="train",
        quantities=compute(vcpu=0, memory_gib=0),
        at=T0,
    )
    billing_tick(T0 + timedelta(seconds=3600))
    price_set(operator=operator, resource=PriceResource.GPU_HOUR, gpu_model=GPU, amount="7.2")
    charges = list(LedgerEntry.objects.order_by("id").values_list("rate", flat=True))
    assert charges[0] == Decimal("3.6")
    assert all(rate == Decimal("3.6") for rate in charges)
    billing_tick(datetime.now(UTC) + timedelta(seconds=10))
    assert LedgerEntry.objects.order_by("id").last().rate == Decimal("7.2")
