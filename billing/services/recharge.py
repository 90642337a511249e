"""Money in: bank top-ups an operator approves, and vouchers an operator creates.

Each credit is one ledger entry whose key names what it came from (``top_up:<id>``,
``voucher:<id>:<wallet>:<n>``), so an approval clicked twice or a redemption retried credits
once. Card payments go through a payment provider (``payments``).
"""

from __future__ import annotations

import secrets
from datetime import datetime

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from accounts.choices import AuditAction
from accounts.models import Organization, User
from accounts.services.audit import audit_record
from remotegpu.core.errors import Conflict, ValidationError

from ..choices import EntryKind, TopUpStatus
from ..models import TopUpRequest, Voucher, VoucherRedemption
from .wallets import (
    currency_check,
    money_parse,
    wallet_currency_check,
    wallet_get,
    wallet_post,
)

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I to misread


def top_up_request(
    *, user: User, organization: Organization, amount, reference: str, currency: str = ""
) -> TopUpRequest:
    """A customer says they sent ``amount`` by bank transfer with ``reference``."""
    value = money_parse(amount)
    code = currency_check(currency)
    reference = str(reference or "").strip()
    if not reference:
        raise ValidationError.for_field(
            "reference", _("Give the transfer's reference, as the bank statement shows it.")
        )
    wallet = wallet_get(organization)
    wallet_currency_check(wallet, code)
    top_up = TopUpRequest.objects.create(
        wallet=wallet, amount=value, currency=code, reference=reference[:200], requested_by=user
    )
    audit_record(
        AuditAction.TOP_UP_REQUESTED,
        actor=user,
        organization=organization,
        target=top_up,
        details={"amount": str(value), "reference": top_up.reference},
    )
    return top_up


def _decide(top_up: TopUpRequest, *, operator: User, status: str, note: str) -> TopUpRequest:
    now = timezone.now()
    updated = TopUpRequest.objects.filter(pk=top_up.pk, status=TopUpStatus.PENDING).update(
        status=status, decided_by=operator, decided_at=now, note=str(note or "")[:300]
    )
    if not updated:
        top_up.refresh_from_db()
        raise Conflict(
            _("This top-up was already %(status)s.") % {"status": top_up.get_status_display()}
        )
    top_up.refresh_from_db()
    return top_up


def top_up_approve(*, operator: User, top_up: TopUpRequest, note: str = "") -> TopUpRequest:
    """Credit the wallet with the top-up, once: approving twice is refused."""
    with transaction.atomic():
        top_up = _decide(top_up, operator=operator, status=TopUpStatus.APPROVED, note=note)
        wallet_post(
            top_up.wallet,
            kind=EntryKind.RECHARGE,
            amount=top_up.amount,
            key=f"top_up:{top_up.pk}",
            description=gettext_noop("Bank transfer %(reference)s"),
            description_args={"reference": top_up.reference},
            actor=operator,
        )
        audit_record(
            AuditAction.TOP_UP_APPROVED,
            actor=operator,
            organization=top_up.wallet.organization,
            target=top_up,
            details={"amount": str(top_up.amount)},
        )
    return top_up


def top_up_reject(*, operator: User, top_up: TopUpRequest, note: str = "") -> TopUpRequest:
    with transaction.atomic():
        top_up = _decide(top_up, operator=operator, status=TopUpStatus.REJECTED, note=note)
        audit_record(
            AuditAction.TOP_UP_REJECTED,
            actor=operator,
            organization=top_up.wallet.organization,
            target=top_up,
            details={"note": top_up.note},
        )
    return top_up


def voucher_code_new() -> str:
    return "-".join("".join(secrets.choice(CODE_ALPHABET) for _ in range(4)) for _ in range(3))


