"""Reads of billing: the ledger, usage per day, statements and revenue."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Organization
from remotegpu.core.deferred_text import deferred_text

from .choices import EntryKind, MeterKind
from .models import LedgerEntry, Payment, TopUpRequest, VoucherRedemption, Wallet


def ledger_list(organization: Organization) -> QuerySet[LedgerEntry]:
    return LedgerEntry.objects.filter(wallet__organization=organization).select_related(
        "meter", "actor"
    )


def usage_series_label(kind: str, gpu_model: str) -> str:
    label = MeterKind(kind).label if kind in MeterKind.values else kind
    return f"{label} / {gpu_model}" if gpu_model and kind == MeterKind.COMPUTE else str(label)


@dataclass
class UsageChart:
    """Spending per day by resource (and GPU model): what the usage chart draws."""

    days: list[date]
    series: dict[str, list[Decimal]] = field(default_factory=dict)

    @property
    def total(self) -> Decimal:
        return sum((sum(values, Decimal(0)) for values in self.series.values()), Decimal(0))

    def as_json(self) -> dict:
        return {
            "days": [day.isoformat() for day in self.days],
            "series": [
                {"label": label, "values": [float(value) for value in values]}
                for label, values in self.series.items()
            ],
        }


def usage_by_day(organization: Organization, days: int = 30, now: datetime | None = None):
    """What the organisation spent each day (UTC) of the last ``days``, by resource kind
    and GPU model; one grouped query."""
    today = (now or timezone.now()).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    rows = (
        LedgerEntry.objects.filter(
            wallet__organization=organization,
            kind=EntryKind.USAGE,
            period_start__gte=datetime.combine(first, datetime.min.time(), tzinfo=UTC),
        )
        .annotate(day=TruncDate("period_start", tzinfo=UTC))
        .values("day", "meter__kind", "meter__gpu_model")
        .annotate(total=Sum("amount"))
        .order_by("day")
    )
    chart = UsageChart(days=[first + timedelta(days=n) for n in range(days)])
    index = {day: n for n, day in enumerate(chart.days)}
    series: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0)] * days)
    for row in rows:
        label = usage_series_label(row["meter__kind"] or "", row["meter__gpu_model"] or "")
        series[label][index[row["day"]]] += -row["total"]
    chart.series = dict(sorted(series.items()))
    return chart


def usage_by_resource(organization: Organization, since: datetime, until: datetime) -> list[dict]:
    """Usage per meter charged between two times (by when it was charged, as a statement's
    totals count it): name, kind, seconds and amount."""
    rows = (
        LedgerEntry.objects.filter(
            wallet__organization=organization,
            kind=EntryKind.USAGE,
            created_at__gte=since,
            created_at__lt=until,
        )
        .values(
            "meter__reference",
            "meter__label",
            "meter__label_args",
            "meter__kind",
            "meter__gpu_model",
        )
        .annotate(seconds=Sum("seconds"), amount=Sum("amount"))
        .order_by("meter__label")
    )
    return [
        {
            "reference": row["meter__reference"],
            "name": deferred_text(row["meter__label"], row["meter__label_args"]),
            "resource": usage_series_label(row["meter__kind"], row["meter__gpu_model"]),
            "seconds": row["seconds"] or 0,
            "amount": -(row["amount"] or Decimal(0)),
        }
        for row in rows
    ]


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


@dataclass
class Statement:
    organization: Organization
    currency: str
    year: int
    month: int
    opening_balance: Decimal
    closing_balance: Decimal
    totals: dict[str, Decimal]
    usage: list[dict]
    entries: QuerySet[LedgerEntry]  # the month's, in time order; read them in chunks

    @property
    def period(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


def statement_get(organization: Organization, year: int, month: int) -> Statement:
    """The month's statement: balances at its start and end, totals by kind, usage by
    resource and every entry (in time order)."""
    start, end = month_bounds(year, month)
    wallet = Wallet.objects.filter(organization=organization).first()
    entries = LedgerEntry.objects.filter(wallet=wallet) if wallet else LedgerEntry.objects.none()
    before = entries.filter(created_at__lt=start).aggregate(total=Sum("amount"))["total"]
    month_entries = entries.filter(created_at__gte=start, created_at__lt=end)
    totals = {
        row["kind"]: row["total"]
        for row in month_entries.values("kind").annotate(total=Sum("amount")).order_by("kind")
    }
    opening = before or Decimal(0)
    return Statement(
        organization=organization,
        currency=wallet.currency if wallet else "",
        year=year,
        month=month,
        opening_balance=opening,
        closing_balance=opening + sum(totals.values(), Decimal(0)),
        totals=totals,
        usage=usage_by_resource(organization, start, end),
        entries=month_entries.order_by("created_at", "id"),
    )


def statement_months(organization: Organization) -> list[tuple[int, int]]:
    """Months (newest first) in which the organisation's ledger has entries."""
    months = LedgerEntry.objects.filter(wallet__organization=organization).dates(
        "created_at", "month", order="DESC"
    )
    return [(month.year, month.month) for month in months]


