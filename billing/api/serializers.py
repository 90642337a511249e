"""Input and output shapes of the billing API. Money is a decimal string; inputs take at most
two decimal places (prices six), and the services apply the rules (sign, size, currency)."""

from decimal import Decimal

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from ..choices import EntryKind, PriceResource
from ..models import MAX_PRICE, LedgerEntry, Price, TopUpRequest, Voucher
from ..services.wallets import MAX_AMOUNT

MONEY = {"max_digits": 20, "decimal_places": 6}
CREDIT_KINDS = [
    (kind.value, kind.label)
    for kind in (EntryKind.RECHARGE, EntryKind.REFUND, EntryKind.ADJUSTMENT, EntryKind.PROMOTION)
]


def money_input(**kwargs) -> serializers.DecimalField:
    """An amount typed by a person: two decimal places, at most ``MAX_AMOUNT``."""
    kwargs.setdefault("min_value", Decimal("0.01"))
    return serializers.DecimalField(max_digits=12, decimal_places=2, max_value=MAX_AMOUNT, **kwargs)


# Customers ------------------------------------------------------------------------------------


class BalanceSerializer(serializers.Serializer):
    balance = serializers.DecimalField(**MONEY)
    currency = serializers.CharField()
    burn_rate_per_hour = serializers.DecimalField(
        **MONEY, help_text=_("What the organisation's running resources cost per hour now.")
    )
    hours_left = serializers.FloatField(
        allow_null=True, help_text=_("How long the balance lasts at that rate; null: no burn.")
    )
    runs_out_at = serializers.DateTimeField(
        allow_null=True, help_text=_("When the balance runs out; null: no burn, or over ten years.")
    )
    low_balance_threshold = serializers.DecimalField(
        **MONEY, allow_null=True, help_text=_("Null: one hour at the current burn rate.")
    )
    spend_limit_per_hour = serializers.DecimalField(
        **MONEY,
        allow_null=True,
        help_text=_("Starting more than this burn rate per hour is refused; null: no limit."),
    )
    is_low = serializers.BooleanField()


class BalanceUpdateSerializer(serializers.Serializer):
    """Give a field to set it, null to clear it; a field left out stays as it is."""

    low_balance_threshold = money_input(required=False, allow_null=True, min_value=Decimal(0))
    spend_limit_per_hour = money_input(required=False, allow_null=True, min_value=Decimal(0))


class UsageQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=1, max_value=90, default=30)


class UsageSeriesSerializer(serializers.Serializer):
    label = serializers.CharField(help_text=_("Resource kind, and GPU model for GPU time."))
    values = serializers.ListField(child=serializers.DecimalField(**MONEY))


class UsageSerializer(serializers.Serializer):
    days = serializers.ListField(child=serializers.DateField(), help_text=_("UTC days."))
    series = UsageSeriesSerializer(many=True, help_text=_("Spent per day, one list per series."))
    total = serializers.DecimalField(**MONEY)


class BankTransferSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=[("bank_transfer", _("Bank transfer"))])
    amount = money_input()
    currency = serializers.CharField(
        max_length=3, required=False, allow_blank=True, help_text=_("Default: the wallet's.")
    )
    reference = serializers.CharField(
        max_length=200, help_text=_("The transfer's reference, as the bank statement shows it.")
    )


class VoucherRedeemSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=[("voucher", _("Voucher"))])
    code = serializers.CharField(max_length=40)


class RechargeRecordSerializer(serializers.Serializer):
    time = serializers.DateTimeField()
    method = serializers.CharField(help_text=_("bank_transfer, voucher or a payment provider."))
    amount = serializers.DecimalField(**MONEY)
    currency = serializers.CharField()
    status = serializers.CharField(help_text=_("pending, approved, rejected, succeeded, failed."))
    reference = serializers.CharField()


