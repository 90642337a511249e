"""The sandbox provider: a checkout page on this site where the customer clicks "Pay" or
"Decline", for development and tests.

The page does what a real processor does after the customer pays: it signs a notification
with the webhook secret and hands it to the same webhook service a real one reaches over
HTTP, so the whole path, signature included, runs. Enabling it in production would let any
owner or admin credit their wallet for free: ``BILLING_PAYMENT_PROVIDER="sandbox"`` is for
development and test sites only.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from decimal import Decimal

from django.contrib import messages
from django.http import Http404, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext as _

from remotegpu.core.errors import NotFound, ValidationError
from remotegpu.core.pages import ScopedDetailView
from remotegpu.core.portal import service_messages

from ..choices import PaymentStatus
from ..models import Payment
from ..services.payments import payment_webhook
from ..services.wallets import CENT
from .base import (
    FAILED,
    SIGNATURE_HEADER,
    SUCCEEDED,
    Checkout,
    PaymentEvent,
    PaymentProvider,
    header_get,
    provider_get,
    signature_header,
    signature_verify,
)

EVENT_TYPES = {"payment.succeeded": SUCCEEDED, "payment.failed": FAILED}
DECISIONS = {"pay": SUCCEEDED, "decline": FAILED}


class SandboxProvider(PaymentProvider):
    """Notifications are JSON ``{"id", "type", "reference", "amount", "currency"}``, the
    amount a decimal string, signed with ``RemoteGPU-Signature``."""

    name = "sandbox"

    def checkout_create(self, payment: Payment) -> Checkout:
        reference = f"sbx_{secrets.token_hex(12)}"
        url = reverse("billing:payment_sandbox_checkout", args=[reference])
        return Checkout(url=url, provider_reference=reference)

    def event_body(self, payment: Payment, status: str) -> bytes:
        """The notification the sandbox sends when the customer pays or declines."""
        kind = next(name for name, value in EVENT_TYPES.items() if value == status)
        event = {
            "id": f"evt_{secrets.token_hex(12)}",
            "type": kind,
            "reference": payment.provider_reference,
            "amount": str(payment.amount),
            "currency": payment.currency,
        }
        return json.dumps(event).encode()

    def webhook_verify(self, body: bytes, headers: Mapping[str, str]) -> PaymentEvent | None:
        signature_verify(body, header_get(headers, SIGNATURE_HEADER), self.secret)
        try:
            data = json.loads(body)
            kind = data["type"]
            if kind not in EVENT_TYPES:
                return None
            amount = Decimal(str(data["amount"]))
            event = PaymentEvent(
                provider_reference=str(data["reference"]),
                status=EVENT_TYPES[kind],
                amount=amount,
                currency=str(data["currency"]),
                event_id=str(data["id"]),
            )
        except (ValueError, KeyError, TypeError, ArithmeticError):
            # Signed, so from the provider, but not in the shape it documents.
            raise ValidationError(_("The notification's body is malformed.")) from None
        if not amount.is_finite():
            raise ValidationError.for_field("amount", _("The amount is not a number."))
        return event


class SandboxCheckoutView(ScopedDetailView):
    """The sandbox's "pay" page for one pending payment, to members of its organisation."""

    template_name = "billing/sandbox_checkout.html"
    context_object_name = "payment"
    slug_field = "provider_reference"
    slug_url_kwarg = "reference"

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated:  # others are sent to sign in, like any page
            try:
                self.provider = provider_get(SandboxProvider.name)
            except NotFound:
                # Not enabled: the page does not exist.
                raise Http404 from None
        return super().dispatch(request, *args, **kwargs)

    def scoped_queryset(self):
        payments = Payment.objects.filter(provider=SandboxProvider.name).select_related(
            "wallet__organization"
        )
        user = self.request.user
        if user.is_staff:
            return payments
        return payments.filter(wallet__organization__memberships__user=user)

    def post(self, request, *args, **kwargs):
        payment = self.get_object()
        status = DECISIONS.get(request.POST.get("decision", ""))
        if payment.status != PaymentStatus.PENDING:
            messages.info(
                request,
                _("This payment is already %(status)s.")
                % {"status": payment.get_status_display().lower()},
            )
        elif status is None:
            messages.error(request, _("Choose Pay or Decline."))
            return HttpResponseRedirect(request.path)
        else:
            body = self.provider.event_body(payment, status)
            headers = {SIGNATURE_HEADER: signature_header(body, self.provider.secret)}
            with service_messages(request):
                payment_webhook(self.provider.name, body, headers)
                if status == SUCCEEDED:
                    messages.success(
                        request,
                        _("Paid %(amount)s %(currency)s; your balance has been credited.")
                        % {"amount": payment.amount.quantize(CENT), "currency": payment.currency},
                    )
                else:
                    messages.warning(request, _("The payment was declined; nothing was charged."))
        return HttpResponseRedirect(reverse("billing:billing_overview"))
