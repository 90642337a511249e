"""Card payments: a pending payment and its checkout, and the provider's signed notification
that credits the wallet once, however often it is delivered."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from accounts.choices import MANAGER_ROLES, AuditAction
from accounts.models import Organization, User
from accounts.services.audit import audit_record
from accounts.services.organizations import membership_require_role
from remotegpu.core.errors import ApplicationError, NotFound, ValidationError

from ..choices import EntryKind, PaymentStatus
from ..models import Payment
from ..payments.base import (
    FAILED,
    SUCCEEDED,
    ProviderUnavailable,
    provider_enabled,
    provider_get,
)
from .wallets import (
    currency_check,
    money_parse,
    wallet_currency_check,
    wallet_get,
    wallet_post,
)

logger = logging.getLogger(__name__)


def payment_key(provider: str, provider_reference: str) -> str:
    """The ledger's idempotency key for a payment: one credit per provider payment."""
    return f"payment:{provider}:{provider_reference}"


def payment_create(
    *, user: User, organization: Organization, amount, currency=None
) -> tuple[Payment, str]:
    """Start a card payment of ``amount`` into the organisation's wallet (owners and admins):
    a pending Payment and the URL of the provider's checkout. Nothing is credited until the
    provider's signed notification says the customer paid."""
    membership_require_role(user, organization, MANAGER_ROLES)
    value = money_parse(amount)
    code = currency_check(currency)
    provider = provider_enabled()
    wallet = wallet_get(organization)
    wallet_currency_check(wallet, code)
    # The row exists (committed) before the provider is asked, so the provider can carry its
    # id; its reference is a placeholder until the provider names the payment. The provider
    # call is outside any transaction: a slow provider must not hold rows locked.
    payment = Payment.objects.create(
        wallet=wallet,
        provider=provider.name,
        provider_reference=f"new:{uuid.uuid4().hex}",
        amount=value,
        currency=code,
        requested_by=user,
    )
    try:
        checkout = provider.checkout_create(payment)
    except Exception as error:
        Payment.objects.filter(pk=payment.pk).update(
            status=PaymentStatus.FAILED, updated_at=timezone.now()
        )
        if isinstance(error, ApplicationError):
            raise
        logger.exception("Payment provider %s failed to open a checkout", provider.name)
        raise ProviderUnavailable() from error
    payment.provider_reference = checkout.provider_reference
    payment.save(update_fields=["provider_reference", "updated_at"])
    return payment, checkout.url


def payment_webhook(provider_name: str, body: bytes, headers: Mapping[str, str]) -> Payment | None:
    """Act on a provider's notification (crosses a process boundary: the provider calls us).

    The signature is checked first; nothing in an unsigned body is read. A success credits
    the wallet with one ``recharge`` entry keyed ``payment:<provider>:<reference>``, marks the
    payment succeeded and audits it; a repeated notification changes nothing. A failure marks
    a pending payment failed. An amount or currency that differs from the payment's is
    refused and changes nothing. Returns the payment, or None for an event that is about no
    payment's outcome. All of it is one transaction."""
    provider = provider_get(provider_name)
    event = provider.webhook_verify(body, headers)
    if event is None:
        return None
    with transaction.atomic():
        payment = (
            Payment.objects.select_for_update()
            .select_related("wallet__organization")
            .filter(provider=provider.name, provider_reference=event.provider_reference)
            .first()
        )
        if payment is None:
            raise NotFound(_("There is no payment with this reference."))
        if event.amount != payment.amount:
            raise ValidationError.for_field(
                "amount", _("The amount differs from the payment's; nothing was credited.")
            )
        if event.currency.upper() != payment.currency:
            raise ValidationError.for_field(
                "currency", _("The currency differs from the payment's; nothing was credited.")
            )
        if event.status == SUCCEEDED:
            _payment_succeeded(payment, event.event_id)
        elif event.status == FAILED:
            # A late failure never undoes a success; refunds are entries of their own.
            changed = Payment.objects.filter(pk=payment.pk, status=PaymentStatus.PENDING).update(
                status=PaymentStatus.FAILED, updated_at=timezone.now()
            )
            if changed:
                payment.status = PaymentStatus.FAILED
        else:
            raise ValidationError.for_field("status", _("Unknown payment status."))
    return payment


def _payment_succeeded(payment: Payment, event_id: str) -> None:
    # Conditional: of two deliveries of the same success only one moves the status, and only
    # that one credits. A failed payment may still succeed (the customer retried the card).
    changed = (
        Payment.objects.filter(pk=payment.pk)
        .exclude(status=PaymentStatus.SUCCEEDED)
        .update(status=PaymentStatus.SUCCEEDED, updated_at=timezone.now())
    )
    if not changed:
        return
    payment.status = PaymentStatus.SUCCEEDED
    organization = payment.wallet.organization
    entry = wallet_post(
        payment.wallet,
        kind=EntryKind.RECHARGE,
        amount=payment.amount,
        key=payment_key(payment.provider, payment.provider_reference),
        description=gettext_noop("Card payment %(reference)s"),
        description_args={"reference": payment.provider_reference},
    )
    if entry is None:
        # The ledger already holds this credit; the status was what lagged.
        return
    # The provider, not a person, says the money arrived: no actor (the request's IP is the
    # provider's); who started the payment is in the details.
    requested_by = payment.requested_by
    audit_record(
        AuditAction.PAYMENT_SUCCEEDED,
        organization=organization,
        target=payment,
        details={
            "requested_by": requested_by.email if requested_by else None,
            "provider": payment.provider,
            "reference": payment.provider_reference,
            "event": event_id,
            "amount": str(payment.amount),
            "currency": payment.currency,
        },
    )