def recharge_records(organization: Organization) -> list[dict]:
    """Money put in, newest first: bank top-ups (any status), payments and vouchers."""
    records = []
    for top_up in TopUpRequest.objects.filter(wallet__organization=organization):
        records.append(
            {
                "time": top_up.created_at,
                "method": "bank_transfer",
                "amount": top_up.amount,
                "currency": top_up.currency,
                "status": top_up.status,
                "reference": top_up.reference,
            }
        )
    for payment in Payment.objects.filter(wallet__organization=organization):
        records.append(
            {
                "time": payment.created_at,
                "method": payment.provider,
                "amount": payment.amount,
                "currency": payment.currency,
                "status": payment.status,
                "reference": payment.provider_reference,
            }
        )
    redemptions = VoucherRedemption.objects.filter(wallet__organization=organization)
    for redemption in redemptions.select_related("voucher"):
        records.append(
            {
                "time": redemption.created_at,
                "method": "voucher",
                "amount": redemption.voucher.amount,
                "currency": redemption.voucher.currency,
                "status": "approved",
                "reference": redemption.voucher.code,
            }
        )
    return sorted(records, key=lambda record: record["time"], reverse=True)


def revenue_window_start(days: int, now: datetime | None = None) -> datetime:
    """The start (UTC midnight) of the last ``days`` days, today included: the chart's days
    and the per-organisation table count usage over the same window."""
    today = (now or timezone.now()).astimezone(UTC).date()
    return datetime.combine(today - timedelta(days=days - 1), datetime.min.time(), tzinfo=UTC)


def revenue_by_day(days: int = 30, now: datetime | None = None) -> list[dict]:
    """Usage charged per day (UTC) over the fleet: the operators' revenue."""
    first = revenue_window_start(days, now)
    rows = (
        LedgerEntry.objects.filter(kind=EntryKind.USAGE, period_start__gte=first)
        .annotate(day=TruncDate("period_start", tzinfo=UTC))
        .values("day")
        .annotate(total=Sum("amount"))
        .order_by("day")
    )
    totals = {row["day"]: -row["total"] for row in rows}
    return [
        {
            "day": first.date() + timedelta(days=n),
            "amount": totals.get(first.date() + timedelta(days=n), Decimal(0)),
        }
        for n in range(days)
    ]


def revenue_by_organization(since: datetime) -> list[dict]:
    """Usage charged per organisation for time since ``since``, largest first, with its
    balance."""
    rows = (
        LedgerEntry.objects.filter(kind=EntryKind.USAGE, period_start__gte=since)
        .values(
            "currency",
            organization_id=F("wallet__organization_id"),
            organization_name=F("wallet__organization__name"),
            balance=F("wallet__balance"),
        )
        .annotate(amount=Sum("amount"), entries=Count("id"))
        .order_by("amount")
    )
    return [{**row, "amount": -row["amount"]} for row in rows]