def voucher_create(
    *,
    operator: User,
    amount,
    code: str = "",
    max_redemptions: int = 1,
    per_organization_limit: int = 1,
    expires_at: datetime | None = None,
) -> Voucher:
    """A voucher worth ``amount`` of promotional credit; a code is made when none is given."""
    value = money_parse(amount)
    code = str(code or "").strip().upper() or voucher_code_new()
    if len(code) > 40 or not all(ch.isalnum() or ch == "-" for ch in code):
        raise ValidationError.for_field("code", _("Use up to 40 letters, digits and dashes."))
    for field, number in (
        ("max_redemptions", max_redemptions),
        ("per_organization_limit", per_organization_limit),
    ):
        if not isinstance(number, int) or not 1 <= number <= 1_000_000:
            raise ValidationError.for_field(field, _("Enter a whole number from 1 to 1,000,000."))
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError.for_field("expires_at", _("The expiry must be in the future."))
    taken = ValidationError.for_field("code", _("A voucher with this code exists."))
    if Voucher.objects.filter(code=code).exists():
        raise taken
    try:
        with transaction.atomic():  # two operators choosing one code at once: one gets it
            voucher = Voucher.objects.create(
                code=code,
                amount=value,
                currency=currency_check(""),
                max_redemptions=max_redemptions,
                per_organization_limit=per_organization_limit,
                expires_at=expires_at,
                created_by=operator,
            )
    except IntegrityError:
        raise taken from None
    audit_record(
        AuditAction.VOUCHER_CREATED,
        actor=operator,
        target=voucher,
        details={"amount": str(value), "max_redemptions": max_redemptions},
    )
    return voucher


def voucher_update(
    *, operator: User, voucher: Voucher, expires_at: datetime | None, is_active: bool
) -> Voucher:
    """Change what may change of a voucher once made: its expiry and whether it is active
    (a voucher is deactivated, never deleted: redemptions point at it). Audited."""
    changes = {}
    if expires_at != voucher.expires_at:
        if expires_at is not None and expires_at <= timezone.now() and is_active:
            raise ValidationError.for_field(
                "expires_at", _("The expiry must be in the future (or deactivate the voucher).")
            )
        changes["expires_at"] = [
            value.isoformat() if value else None for value in (voucher.expires_at, expires_at)
        ]
    if bool(is_active) != voucher.is_active:
        changes["is_active"] = [voucher.is_active, bool(is_active)]
    if not changes:
        return voucher
    voucher.expires_at, voucher.is_active = expires_at, bool(is_active)
    voucher.save(update_fields=["expires_at", "is_active"])
    audit_record(AuditAction.VOUCHER_CHANGED, actor=operator, target=voucher, details=changes)
    return voucher


def voucher_redeem(*, user: User, organization: Organization, code: str) -> VoucherRedemption:
    """Credit the voucher's amount to the organisation, within its limits; the voucher row
    is locked, so concurrent redemptions count right."""
    code = str(code or "").strip().upper()
    invalid = ValidationError.for_field("code", _("This voucher code is not valid."))
    if not code:
        raise ValidationError.for_field("code", _("Enter a voucher code."))
    with transaction.atomic():  # a refusal keeps nothing, not even a first-use wallet
        wallet = wallet_get(organization)
        voucher = Voucher.objects.select_for_update().filter(code=code, is_active=True).first()
        if voucher is None:
            raise invalid
        if voucher.expires_at is not None and voucher.expires_at <= timezone.now():
            raise ValidationError.for_field("code", _("This voucher has expired."))
        if voucher.currency != wallet.currency:
            raise invalid
        used = VoucherRedemption.objects.filter(voucher=voucher, wallet=wallet).count()
        if used >= voucher.per_organization_limit:
            raise ValidationError.for_field(
                "code", _("Your organisation has already redeemed this voucher.")
            )
        if voucher.redemptions >= voucher.max_redemptions:
            raise ValidationError.for_field("code", _("This voucher has been used up."))
        entry = wallet_post(
            wallet,
            kind=EntryKind.PROMOTION,
            amount=voucher.amount,
            key=f"voucher:{voucher.pk}:{wallet.pk}:{used + 1}",
            description=gettext_noop("Voucher %(code)s"),
            description_args={"code": voucher.code},
            actor=user,
        )
        if entry is None:  # a concurrent redemption of this very use won
            raise ValidationError.for_field(
                "code", _("Your organisation has already redeemed this voucher.")
            )
        Voucher.objects.filter(pk=voucher.pk).update(redemptions=F("redemptions") + 1)
        redemption = VoucherRedemption.objects.create(
            voucher=voucher, wallet=wallet, entry=entry, redeemed_by=user
        )
        audit_record(
            AuditAction.VOUCHER_REDEEMED,
            actor=user,
            organization=organization,
            target=voucher,
            details={"amount": str(voucher.amount)},
        )
    return redemption