class LedgerEntrySerializer(serializers.ModelSerializer):
    meter = serializers.SlugRelatedField(slug_field="reference", read_only=True, allow_null=True)
    description = serializers.CharField(
        source="description_text",
        read_only=True,
        help_text=_("In the request's language (Accept-Language)."),
    )

    class Meta:
        model = LedgerEntry
        fields = [
            "id",
            "created_at",
            "kind",
            "amount",
            "currency",
            "description",
            "meter",
            "period_start",
            "period_end",
            "seconds",
            "rate",
        ]
        read_only_fields = fields


class StatementMonthSerializer(serializers.Serializer):
    period = serializers.CharField(help_text=_("YYYY-MM"))
    csv = serializers.URLField()
    pdf = serializers.URLField()


# Operators ------------------------------------------------------------------------------------


class PriceSerializer(serializers.ModelSerializer):
    # Plain strings: empty means every region (every GPU model), which a slug pattern refuses.
    region = serializers.CharField(read_only=True)
    gpu_model = serializers.CharField(read_only=True)
    updated_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)

    class Meta:
        model = Price
        fields = ["id", "resource", "region", "gpu_model", "amount", "updated_by", "updated_at"]
        read_only_fields = fields


class PriceUpdateSerializer(serializers.Serializer):
    amount = serializers.DecimalField(
        max_digits=14,
        decimal_places=6,
        min_value=Decimal(0),
        max_value=MAX_PRICE,
        help_text=_("Per hour; for storage, per GiB-month."),
    )


class PriceCreateSerializer(PriceUpdateSerializer):
    """Sets the price of (resource, region, GPU model), adding it when there is none."""

    resource = serializers.ChoiceField(choices=PriceResource.choices)
    region = serializers.SlugField(
        max_length=60, required=False, allow_blank=True, default="", help_text=_("Empty: all.")
    )
    gpu_model = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default="", help_text=_("Empty: all.")
    )


class WalletCreditSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=CREDIT_KINDS)
    amount = money_input(
        min_value=-MAX_AMOUNT, help_text=_("Only an adjustment may be negative (money taken).")
    )
    reason = serializers.CharField(max_length=300, help_text=_("For the ledger and audit log."))
    idempotency_key = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text=_("Send the same key again and the credit is not made twice (409)."),
    )


class TopUpSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(
        source="wallet.organization", slug_field="slug", read_only=True
    )
    requested_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)
    decided_by = serializers.SlugRelatedField(slug_field="email", read_only=True, allow_null=True)

    class Meta:
        model = TopUpRequest
        fields = [
            "id",
            "organization",
            "amount",
            "currency",
            "reference",
            "status",
            "requested_by",
            "decided_by",
            "decided_at",
            "note",
            "created_at",
        ]
        read_only_fields = fields


class TopUpDecisionSerializer(serializers.Serializer):
    note = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


class VoucherSerializer(serializers.ModelSerializer):
    class Meta:
        model = Voucher
        fields = [
            "id",
            "code",
            "amount",
            "currency",
            "max_redemptions",
            "per_organization_limit",
            "redemptions",
            "expires_at",
            "is_active",
            "created_at",
        ]
        read_only_fields = fields


class VoucherCreateSerializer(serializers.Serializer):
    code = serializers.CharField(
        max_length=40, required=False, allow_blank=True, help_text=_("Empty: one is made.")
    )
    amount = money_input()
    max_redemptions = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1)
    per_organization_limit = serializers.IntegerField(min_value=1, max_value=1_000_000, default=1)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class RevenueQuerySerializer(serializers.Serializer):
    days = serializers.IntegerField(min_value=1, max_value=366, default=30)


class RevenueDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    amount = serializers.DecimalField(**MONEY)


class RevenueOrganizationSerializer(serializers.Serializer):
    organization_id = serializers.IntegerField()
    organization_name = serializers.CharField()
    balance = serializers.DecimalField(**MONEY)
    currency = serializers.CharField()
    amount = serializers.DecimalField(**MONEY)
    entries = serializers.IntegerField()


class RevenueSerializer(serializers.Serializer):
    by_day = RevenueDaySerializer(many=True)
    by_organization = RevenueOrganizationSerializer(many=True)
