"""Forms of the billing pages; the services check every value again."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django import forms
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from remotegpu.core.forms import StyledForm

from .choices import EntryKind, PriceResource
from .models import MAX_PRICE
from .services.wallets import MAX_AMOUNT

# Inputs of money: a browser number field that steps by cents.
MONEY_INPUT = forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"})


def money_field(label, *, required: bool = True, minimum: Decimal | None = None, help_text=""):
    return forms.DecimalField(
        label=label,
        required=required,
        min_value=minimum,
        max_value=MAX_AMOUNT,
        max_digits=14,
        decimal_places=2,
        widget=MONEY_INPUT,
        help_text=help_text,
    )


def one_time_key_field() -> forms.CharField:
    """A hidden key made when the form is shown: posting the same form twice (a double click,
    the back button) credits once."""
    return forms.CharField(
        widget=forms.HiddenInput, initial=lambda: uuid.uuid4().hex, max_length=64, required=True
    )


class TopUpRequestForm(StyledForm):
    amount = money_field(_("Amount"), minimum=Decimal("0.01"))
    reference = forms.CharField(
        label=_("Transfer reference"),
        max_length=200,
        help_text=_("What the bank statement shows, so that we can match your transfer."),
    )


class VoucherRedeemForm(StyledForm):
    code = forms.CharField(label=_("Voucher code"), max_length=40)


class WalletSettingsForm(StyledForm):
    low_balance_threshold = money_field(
        _("Low-balance threshold"),
        required=False,
        minimum=Decimal(0),
        help_text=_(
            "Owners and admins are told when the balance falls to it; empty: one hour "
            "at the current burn rate."
        ),
    )
    spend_limit_per_hour = money_field(
        _("Spend limit per hour"),
        required=False,
        minimum=Decimal(0),
        help_text=_("Starting more than this burn rate per hour is refused; empty: no limit."),
    )


class PriceForm(StyledForm):
    resource = forms.ChoiceField(label=_("Resource"), choices=PriceResource.choices)
    region = forms.SlugField(
        label=_("Region"),
        max_length=60,
        required=False,
        help_text=_("A region's slug; empty: every region."),
    )
    gpu_model = forms.CharField(
        label=_("GPU model"),
        max_length=100,
        required=False,
        help_text=_("For GPU and whole-machine prices; empty: every model."),
    )
    amount = forms.DecimalField(
        label=_("Price"),
        min_value=Decimal(0),
        max_value=MAX_PRICE,
        max_digits=14,
        decimal_places=6,
        widget=forms.NumberInput(attrs={"step": "0.000001", "inputmode": "decimal"}),
        help_text=_("Per hour; for kept volumes, per GiB and month."),
    )


class PriceAmountForm(StyledForm):
    """Editing a price changes its amount; what it is for stays (add another price instead)."""

    amount = PriceForm.base_fields["amount"]


class VoucherCreateForm(StyledForm):
    amount = money_field(_("Amount"), minimum=Decimal("0.01"))
    code = forms.CharField(
        label=_("Code"),
        max_length=40,
        required=False,
        help_text=_("Letters, digits and dashes; empty: one is made up."),
    )
    max_redemptions = forms.IntegerField(
        label=_("Redemptions in all"), min_value=1, max_value=1_000_000, initial=1
    )
    per_organization_limit = forms.IntegerField(
        label=_("Redemptions per organisation"), min_value=1, max_value=1_000_000, initial=1
    )
    expires_at = forms.DateTimeField(
        label=_("Expires"),
        required=False,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text=_("Empty: never."),
    )


CREDIT_KINDS = [
    (kind.value, kind.label)
    for kind in (EntryKind.RECHARGE, EntryKind.REFUND, EntryKind.ADJUSTMENT, EntryKind.PROMOTION)
]


class WalletCreditForm(StyledForm):
    organization = forms.ModelChoiceField(
        label=_("Organisation"), queryset=Organization.objects.order_by("name")
    )
    kind = forms.ChoiceField(label=_("Kind"), choices=CREDIT_KINDS)
    amount = money_field(
        _("Amount"), help_text=_("An adjustment may be negative: it takes money away.")
    )
    reason = forms.CharField(
        label=_("Reason"),
        max_length=300,
        help_text=_("Shown in the ledger and kept in the audit log."),
    )
    key = one_time_key_field()


class TopUpDecisionForm(forms.Form):
    note = forms.CharField(max_length=300, required=False)
