"""What every payment provider offers, the signed-webhook scheme they share, and the registry.

A provider turns a pending :class:`~billing.models.Payment` into a page where the customer
pays (``checkout_create``), and turns the notification it later sends back into a
:class:`PaymentEvent` only after checking its signature (``webhook_verify``). Crediting the
wallet, once, is the service's job (``billing.services.payments``), never the provider's.

Adding a card processor: a module with a ``PaymentProvider`` subclass, one line in
``PROVIDERS``, and ``BILLING_PAYMENT_PROVIDER`` naming it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.utils.module_loading import import_string
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from remotegpu.core.errors import ApplicationError, NotFound

if TYPE_CHECKING:
    from ..models import Payment

SIGNATURE_HEADER = "RemoteGPU-Signature"
# A captured notification replayed later than this is refused; the provider's own retries
# are signed afresh, so they still get through.
REPLAY_WINDOW_SECONDS = 300

SUCCEEDED = "succeeded"
FAILED = "failed"

# Name → the provider's class, imported only when it is the one enabled.
PROVIDERS = {
    "sandbox": "billing.payments.sandbox.SandboxProvider",
}


class SignatureInvalid(ApplicationError):
    """A notification whose signature is missing, wrong or too old: never acted on."""

    code = "invalid_signature"
    status_code = 400
    default_message = gettext_lazy("The notification's signature is missing or invalid.")


class PaymentsUnavailable(ApplicationError):
    code = "payments_unavailable"
    status_code = 409
    default_message = gettext_lazy(
        "Card payments are not available here; recharge by bank transfer or a voucher."
    )


class ProviderUnavailable(ApplicationError):
    """The provider failed or did not answer: nothing was charged; the customer may retry."""

    code = "provider_unavailable"
    status_code = 502
    default_message = gettext_lazy("The payment provider did not answer. Try again shortly.")


@dataclass(frozen=True)
class Checkout:
    """Where to send the customer to pay, and the provider's name for this payment."""

    url: str
    provider_reference: str


@dataclass(frozen=True)
class PaymentEvent:
    """What a verified notification says about one payment."""

    provider_reference: str
    status: str  # SUCCEEDED or FAILED
    amount: Decimal
    currency: str
    event_id: str


class PaymentProvider(ABC):
    name: str = ""

    def __init__(self, secret: str):
        self.secret = secret

    @abstractmethod
    def checkout_create(self, payment: Payment) -> Checkout:
        """Open a checkout for ``payment`` (pending, its amount and currency final)."""

    @abstractmethod
    def webhook_verify(self, body: bytes, headers: Mapping[str, str]) -> PaymentEvent | None:
        """The event in a notification, after its signature is checked; ``SignatureInvalid``
        when it is missing, wrong or older than the replay window, a ``ValidationError`` when
        a signed body is malformed, None for a genuine event that is not about a payment's
        outcome (it is acknowledged and ignored)."""


def header_get(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever its case (Django's ``request.headers`` or a plain dict)."""
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``RemoteGPU-Signature`` value for ``body``: ``t=<unix>,v1=<hex HMAC-SHA256 of
    "<t>.<body>">``, as Stripe signs its webhooks."""
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def signature_verify(
    body: bytes,
    header: str | None,
    secret: str,
    *,
    tolerance: int = REPLAY_WINDOW_SECONDS,
    now: float | None = None,
) -> int:
    """Check a ``t=...,v1=...`` signature of ``body``; the signed timestamp, or
    ``SignatureInvalid``. Several ``v1`` are accepted (any may match) so that a secret can be
    rotated without losing notifications."""
    if not secret:
        # Without a secret anyone could forge a payment: refuse rather than skip the check.
        raise SignatureInvalid(_("Payment notifications are not set up: no signing secret."))
    if not header:
        raise SignatureInvalid(_("The notification is not signed."))
    timestamp = None
    signatures = []
    for part in header.split(","):
        key, _sep, value = part.strip().partition("=")
        # ASCII digits only: ``int`` refuses some characters ``isdigit`` accepts ("²").
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureInvalid(_("The notification's signature is malformed."))
    expected = _digest(secret, timestamp, body).encode()
    # Every candidate is compared in constant time, so timing says nothing about the secret;
    # as bytes, because ``compare_digest`` refuses str with non-ASCII characters.
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in signatures):
        raise SignatureInvalid(_("The notification's signature does not match."))
    now = time.time() if now is None else now
    # Both ways: a timestamp in the future would stretch the replay window.
    if abs(now - timestamp) > tolerance:
        raise SignatureInvalid(_("The notification is too old or its clock is wrong."))
    return timestamp


def provider_get(name: str) -> PaymentProvider:
    """The provider called ``name`` when it is the enabled one, else NotFound (a webhook to
    a provider that is not enabled, or to a name that is no provider)."""
    enabled = settings.BILLING_PAYMENT_PROVIDER
    if not name or name != enabled or name not in PROVIDERS:
        raise NotFound(_("No such payment provider is enabled."))
    return import_string(PROVIDERS[name])(secret=settings.BILLING_PAYMENT_WEBHOOK_SECRET)


def provider_enabled() -> PaymentProvider:
    """The provider card payments go through; ``PaymentsUnavailable`` when none is set up."""
    name = settings.BILLING_PAYMENT_PROVIDER
    if not name:
        raise PaymentsUnavailable()
    if name not in PROVIDERS:
        raise PaymentsUnavailable(
            _("Card payments are misconfigured: there is no provider called %(name)s.")
            % {"name": name}
        )
    if not settings.BILLING_PAYMENT_WEBHOOK_SECRET:
        # Its notifications could not be verified, so no payment would ever be credited.
        raise PaymentsUnavailable(
            _("Card payments are misconfigured: the webhook signing secret is missing.")
        )
    return provider_get(name)
