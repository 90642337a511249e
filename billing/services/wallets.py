"""Wallets and the ledger: every movement of money is one entry, posted with its wallet row
locked so that concurrent debits serialise and the balance is always the sum of the entries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.choices import AuditAction
from accounts.models import Organization, User
from accounts.services.audit import audit_record
from remotegpu.core.errors import Conflict, ValidationError

from ..choices import EntryKind
from ..models import LedgerEntry, Meter, RunInterval, Wallet

CENT = Decimal("0.01")
MICRO = Decimal("0.000001")
# No single credit or debit is larger than this: a typo of a few zeros is refused.
MAX_AMOUNT = Decimal("1000000000")


def currency() -> str:
    return settings.BILLING_CURRENCY


def money_round(value: Decimal) -> Decimal:
    """Amounts are kept to a millionth of the unit, halves rounded away from zero (as
    PostgreSQL's ``round`` does), so Python and SQL agree to the last digit."""
    return value.quantize(MICRO, rounding=ROUND_HALF_UP)


def money_parse(value, field: str = "amount", *, positive: bool = True) -> Decimal:
    """A positive amount from user input, with at most two decimals and a sane size, or a
    ValidationError naming ``field``."""
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationError.for_field(field, _("Enter an amount such as 25.00.")) from None
    if not amount.is_finite():
        raise ValidationError.for_field(field, _("Enter an amount such as 25.00."))
    if positive and amount <= 0:
        raise ValidationError.for_field(field, _("The amount must be more than zero."))
    if abs(amount) > MAX_AMOUNT:
        raise ValidationError.for_field(
            field, _("The amount may be at most %(max)s.") % {"max": f"{MAX_AMOUNT:,}"}
        )
    if amount != amount.quantize(CENT):
        raise ValidationError.for_field(field, _("Use at most two decimal places."))
    return amount.quantize(CENT)


def currency_check(value, field: str = "currency") -> str:
    code = str(value or currency()).strip().upper()
    if code != currency():
        raise ValidationError.for_field(
            field,
            _("Only %(currency)s is accepted here.") % {"currency": currency()},
        )
    return code


def wallet_currency_check(wallet: Wallet, code: str, field: str = "currency") -> None:
    """Money comes into a wallet only in the wallet's currency (kept from when it was made,
    should the configured currency change later)."""
    if wallet.currency != code:
        raise ValidationError.for_field(
            field,
            _("This organisation's wallet is in %(currency)s.") % {"currency": wallet.currency},
        )


def wallet_get(organization: Organization) -> Wallet:
    """The organisation's wallet, made on first use in the configured currency."""
    wallet = Wallet.objects.filter(organization=organization).first()
    if wallet is not None:
        return wallet
    try:
        with transaction.atomic():
            return Wallet.objects.create(organization=organization, currency=currency())
    except IntegrityError:  # made by a concurrent first use
        return Wallet.objects.get(organization=organization)


def wallet_post(
    wallet: Wallet,
    *,
    kind: str,
    amount: Decimal,
    key: str,
    description: str = "",
    description_args: dict | None = None,
    actor: User | None = None,
    **fields,
) -> LedgerEntry | None:
    """Add one entry and move the balance by it, in one transaction with the wallet row
    locked. An entry whose key is already in the ledger changes nothing and returns None.
    ``description``: a ``gettext_noop`` id with its ``description_args``, or plain text."""
    amount = money_round(amount)
    with transaction.atomic():
        locked = Wallet.objects.select_for_update().get(pk=wallet.pk)
        if _already_posted(key, locked, amount):
            return None
        try:
            with transaction.atomic():
                entry = LedgerEntry.objects.create(
                    wallet=locked,
                    kind=kind,
                    amount=amount,
                    currency=locked.currency,
                    idempotency_key=key,
                    description=str(description)[:300],
                    description_args=description_args or {},
                    actor=actor if actor is not None and actor.is_authenticated else None,
                    **fields,
                )
        except IntegrityError:  # the same key, posted to another wallet at this moment
            if _already_posted(key, locked, amount):
                return None
            raise
        locked.balance += entry.amount
        changes = ["balance", "updated_at"]
        if entry.amount > 0 and locked.balance > 0:
            # Money came in: the low-balance and zero-balance clocks start again.
            locked.depleted_at = None
            locked.out_of_balance_stop_at = None
            if locked.low_balance_notified_at is not None:
                locked.low_balance_notified_at = None
            changes += ["depleted_at", "out_of_balance_stop_at", "low_balance_notified_at"]
        locked.save(update_fields=changes)
        wallet.balance = locked.balance
    return entry


def _already_posted(key: str, wallet: Wallet, amount: Decimal) -> bool:
    """Whether ``key`` is in the ledger already. The same key for another wallet or amount is
    a caller's bug, not a retry: refused rather than silently taken for a duplicate."""
    existing = LedgerEntry.objects.filter(idempotency_key=key).values("wallet_id", "amount").first()
    if existing is None:
        return False
    if existing["wallet_id"] != wallet.pk or existing["amount"] != amount:
        raise Conflict(_("This idempotency key was used for another entry."))
    return True


def wallet_credit(
    *, operator: User, organization: Organization, amount, reason: str, kind: str, key: str = ""
) -> LedgerEntry:
    """An operator adds money (a recharge, refund, adjustment or promotional credit) with
    a reason; audited. A negative adjustment takes money away."""
    allowed = {EntryKind.RECHARGE, EntryKind.REFUND, EntryKind.ADJUSTMENT, EntryKind.PROMOTION}
    if kind not in allowed:
        raise ValidationError.for_field(
            "kind", _("Choose recharge, refund, adjustment or promotion.")
        )
    value = money_parse(amount, positive=kind != EntryKind.ADJUSTMENT)
    if value == 0:
        raise ValidationError.for_field("amount", _("The amount must not be zero."))
    reason = str(reason or "").strip()
    if not reason:
        raise ValidationError.for_field("reason", _("Say why, for the ledger and the audit log."))
    wallet = wallet_get(organization)
    key = key or f"credit:{organization.pk}:{uuid.uuid4()}"
    entry = wallet_post(
        wallet, kind=kind, amount=value, key=key, description=reason[:300], actor=operator
    )
    if entry is None:
        raise Conflict(_("This credit was already made."))
    audit_record(
        AuditAction.WALLET_CREDITED,
        actor=operator,
        organization=organization,
        target=wallet,
        details={"kind": kind, "amount": str(value), "reason": reason[:300]},
    )
    return entry


def wallet_debit(
    wallet: Wallet, *, amount: Decimal, key: str, description: str = ""
) -> LedgerEntry | None:
    """Take ``amount`` for usage outside the tick (an interval closed between ticks is
    charged by the next tick; this is for one-off charges)."""
    return wallet_post(
        wallet, kind=EntryKind.USAGE, amount=-abs(amount), key=key, description=description
    )


def wallet_burn_rate(wallet: Wallet) -> Decimal:
    """What the organisation spends per hour now: the sum of its running meters' prices."""
    running = RunInterval.objects.filter(meter=OuterRef("pk"), ended_at__isnull=True)
    total = Meter.objects.filter(Exists(running), wallet=wallet).aggregate(total=Sum("rate"))
    return total["total"] or Decimal(0)


def wallet_is_low(wallet: Wallet, burn_rate: Decimal) -> bool:
    """Below zero, or at or under its threshold while something runs."""
    if wallet.balance < 0:
        return True
    return burn_rate > 0 and wallet.balance <= wallet_low_threshold(wallet, burn_rate)


def wallet_low_threshold(wallet: Wallet, burn_rate: Decimal | None = None) -> Decimal:
    if wallet.low_balance_threshold is not None:
        return wallet.low_balance_threshold
    return burn_rate if burn_rate is not None else wallet_burn_rate(wallet)


FORECAST_HOURS = 10 * 365 * 24  # how far ahead the balance's end is dated


@dataclass(frozen=True)
class WalletSummary:
    wallet: Wallet
    balance: Decimal
    burn_rate: Decimal
    hours_left: float | None
    runs_out_at: datetime | None
    is_low: bool


def wallet_summary(organization: Organization, now: datetime | None = None) -> WalletSummary:
    """Balance, burn rate per hour and how long the balance lasts at that rate."""
    now = now or timezone.now()
    wallet = wallet_get(organization)
    burn = wallet_burn_rate(wallet)
    hours = float(wallet.balance / burn) if burn > 0 and wallet.balance > 0 else None
    if burn > 0 and wallet.balance <= 0:
        hours = 0.0
    runs_out_at = None
    if hours is not None and hours <= FORECAST_HOURS:  # beyond it, a date means nothing
        runs_out_at = now + timedelta(hours=hours)
    return WalletSummary(
        wallet=wallet,
        balance=wallet.balance,
        burn_rate=burn,
        hours_left=hours,
        runs_out_at=runs_out_at,
        is_low=wallet_is_low(wallet, burn),
    )


def wallet_require_funds(
    organization: Organization,
    hourly_rate: Decimal,
    field: str = "spec",
    starting_rate: Callable[[], Decimal] | None = None,
) -> None:
    """Starting something that costs ``hourly_rate`` needs an hour of it in the wallet, and
    must keep the burn rate under the organisation's spend limit. ``starting_rate`` says
    what else the organisation has asked to run that is not billed yet (asked only when
    there is a limit): it counts towards the limit too."""
    wallet = wallet_get(organization)
    if wallet.balance < hourly_rate or (hourly_rate > 0 and wallet.balance <= 0):
        raise ValidationError.for_field(
            field,
            _(
                "Your balance (%(balance)s %(currency)s) is less than one hour of this "
                "(%(rate)s %(currency)s per hour). Recharge first."
            )
            % {
                "balance": wallet.balance.quantize(CENT),
                "rate": hourly_rate.quantize(CENT),
                "currency": wallet.currency,
            },
        )
    limit = wallet.spend_limit_per_hour
    if limit is None:
        return
    pending = starting_rate() if starting_rate is not None else Decimal(0)
    if wallet_burn_rate(wallet) + pending + hourly_rate > limit:
        raise ValidationError.for_field(
            field,
            _("This would spend more than your limit of %(limit)s %(currency)s per hour.")
            % {"limit": limit.quantize(CENT), "currency": wallet.currency},
        )


def wallet_settings_update(
    *, actor: User, organization: Organization, low_balance_threshold, spend_limit_per_hour
) -> Wallet:
    """The organisation's low-balance threshold and spend limit (None: the default, none)."""
    values = {}
    for field, value in (
        ("low_balance_threshold", low_balance_threshold),
        ("spend_limit_per_hour", spend_limit_per_hour),
    ):
        values[field] = None if value in (None, "") else money_parse(value, field, positive=False)
        if values[field] is not None and values[field] < 0:
            raise ValidationError.for_field(field, _("The amount must not be negative."))
    wallet = wallet_get(organization)
    Wallet.objects.filter(pk=wallet.pk).update(**values, low_balance_notified_at=None)
    wallet.refresh_from_db()
    audit_record(
        AuditAction.WALLET_SETTINGS_CHANGED,
        actor=actor,
        organization=organization,
        target=wallet,
        details={name: None if value is None else str(value) for name, value in values.items()},
    )
    return wallet


def ledger_balance(wallet: Wallet) -> Decimal:
    """The balance recomputed from the ledger, for reconciliation."""
    return LedgerEntry.objects.filter(wallet=wallet).aggregate(total=Sum("amount"))[
        "total"
    ] or Decimal(0)
