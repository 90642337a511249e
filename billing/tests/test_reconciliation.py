"""Reconciliation finds any difference between balances, the ledger and the run intervals,
and alerts the operators."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from accounts.models import Notification
from billing.choices import EntryKind, MeterKind, PriceResource
from billing.models import ReconciliationRun, RunInterval, Wallet
from billing.services.metering import billing_tick, meter_close, meter_open
from billing.services.prices import Quantities
from billing.services.reconciliation import billing_reconcile
from billing.services.wallets import wallet_get, wallet_post

from .factories import PriceFactory

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


@pytest.fixture
def billed(organization):
    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("3.6"))
    wallet_post(wallet_get(organization), kind=EntryKind.RECHARGE, amount=Decimal(10), key="r1")
    quantities = Quantities(kind=MeterKind.COMPUTE, gpu_count=1)
    meter_open(
        reference="environment:1:run",
        organization=organization,
        label="acme",
        quantities=quantities,
        at=T0,
    )
    billing_tick(T0 + timedelta(minutes=1))
    meter_close("environment:1:run", T0 + timedelta(minutes=1, seconds=30))
    billing_tick(T0 + timedelta(minutes=2))
    return organization


def test_a_clean_ledger_reconciles(billed, operator, capsys):
    run = billing_reconcile()
    assert run.is_clean
    assert (run.wallets_checked, run.intervals_checked) == (1, 1)
    call_command("billing_reconcile")
    assert "0 differences" in capsys.readouterr().out
    assert not Notification.objects.filter(user=operator).exists()


def test_a_balance_that_is_not_the_ledgers_sum_alerts_operators(billed, operator):
    Wallet.objects.filter(organization=billed).update(balance=Decimal("1000"))
    RunInterval.objects.update(billed_until=T0 + timedelta(hours=1))
    with pytest.raises(CommandError):
        call_command("billing_reconcile")
    run = ReconciliationRun.objects.latest("started_at")
    assert {difference["check"] for difference in run.differences} == {
        "balance",
        "billed_past_end",
    }
    notification = Notification.objects.get(user=operator)
    assert "differences" in notification.title


def test_a_wrong_or_doubled_charge_is_found(billed):
    interval = RunInterval.objects.get()
    wallet_post(
        wallet_get(billed),
        kind=EntryKind.USAGE,
        amount=Decimal("-0.5"),
        key="usage:forged",
        meter=interval.meter,
        interval=interval,
        period_start=T0,
        period_end=T0 + timedelta(seconds=10),
        seconds=10,
        rate=Decimal("3.6"),
    )
    run = billing_reconcile()
    assert {difference["check"] for difference in run.differences} == {
        "charge",
        "overlapping_entries",
    }
