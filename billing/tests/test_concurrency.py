"""Billing under concurrency, on real PostgreSQL connections (one per thread): debits against
one wallet, a credit and a voucher claimed at once, ticks at the same time, a stop during a
tick, and ticks that die part-way and are run again. Each must charge every second once and
keep each balance the sum of its entries.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import DatabaseError, InterfaceError, connection, transaction

from accounts.tests.factories import OperatorFactory, OrganizationFactory
from billing.choices import EntryKind, MeterKind
from billing.models import LedgerEntry, Meter, RunInterval, Wallet
from billing.services.metering import TICK_SQL, billing_tick, meter_close
from billing.services.recharge import voucher_redeem
from billing.services.wallets import (
    ledger_balance,
    money_round,
    wallet_debit,
    wallet_get,
    wallet_post,
)
from billing.tests.factories import VoucherFactory
from remotegpu.core.errors import ValidationError

T0 = datetime(2027, 3, 1, 8, 0, 0, tzinfo=UTC)
# 0.0018 per hour makes exact halves of a millionth a second; the others round every way.
RATES = [Decimal("0.0018"), Decimal("1.234567"), Decimal("3.6"), Decimal("7.777777")]
pytestmark = pytest.mark.django_db(transaction=True)


def in_threads(functions, timeout: float = 30) -> list:
    """Run each function in its own thread (and so its own database connection), started
    together; returns what each returned, and raises the first error any of them raised."""
    barrier = threading.Barrier(len(functions))
    results: list = [None] * len(functions)
    errors: list[BaseException] = []

    def run(index, function):
        try:
            barrier.wait(timeout)
            results[index] = function()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run, args=(index, function))
        for index, function in enumerate(functions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


def waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def running(count: int, wallets: int = 3) -> list[RunInterval]:
    """``count`` meters with varied prices, running since T0 and billed up to it."""
    wallet_rows = [wallet_get(OrganizationFactory()) for _ in range(wallets)]
    meters = Meter.objects.bulk_create(
        Meter(
            reference=f"environment:{n}:run",
            organization_id=wallet_rows[n % wallets].organization_id,
            wallet=wallet_rows[n % wallets],
            kind=MeterKind.COMPUTE,
            label=f"env {n}",
            gpu_count=1,
            rate=RATES[n % len(RATES)],
        )
        for n in range(count)
    )
    return RunInterval.objects.bulk_create(
        RunInterval(meter=meter, started_at=T0, billed_until=T0, rate=meter.rate)
        for meter in meters
    )


def assert_charged_once(ticks: list[datetime]) -> None:
    """Every interval has exactly one entry per tick period (T0 → first tick → ...), each the
    rounding rule's amount, and every balance is the sum of its entries."""
    periods = list(zip([T0, *ticks], ticks, strict=False))
    found: dict[int, list[tuple[datetime, datetime]]] = {}
    for entry in LedgerEntry.objects.filter(kind=EntryKind.USAGE).select_related("meter"):
        found.setdefault(entry.interval_id, []).append((entry.period_start, entry.period_end))
        seconds = (entry.period_end - entry.period_start).total_seconds()
        assert entry.seconds == seconds
        assert entry.rate == entry.meter.rate
        assert entry.amount == -money_round(entry.meter.rate * entry.seconds / 3600)
    for interval in RunInterval.objects.all():
        assert sorted(found.pop(interval.pk, [])) == periods, interval.pk
        assert interval.billed_until == ticks[-1]
    assert not found
    for wallet in Wallet.objects.all():
        assert wallet.balance == ledger_balance(wallet)


# Debits -------------------------------------------------------------------------------------


def test_twenty_concurrent_debits_of_one_leave_twenty_at_zero():
    wallet = wallet_get(OrganizationFactory())
    wallet_post(wallet, kind=EntryKind.RECHARGE, amount=Decimal(20), key="recharge:1")

    def debit(i):
        return lambda: wallet_debit(
            Wallet.objects.get(pk=wallet.pk), amount=Decimal(1), key=f"debit:{i}"
        )

    entries = in_threads([debit(i) for i in range(20)])
    assert all(entry is not None for entry in entries)
    wallet.refresh_from_db()
    assert wallet.balance == 0
    assert LedgerEntry.objects.filter(wallet=wallet, kind=EntryKind.USAGE).count() == 20
    assert wallet.balance == ledger_balance(wallet)


def test_the_same_credit_posted_ten_times_at_once_counts_once():
    wallet = wallet_get(OrganizationFactory())

    def credit():
        return wallet_post(
            Wallet.objects.get(pk=wallet.pk),
            kind=EntryKind.RECHARGE,
            amount=Decimal("12.5"),
            key="payment:abc",
        )

    entries = in_threads([credit] * 10)
    assert sum(entry is not None for entry in entries) == 1
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("12.5") == ledger_balance(wallet)


