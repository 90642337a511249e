"""Billing under random histories: a hypothesis state machine drives the real services on the
real database (starts, stops, ticks, repeated ticks, crashed workers, price changes, recharges,
vouchers and hosts going silent) at a clock it controls, and after every step checks the
invariants of ARCHITECTURE.md §6 against a model of its own:

- no second is charged twice: each interval's entries tile it from its start to how far it
  is billed, keys are unique, and no two intervals of a meter overlap;
- a wallet's balance is the sum of its entries, and its credits are the ones made, once each;
- billed time never exceeds the time a meter ran while its host was online (the model's own
  account of the steps), and right after a tick it equals that time up to the tick;
- each charge is ``round_half_up(rate × seconds / 3600, 6)`` at the rate the model expects;
- the reconciliation's checks find nothing.

Each example runs in a savepoint of the test's transaction, rolled back at its end. The two
bugs the machine found (a reopened meter's last run charged at its new price; a run stopped
while its host was silent charged for the silence) are pinned by the tests at the end.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from unittest import mock

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from accounts.tests.factories import OperatorFactory, OrganizationFactory
from billing.choices import EntryKind, MeterKind, PriceResource
from billing.models import LedgerEntry, RunInterval, Wallet
from billing.services.metering import (
    billed_seconds,
    billing_tick,
    meter_close,
    meter_open,
    sources_seen,
)
from billing.services.prices import Quantities, price_set
from billing.services.recharge import voucher_redeem
from billing.services.reconciliation import CHECKS
from billing.services.wallets import money_round, wallet_get, wallet_post
from remotegpu.core.errors import ValidationError

from .factories import PriceFactory, VoucherFactory

T0 = datetime(2027, 3, 1, 8, 0, 0, tzinfo=UTC)
INF = 10**12
METERS = ("environment:1:run", "environment:2:run", "environment:3:run")
SOURCES = ("host:a", "host:b")
GAP = 45  # seconds a host may stay silent before it counts as offline
# Every step first lets time pass (microseconds): mostly less than the gap, sometimes more.
WAIT = st.one_of(st.integers(0, 50_000_000), st.integers(0, 900_000_000))
# Prices with six decimals, some of which make exact halves of a millionth (0.0018 × 1 s).
PRICES = [Decimal("0.0018"), Decimal("1.234567"), Decimal("3.6"), Decimal("0.0009"), Decimal(7)]
# The reconciliation's checks in one query: (check, id, found, expected) for each difference.
RECONCILE_SQL = " UNION ALL ".join(
    f"SELECT '{name}', c.* FROM ({sql}) AS c"  # noqa: S608  (the service's own SQL)
    for name, sql in CHECKS.items()
)


class Crash(Exception):
    """A worker dying after its work but before its transaction commits."""


@dataclass
class Segment:
    """One run of a meter as the model knows it, in whole seconds after T0."""

    start: int
    end: int | None
    source: str
    rate: Decimal


@dataclass
class MeterModel:
    organization: int
    gpus: int = 0
    segments: list[Segment] = field(default_factory=list)

    @property
    def open(self) -> Segment | None:
        if self.segments and self.segments[-1].end is None:
            return self.segments[-1]
        return None


def online(sightings: list[int]) -> list[tuple[int, int]]:
    """When a host counts as online: before its first sighting (nothing says otherwise), and
    between two sightings no further apart than the gap."""
    if not sightings:
        return [(-INF, INF)]
    ranges = [(-INF, sightings[0])]
    for before, after in itertools.pairwise(sightings):
        if after - before <= GAP:
            ranges.append((before, after))
    return ranges


def covered(start: int, end: int, ranges: list[tuple[int, int]]) -> int:
    # The ranges meet at most at their ends, so their overlaps with [start, end) add up.
    return sum(max(0, min(end, high) - max(start, low)) for low, high in ranges)


def seconds_after_t0(moment: datetime) -> int:
    return int((moment - T0).total_seconds())


class BillingMachine(RuleBasedStateMachine):
    organizations: list = []  # made once per test by the test function
    operator = None

    def __init__(self):
        super().__init__()
        self.savepoint = transaction.savepoint()
        self.clock = 0  # microseconds after T0
        self.meters = {ref: MeterModel(organization=i % 2) for i, ref in enumerate(METERS)}
        self.sightings: dict[str, list[int]] = {key: [] for key in SOURCES}
        self.up = dict.fromkeys(SOURCES, True)
        # The last tick: its second, and the sightings known then.
        self.ticked: tuple[int, dict[str, list[int]]] | None = None
        self.price = PRICES[1]
        PriceFactory(resource=PriceResource.GPU_HOUR, amount=self.price)
        self.checked_entry = 0
        self.credited: dict[tuple[int, str], Decimal] = {}  # (wallet, kind): amount
        self.recharges = 0
        # Three uses in all, two per organisation.
        self.voucher = VoucherFactory(max_redemptions=3, per_organization_limit=2)
        self.redeemed = [0, 0]

    def teardown(self):
        transaction.savepoint_rollback(self.savepoint)

    # The clock -----------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return T0 + timedelta(microseconds=self.clock)

    @property
    def second(self) -> int:
        return self.clock // 1_000_000

    @property
    def second_up(self) -> int:
        return -(-self.clock // 1_000_000)

    def wait(self, microseconds: int) -> None:
        """Time passes; the hosts that are up report in (they do so every few seconds, so a
        long wait still reads as a silence)."""
        self.clock += microseconds
        up = [key for key in SOURCES if self.up[key]]
        if up:
            sources_seen(dict.fromkeys(up, (self.now, GAP)))
            for key in up:
                self.sightings[key].append(self.second)

    @initialize(micro=st.integers(0, 999_999))
    def begin(self, micro):
        self.clock = micro

    # Metering ------------------------------------------------------------------------------

    @rule(
        wait=WAIT,
        ref=st.sampled_from(METERS),
        gpus=st.integers(1, 3),
        source=st.sampled_from(("", *SOURCES)),
    )
    def start(self, wait, ref, gpus, source):
        self.wait(wait)
        model = self.meters[ref]
        if model.open is not None:
            # Opening what runs already changes nothing (the same event sent again).
            gpus, source = model.gpus, model.open.source
        meter_open(
            reference=ref,
            organization=self.organizations[model.organization],
            label=ref,
            quantities=Quantities(kind=MeterKind.COMPUTE, gpu_count=gpus),
            at=self.now,
            source=source,
        )
        if model.open is None:
            model.gpus = gpus
            model.segments.append(Segment(self.second_up, None, source, gpus * self.price))
            if source and not self.sightings[source]:
                # The agent reporting the run is the first sighting of a host never heard
                # from: it counts as online up to then, and no further until it reports.
                self.sightings[source].append(self.second_up)

    @rule(wait=WAIT, ref=st.sampled_from(METERS), host_lost=st.booleans())
    def stop(self, wait, ref, host_lost):
        model = self.meters[ref]
        if host_lost and model.open is not None and model.open.source:
            # Its host went silent first: the stop is decided without it (an operator's, or
            # the host declared lost).
            self.up[model.open.source] = False
        self.wait(wait)
        assert meter_close(ref, self.now) == (1 if model.open is not None else 0)
        if model.open is not None:
            model.open.end = max(self.second, model.open.start)

    @rule(wait=WAIT, source=st.sampled_from(SOURCES), up=st.booleans())
    def host_up_or_down(self, wait, source, up):
        """A host stops reporting (it is offline, or cut off), or reports again."""
        self.up[source] = up
        self.wait(wait)

    @rule(wait=WAIT, twice=st.booleans())
    def tick(self, wait, twice):
        self.wait(wait)
        billing_tick(self.now)
        self.note_tick(self.second)
        if twice:
            # The same tick again (a retried task): nothing more is charged.
            before = self.state()
            assert billing_tick(self.now).entries == 0
            assert self.state() == before

    @precondition(lambda self: self.ticked is not None)
    @rule()
    def tick_late(self):
        """A tick for a time already ticked, after other steps (a task retried late): it
        charges only what hosts reported since, up to that time; nothing twice."""
        billing_tick(T0 + timedelta(seconds=self.ticked[0]))
        self.note_tick(self.ticked[0])

    @rule(wait=WAIT, what=st.sampled_from(("tick", "sources_seen", "stop")))
    def crash(self, wait, what):
        """A worker dies after doing its work but before committing: nothing of it stays."""
        self.wait(wait)
        before = self.state()
        with pytest.raises(Crash):
            self.die_during(what)
        assert self.state() == before

    def die_during(self, what: str) -> None:
        with transaction.atomic():
            if what == "tick":
                billing_tick(self.now)
            elif what == "sources_seen":
                sources_seen(dict.fromkeys(SOURCES, (self.now, GAP)))
            else:
                for ref in METERS:
                    meter_close(ref, self.now)
            raise Crash

    @rule(wait=WAIT, price=st.sampled_from(PRICES))
    def price_change(self, wait, price):
        self.wait(wait)
        # price_set ticks at the real clock first; ours is fake, so the clock is moved for it.
        with mock.patch("django.utils.timezone.now", return_value=self.now):
            price_set(operator=self.operator, resource=PriceResource.GPU_HOUR, amount=price)
        self.note_tick(self.second)
        # Its tick charged the old price; only then does the new one apply to what runs.
        self.check_new_entries()
        self.price = price
        for model in self.meters.values():
            if model.open is not None:
                model.open.rate = model.gpus * price

    # Money ---------------------------------------------------------------------------------

    @rule(organization=st.integers(0, 1), cents=st.integers(1, 100_000), again=st.booleans())
    def recharge(self, organization, cents, again):
        wallet = wallet_get(self.organizations[organization])
        amount = Decimal(cents) / 100
        self.recharges += 1
        key = f"recharge:{self.recharges}"
        assert wallet_post(wallet, kind=EntryKind.RECHARGE, amount=amount, key=key) is not None
        self.credit(wallet.pk, EntryKind.RECHARGE, amount)
        if again:
            # A repeated request (a double click, a retried webhook): the same key, no money.
            before = self.state()
            assert wallet_post(wallet, kind=EntryKind.RECHARGE, amount=amount, key=key) is None
            assert self.state() == before

    @rule(organization=st.integers(0, 1))
    def redeem_voucher(self, organization):
        allowed = self.redeemed[organization] < 2 and sum(self.redeemed) < 3
        redeem = partial(
            voucher_redeem,
            user=self.operator,
            organization=self.organizations[organization],
            code=self.voucher.code.lower(),  # as typed
        )
        if allowed:
            redemption = redeem()
            self.redeemed[organization] += 1
            self.credit(redemption.wallet_id, EntryKind.PROMOTION, self.voucher.amount)
        else:
            before = self.state()
            with pytest.raises(ValidationError):
                redeem()
            assert self.state() == before

    # The model -----------------------------------------------------------------------------

    def credit(self, wallet_id: int, kind: str, amount: Decimal) -> None:
        self.credited[wallet_id, kind] = self.credited.get((wallet_id, kind), 0) + amount

    def note_tick(self, second: int) -> None:
        self.ticked = (second, {key: list(seen) for key, seen in self.sightings.items()})

    def state(self):
        """Everything a step may change, to see that a rolled-back or repeated one did not."""
        return (
            LedgerEntry.objects.count(),
            list(RunInterval.objects.order_by("id").values_list("id", "ended_at", "billed_until")),
            list(Wallet.objects.order_by("id").values_list("id", "balance")),
        )

    def expected_seconds(self, model: MeterModel, until: int, sightings) -> int:
        """Seconds the meter ran up to ``until`` while its host was online."""
        total = 0
        for segment in model.segments:
            end = min(segment.end if segment.end is not None else INF, until)
            ranges = online(sightings[segment.source]) if segment.source else [(-INF, INF)]
            total += covered(segment.start, end, ranges)
        return total

    def segment_of(self, ref: str, started: int) -> Segment:
        """The run of ``ref`` that an interval starting at ``started`` belongs to (a host's
        silence splits one run into several intervals)."""
        candidates = [
            segment
            for segment in self.meters[ref].segments
            if segment.start <= started and (segment.end is None or started <= segment.end)
        ]
        assert candidates, f"an interval of {ref} from {started} belongs to no run"
        return candidates[-1]

    def check_new_entries(self) -> None:
        """Each usage entry made since the last check: the rule's amount at the run's rate."""
        entries = (
            LedgerEntry.objects.filter(id__gt=self.checked_entry)
            .select_related("interval", "meter")
            .order_by("id")
        )
        for entry in entries:
            self.checked_entry = entry.pk
            if entry.kind != EntryKind.USAGE:
                continue
            interval = entry.interval
            segment = self.segment_of(entry.meter.reference, seconds_after_t0(interval.started_at))
            seconds = int((entry.period_end - entry.period_start).total_seconds())
            assert entry.meter_id == interval.meter_id
            assert entry.wallet_id == entry.meter.wallet_id
            assert entry.seconds == seconds > 0
            assert entry.rate == segment.rate, (entry.meter.reference, entry.rate, segment)
            assert entry.amount == -money_round(entry.rate * seconds / 3600)
            from_ = int(entry.period_start.timestamp())
            assert entry.idempotency_key == f"usage:{interval.pk}:{from_}"

    @invariant()
    def billing_invariants(self):
        self.check_new_entries()

        # No second charged twice: each interval's entries tile [start, billed until).
        usage: dict[int, list[tuple[datetime, datetime]]] = {}
        balances: dict[int, Decimal] = {}
        credited: dict[tuple[int, str], Decimal] = {}
        for wallet_id, kind, interval_id, start, end, amount in LedgerEntry.objects.values_list(
            "wallet_id", "kind", "interval_id", "period_start", "period_end", "amount"
        ):
            balances[wallet_id] = balances.get(wallet_id, 0) + amount
            if kind == EntryKind.USAGE:
                usage.setdefault(interval_id, []).append((start, end))
            else:
                credited[wallet_id, kind] = credited.get((wallet_id, kind), 0) + amount
        billed: dict[str, int] = {ref: 0 for ref in METERS}
        open_: set[str] = set()
        for pk, ref, started, ended, until in RunInterval.objects.values_list(
            "pk", "meter__reference", "started_at", "ended_at", "billed_until"
        ):
            reached = started
            for start, end in sorted(usage.pop(pk, [])):
                assert start == reached, f"interval {pk}: a gap or an overlap at {start}"
                reached = end
            assert reached == until, f"interval {pk}: entries reach {reached}, billed {until}"
            assert ended is None or until <= ended
            billed[ref] += int((until - started).total_seconds())
            if ended is None:
                open_.add(ref)
        assert not usage, "entries of no interval"

        # Balances are the sum of their entries; credits are those made, once each.
        for wallet_id, balance in Wallet.objects.values_list("id", "balance"):
            assert balance == balances.get(wallet_id, 0), f"wallet {wallet_id}"
        assert credited == self.credited

        # Billed time: never more than the meter ran while its host was online as known now,
        # and up to the last tick all of that as known then.
        for ref, model in self.meters.items():
            assert billed[ref] <= self.expected_seconds(model, self.second, self.sightings), ref
            if self.ticked is not None:
                until, sightings = self.ticked
                assert billed[ref] == self.expected_seconds(model, until, sightings), ref
            assert (ref in open_) == (model.open is not None), ref

        with connection.cursor() as cursor:
            cursor.execute(RECONCILE_SQL)
            assert cursor.fetchall() == []


@pytest.mark.django_db
def test_billing_keeps_its_invariants_under_random_histories():
    BillingMachine.organizations = [OrganizationFactory(), OrganizationFactory()]
    BillingMachine.operator = OperatorFactory()
    run_state_machine_as_test(
        BillingMachine,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            database=None,  # no example database written into the tree
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# Bugs the machine found, as plain reproductions ------------------------------------------


def _compute(gpus: int) -> Quantities:
    return Quantities(kind=MeterKind.COMPUTE, gpu_count=gpus)


@pytest.mark.django_db
def test_a_reopened_meter_keeps_the_old_rate_for_its_last_run(organization):
    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("3.6"))
    ref = "environment:1:run"
    meter_open(reference=ref, organization=organization, label="a", quantities=_compute(1), at=T0)
    meter_close(ref, T0 + timedelta(seconds=100))
    # Started again before the next tick, on another spec (or in another region's price).
    meter_open(
        reference=ref,
        organization=organization,
        label="a",
        quantities=_compute(8),
        at=T0 + timedelta(seconds=110),
    )
    billing_tick(T0 + timedelta(seconds=120))
    first_run = LedgerEntry.objects.get(period_start=T0)
    assert first_run.rate == Decimal("3.6")
    assert first_run.amount == Decimal("-0.1")


@pytest.mark.django_db
def test_a_run_stopped_while_its_host_is_offline_is_not_billed_for_the_gap(organization):
    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("3.6"))
    ref = "environment:1:run"
    meter_open(
        reference=ref,
        organization=organization,
        label="a",
        quantities=_compute(1),
        at=T0,
        source="host:1",
    )
    sources_seen({"host:1": (T0 + timedelta(seconds=30), GAP)})
    billing_tick(T0 + timedelta(seconds=60))
    # Stopped (an operator, or the host declared lost) while the host is silent ...
    meter_close(ref, T0 + timedelta(seconds=600))
    # ... which comes back much later than its gap allows: it was offline from 30 s on.
    sources_seen({"host:1": (T0 + timedelta(seconds=900), GAP)})
    billing_tick(T0 + timedelta(seconds=960))
    assert billed_seconds(ref) == 30  # found: 600


@pytest.mark.django_db
def test_a_run_on_a_host_never_heard_from_is_billed_up_to_its_report_only(organization):
    """The agent's report of the run is the first sighting of its host; with no heartbeat
    after it the tick bills nothing past it (the model had counted such a host online)."""
    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("3.6"))
    ref = "environment:1:run"
    meter_open(
        reference=ref,
        organization=organization,
        label="a",
        quantities=_compute(1),
        at=T0,
        source="host:new",
    )
    billing_tick(T0 + timedelta(seconds=60))
    assert billed_seconds(ref) == 0
    sources_seen({"host:new": (T0 + timedelta(seconds=20), GAP)})
    billing_tick(T0 + timedelta(seconds=60))
    assert billed_seconds(ref) == 20
