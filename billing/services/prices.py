"""The price list and what a thing costs per hour.

One SQL expression (``RATE_SQL``) turns a meter's quantities into its price per hour; it serves
the estimate, the create form and the re-pricing of running meters, so a price shown is the
price charged. The most specific price wins: region and GPU model, then any region with that
model, then the region with any model, then the default.

A month of storage is 730 hours (365 × 24 / 12).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from django.db import connection, transaction
from django.utils.translation import gettext as _

from accounts.choices import AuditAction
from accounts.models import User
from accounts.services.audit import audit_record
from remotegpu.core.errors import ValidationError

from ..choices import MeterKind, PriceResource
from ..models import MAX_PRICE, Price
from .wallets import CENT

HOURS_PER_MONTH = 730
TICK_LOCK = 7_310_001  # pg advisory lock: one tick (or re-pricing) at a time

# Billing knows regions only by slug. The app that has them says which exist, so a price for a
# region that is not there (a typo that would never apply) is refused rather than kept.
_region_sources: list[Callable[[], Iterable[str]]] = []


def region_source(function: Callable[[], Iterable[str]]):
    """Register ``function()``, returning the slugs of the regions that exist."""
    _region_sources.append(function)
    return function


def _check_region(region: str) -> None:
    if region and _region_sources:
        known = {slug for source in _region_sources for slug in source()}
        if region not in known:
            raise ValidationError.for_field(
                "region",
                _("No region has the slug “%(region)s”. Leave it empty for every region.")
                % {"region": region},
            )


def _price(resource: str, model: str) -> str:
    return f"""coalesce((
        SELECT p.amount FROM billing_price p
        WHERE p.resource = '{resource}' AND p.region IN (q.region, '')
          AND p.gpu_model IN ({model}, '')
        ORDER BY p.gpu_model = '', p.region = '' LIMIT 1), 0)"""


# Price per hour of a row ``q`` with columns kind, region, gpu_model, gpu_count, vcpu,
# memory_gib, storage_gib. Rounded to the money scale so estimate and charge agree.
RATE_SQL = f"""round(CASE q.kind
    WHEN '{MeterKind.COMPUTE}' THEN
        q.gpu_count * {_price(PriceResource.GPU_HOUR, "q.gpu_model")}
        + q.vcpu * {_price(PriceResource.VCPU_HOUR, "''")}
        + q.memory_gib * {_price(PriceResource.MEMORY_GIB_HOUR, "''")}
    WHEN '{MeterKind.CPU_ONLY}' THEN {_price(PriceResource.CPU_ONLY_HOUR, "''")}
    WHEN '{MeterKind.STORAGE}' THEN
        q.storage_gib * {_price(PriceResource.STORAGE_GIB_MONTH, "''")} / {HOURS_PER_MONTH}
    WHEN '{MeterKind.MACHINE}' THEN {_price(PriceResource.MACHINE_HOUR, "q.gpu_model")}
    ELSE 0 END, 6)"""


@dataclass(frozen=True)
class Quantities:
    """What a price depends on."""

    kind: str
    region: str = ""
    gpu_model: str = ""
    gpu_count: int = 0
    vcpu: int = 0
    memory_gib: int = 0
    storage_gib: int = 0


def rates_for(many: list[Quantities]) -> list[Decimal]:
    """The price per hour of each of ``many`` under today's price list, in one query."""
    if not many:
        return []
    columns = list(
        zip(
            *[
                (q.kind, q.region, q.gpu_model, q.gpu_count, q.vcpu, q.memory_gib, q.storage_gib)
                for q in many
            ],
            strict=True,
        )
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT {RATE_SQL} FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[],
                    %s::int[], %s::int[], %s::int[]) WITH ORDINALITY
                AS q(kind, region, gpu_model, gpu_count, vcpu, memory_gib, storage_gib, n)
                ORDER BY q.n""",
            [list(column) for column in columns],
        )
        return [row[0] for row in cursor.fetchall()]


def rate_for(quantities: Quantities) -> Decimal:
    """The price per hour of ``quantities`` under today's price list."""
    return rates_for([quantities])[0]


def meters_reprice(cursor) -> int:
    """Every running meter's price per hour from the price list, and its open interval's
    (the seconds before were charged at the old price already); two statements."""
    cursor.execute(
        f"""UPDATE billing_meter q SET rate = {RATE_SQL}
            WHERE EXISTS (SELECT 1 FROM billing_runinterval i
                          WHERE i.meter_id = q.id AND i.ended_at IS NULL)"""
    )
    count = cursor.rowcount
    cursor.execute(
        """UPDATE billing_runinterval i SET rate = m.rate FROM billing_meter m
           WHERE m.id = i.meter_id AND i.ended_at IS NULL AND i.rate <> m.rate"""
    )
    return count


def price_set(
    *, operator: User, resource: str, amount, region: str = "", gpu_model: str = ""
) -> Price:
    """Set (or add) one price. Running meters are charged at the old price up to now first,
    so the new one counts from the next second billed; audited."""
    from .metering import billing_tick  # the tick and re-pricing share one lock

    if resource not in PriceResource.values:
        raise ValidationError.for_field("resource", _("Choose a resource from the list."))
    try:
        value = Decimal(str(amount))
    except ArithmeticError:
        value = None
    if value is None or not value.is_finite() or value < 0:
        raise ValidationError.for_field("amount", _("Enter a price of zero or more."))
    if value > MAX_PRICE:
        raise ValidationError.for_field(
            "amount", _("A price may be at most %(max)s.") % {"max": f"{MAX_PRICE:,}"}
        )
    if value != value.quantize(Decimal("0.000001")):
        raise ValidationError.for_field("amount", _("Use at most six decimal places."))
    region = region.strip()
    _check_region(region)
    with transaction.atomic():
        billing_tick()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [TICK_LOCK])
            price, _created = Price.objects.get_or_create(
                resource=resource,
                region=region,
                gpu_model=gpu_model.strip(),
                defaults={"amount": value, "updated_by": operator},
            )
            previous = str(price.amount)
            if price.amount != value:
                price.amount = value
                price.updated_by = operator
                price.save(update_fields=["amount", "updated_by", "updated_at"])
            meters_reprice(cursor)
        audit_record(
            AuditAction.PRICE_CHANGED,
            actor=operator,
            target=price,
            details={
                "resource": resource,
                "region": price.region,
                "gpu_model": price.gpu_model,
                "from": None if _created else previous,
                "to": str(value),
            },
        )
    return price


def price_delete(*, operator: User, price: Price) -> None:
    """Remove a price (a more general one, or none, applies from the next second billed)."""
    from .metering import billing_tick

    with transaction.atomic():
        billing_tick()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [TICK_LOCK])
            details = {
                "resource": price.resource,
                "region": price.region,
                "gpu_model": price.gpu_model,
                "from": str(price.amount),
                "to": None,
            }
            price.delete()
            meters_reprice(cursor)
        audit_record(AuditAction.PRICE_CHANGED, actor=operator, details=details)


def estimate(quantities: Quantities, hours: Decimal) -> dict:
    """The price per hour of ``quantities`` and what ``hours`` of it cost."""
    rate = rate_for(quantities)
    return {
        "rate_per_hour": rate,
        "hours": hours,
        "total": (rate * hours).quantize(CENT, rounding=ROUND_HALF_UP),
    }