def test_a_voucher_for_three_redeemed_by_ten_organisations_at_once_credits_three():
    voucher = VoucherFactory(max_redemptions=3, per_organization_limit=1)
    user = OperatorFactory()
    organizations = [OrganizationFactory() for _ in range(10)]

    def redeem(organization):
        def attempt():
            try:
                return voucher_redeem(user=user, organization=organization, code=voucher.code)
            except ValidationError:
                return None

        return attempt

    redemptions = in_threads([redeem(organization) for organization in organizations])
    assert sum(redemption is not None for redemption in redemptions) == 3
    voucher.refresh_from_db()
    assert voucher.redemptions == 3
    assert LedgerEntry.objects.filter(kind=EntryKind.PROMOTION).count() == 3
    for wallet in Wallet.objects.all():
        assert wallet.balance == ledger_balance(wallet)


# Ticks --------------------------------------------------------------------------------------


def test_two_ticks_at_once_charge_each_interval_once():
    running(200)
    now = T0 + timedelta(seconds=60)
    results = in_threads([lambda: billing_tick(now), lambda: billing_tick(now)])
    # They take turns on the lock; the second finds nothing left to charge.
    assert sorted(result.entries for result in results) == [0, 200]
    assert_charged_once([now])


def test_a_tick_that_finds_another_running_leaves_the_work_to_it():
    running(50)
    now = T0 + timedelta(seconds=60)
    holding, release = threading.Event(), threading.Event()

    def first():
        with transaction.atomic():
            result = billing_tick(now)
            holding.set()
            assert release.wait(10)
        return result

    def second():
        assert holding.wait(10)
        try:
            return billing_tick(now, wait=False)
        finally:
            release.set()

    first_result, second_result = in_threads([first, second])
    assert first_result.entries == 50
    assert second_result is None
    assert_charged_once([now])


def test_the_tick_statement_alone_is_safe_without_the_lock():
    """Two ticks that both skip the advisory lock (a bug elsewhere, an operator's psql): the
    second waits for the first's rows and, seeing them billed meanwhile, charges nothing."""
    running(100)
    now = T0 + timedelta(seconds=60)
    charged, release = threading.Event(), threading.Event()

    def tick(hold: bool):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(TICK_SQL, {"now": now})
            result = cursor.fetchone()
            if hold:
                charged.set()
                assert release.wait(10)
        return result

    def second():
        assert charged.wait(10)
        return tick(hold=False)

    def release_when_blocked():
        wait_until(waiting_on_a_lock)
        release.set()

    first_result, second_result, _ = in_threads(
        [lambda: tick(hold=True), second, release_when_blocked]
    )
    assert first_result[1] == 100
    assert second_result[1] == 0
    assert_charged_once([now])


def test_a_stop_committed_while_a_tick_waits_for_the_row_is_respected():
    """The tick read the interval as running, but its end was set (and committed) before the
    tick could lock the row: the tick bills up to the end, not up to ``now``."""
    (interval,) = running(1, wallets=1)
    stopped_at, now = T0 + timedelta(seconds=30), T0 + timedelta(seconds=60)
    closed, release = threading.Event(), threading.Event()

    def stop():
        with transaction.atomic():
            assert meter_close(interval.meter.reference, stopped_at) == 1
            closed.set()
            assert release.wait(10)

    def tick():
        assert closed.wait(10)
        return billing_tick(now)

    def release_when_blocked():
        wait_until(waiting_on_a_lock)
        release.set()

    in_threads([stop, tick, release_when_blocked])
    interval.refresh_from_db()
    assert interval.billed_until == stopped_at
    entry = LedgerEntry.objects.get()
    assert (entry.period_start, entry.period_end, entry.seconds) == (T0, stopped_at, 30)


# Crashes ------------------------------------------------------------------------------------


class Crash(Exception):
    pass


def test_a_tick_rolled_back_and_run_again_charges_as_one_clean_tick():
    running(100)
    now = T0 + timedelta(seconds=61)

    def tick_and_die():
        with transaction.atomic():
            assert billing_tick(now).entries == 100
            raise Crash  # the worker dies before its commit

    with pytest.raises(Crash):
        tick_and_die()
    assert not LedgerEntry.objects.exists()
    assert set(RunInterval.objects.values_list("billed_until", flat=True)) == {T0}
    assert all(wallet.balance == 0 for wallet in Wallet.objects.all())
    assert billing_tick(now).entries == 100
    # Committed, but the task's result was lost: it runs again with the same time.
    assert billing_tick(now).entries == 0
    assert_charged_once([now])


def test_ticks_killed_at_any_moment_and_run_again_charge_each_interval_once():
    """The tick's database session is killed after a varying delay (before, during or after
    its statement), then the tick runs again for the same time, as a retried task would."""
    running(3000)
    ticks = []
    for round_, delay in enumerate((0, 0.002, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4)):
        now = T0 + timedelta(seconds=60 * (round_ + 1))
        ticks.append(now)
        started, pid = threading.Event(), []

        def tick(now=now, started=started, pid=pid):
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    pid.append(cursor.fetchone()[0])
                started.set()
                billing_tick(now)
            except (DatabaseError, InterfaceError):
                pass  # killed

        def kill(delay=delay, started=started, pid=pid):
            assert started.wait(10)
            time.sleep(delay)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", pid)

        in_threads([tick, kill])
        billing_tick(now)  # the retry
        assert LedgerEntry.objects.count() == 3000 * len(ticks)
    assert_charged_once(ticks)
