"""Operator admin for billing. Money moves through services only, so that each movement is one
ledger entry, audited: prices through ``price_set``, credits and wallet settings on the
wallet's page, vouchers through ``voucher_create`` and ``voucher_update``, top-ups by the
approve and reject actions. The ledger and what the services keep (meters, intervals,
payments, runs) are read-only."""

from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from remotegpu.core.admin import ReadOnlyAdmin
from remotegpu.core.errors import ApplicationError

from .api.serializers import CREDIT_KINDS
from .forms import one_time_key_field
from .models import (
    LedgerEntry,
    Meter,
    Payment,
    Price,
    ReconciliationRun,
    RunInterval,
    Source,
    TopUpRequest,
    Voucher,
    VoucherRedemption,
    Wallet,
)
from .services.prices import price_delete, price_set
from .services.recharge import top_up_approve, top_up_reject, voucher_create, voucher_update
from .services.wallets import wallet_credit, wallet_settings_update


class ServiceAdmin(admin.ModelAdmin):
    """Saves go through services: a refusal is shown as a message and nothing is saved (the
    admin's form view runs in one transaction)."""

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ApplicationError as error:
            self.message_user(request, error.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


class KeptByServicesAdmin(ReadOnlyAdmin):
    """Money's history and what the services keep: operators look, never edit or delete."""

    def has_delete_permission(self, request, obj=None):
        return False


@admin.display(description=_("organisation"), ordering="wallet__organization__name")
def wallet_organization(obj):
    return obj.wallet.organization


@admin.register(Price)
class PriceAdmin(ServiceAdmin):
    list_display = ["resource", "region", "gpu_model", "amount", "updated_by", "updated_at"]
    list_filter = ["resource", "region"]
    search_fields = ["region", "gpu_model"]
    list_select_related = ["updated_by"]
    fields = ["resource", "region", "gpu_model", "amount"]

    def get_readonly_fields(self, request, obj=None):
        # Resource, region and GPU model name the price; another name is another price.
        return ["resource", "region", "gpu_model"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        price = price_set(
            operator=request.user,
            resource=obj.resource,
            amount=obj.amount,
            region=obj.region,
            gpu_model=obj.gpu_model,
        )
        obj.pk = price.pk

    def delete_model(self, request, obj):
        price_delete(operator=request.user, price=obj)

    def delete_queryset(self, request, queryset):
        for price in queryset:
            price_delete(operator=request.user, price=price)


class WalletForm(forms.ModelForm):
    credit_kind = forms.ChoiceField(
        label=_("credit kind"), choices=[("", "---------"), *CREDIT_KINDS], required=False
    )
    credit_amount = forms.DecimalField(
        label=_("credit amount"),
        max_digits=12,
        decimal_places=2,
        required=False,
        help_text=_(
            "Added to the balance as one ledger entry; only an adjustment may be negative."
        ),
    )
    credit_reason = forms.CharField(label=_("reason"), max_length=300, required=False)
    credit_key = one_time_key_field()

    class Meta:
        model = Wallet
        fields = ["low_balance_threshold", "spend_limit_per_hour"]

    def clean(self):
        data = super().clean()
        if data.get("credit_amount") is not None:
            if not data.get("credit_kind"):
                self.add_error("credit_kind", _("Choose what kind of credit this is."))
            if not (data.get("credit_reason") or "").strip():
                self.add_error("credit_reason", _("Say why, for the ledger and the audit log."))
        return data


@admin.register(Wallet)
class WalletAdmin(ServiceAdmin):
    """The balance is read-only; the page credits the wallet and sets its alerts and limit."""

    form = WalletForm
    list_display = [
        "organization",
        "balance",
        "currency",
        "low_balance_threshold",
        "spend_limit_per_hour",
        "depleted_at",
        "credit_link",
    ]
    list_filter = ["currency", ("depleted_at", admin.EmptyFieldListFilter)]
    search_fields = ["organization__name", "organization__slug"]
    list_select_related = ["organization"]
    readonly_fields = [
        "organization",
        "currency",
        "balance",
        "entries_link",
        "depleted_at",
        "low_balance_notified_at",
        "out_of_balance_stop_at",
    ]
    fieldsets = [
        (None, {"fields": readonly_fields}),
        (_("Settings"), {"fields": ["low_balance_threshold", "spend_limit_per_hour"]}),
        (
            _("Credit"),
            {"fields": ["credit_kind", "credit_amount", "credit_reason", "credit_key"]},
        ),
    ]

    def has_add_permission(self, request):
        return False  # made on the organisation's first use of billing

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description=_("credit"))
    def credit_link(self, obj):
        url = reverse("admin:billing_wallet_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, _("Credit…"))

    @admin.display(description=_("ledger"))
    def entries_link(self, obj):
        url = reverse("admin:billing_ledgerentry_changelist") + f"?wallet__id__exact={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, _("Ledger entries"))

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        settings = ["low_balance_threshold", "spend_limit_per_hour"]
        if any(name in form.changed_data for name in settings):
            wallet_settings_update(
                actor=request.user,
                organization=obj.organization,
                **{name: data[name] for name in settings},
            )
        if data.get("credit_amount") is not None:
            wallet_credit(
                operator=request.user,
                organization=obj.organization,
                amount=data["credit_amount"],
                reason=data["credit_reason"],
                kind=data["credit_kind"],
                key=f"credit:{obj.organization.pk}:admin:{data['credit_key']}",
            )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(KeptByServicesAdmin):
    list_display = [
        "created_at",
        wallet_organization,
        "kind",
        "amount",
        "currency",
        "description_shown",
        "meter",
        "actor",
    ]
    list_filter = ["kind", "currency", "created_at"]
    exclude = ["description"]  # a message id: shown in the reader's language instead
    readonly_fields = ["description_shown"]
    search_fields = [
        "wallet__organization__name",
        "wallet__organization__slug",
        "description",
        # The arguments ledger entries are described with (see deferred_text).
        "description_args__reference",
        "description_args__code",
        "idempotency_key",
        "meter__reference",
    ]
    list_select_related = ["wallet__organization", "meter", "actor"]
    show_full_result_count = False  # the ledger grows by a row per meter per minute

    @admin.display(description=_("description"))
    def description_shown(self, obj):
        return obj.description_text


@admin.register(TopUpRequest)
class TopUpRequestAdmin(KeptByServicesAdmin):
    list_display = [
        "created_at",
        wallet_organization,
        "amount",
        "currency",
        "reference",
        "status",
        "requested_by",
        "decided_by",
        "decided_at",
    ]
    list_filter = ["status", "currency", "created_at"]
    search_fields = [
        "reference",
        "wallet__organization__name",
        "wallet__organization__slug",
        "requested_by__email",
    ]
    list_select_related = ["wallet__organization", "requested_by", "decided_by"]
    actions = ["approve", "reject"]

    def _decide(self, request, queryset, service, done):
        decided = 0
        for top_up in queryset:
            try:
                service(operator=request.user, top_up=top_up)
                decided += 1
            except ApplicationError as error:  # each refusal is reported; the rest proceed
                self.message_user(request, f"{top_up}: {error.message}", messages.WARNING)
        self.message_user(request, done % {"n": decided}, messages.SUCCESS)

    @admin.action(description=_("Approve (credit the wallet)"))
    def approve(self, request, queryset):
        self._decide(request, queryset, top_up_approve, _("%(n)d top-ups approved."))

    @admin.action(description=_("Reject"))
    def reject(self, request, queryset):
        self._decide(request, queryset, top_up_reject, _("%(n)d top-ups rejected."))


class VoucherForm(forms.ModelForm):
    code = forms.CharField(
        label=_("code"), max_length=40, required=False, help_text=_("Empty: one is made.")
    )
    amount = forms.DecimalField(
        label=_("amount"), max_digits=12, decimal_places=2, min_value=Decimal("0.01")
    )

    class Meta:
        model = Voucher
        fields = ["code", "amount", "max_redemptions", "per_organization_limit", "expires_at"]


@admin.register(Voucher)
class VoucherAdmin(ServiceAdmin):
    """Vouchers are made by ``voucher_create``; afterwards only their expiry and whether they
    are active change."""

    list_display = [
        "code",
        "amount",
        "currency",
        "redemptions",
        "max_redemptions",
        "per_organization_limit",
        "expires_at",
        "is_active",
    ]
    list_filter = ["is_active", "currency", "expires_at"]
    search_fields = ["code"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = VoucherForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return VoucherForm.Meta.fields
        return [*self.get_readonly_fields(request, obj), "expires_at", "is_active"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return [
            "code",
            "amount",
            "currency",
            "max_redemptions",
            "per_organization_limit",
            "redemptions",
            "created_by",
            "created_at",
        ]

    def has_delete_permission(self, request, obj=None):
        return False  # redemptions point at it; deactivate instead

    def save_model(self, request, obj, form, change):
        if change:
            voucher_update(
                operator=request.user,
                voucher=Voucher.objects.get(pk=obj.pk),
                expires_at=obj.expires_at,
                is_active=obj.is_active,
            )
            return
        voucher = voucher_create(
            operator=request.user,
            amount=obj.amount,
            code=obj.code,
            max_redemptions=obj.max_redemptions,
            per_organization_limit=obj.per_organization_limit,
            expires_at=obj.expires_at,
        )
        obj.pk, obj.code = voucher.pk, voucher.code


@admin.register(VoucherRedemption)
class VoucherRedemptionAdmin(KeptByServicesAdmin):
    list_display = ["created_at", "voucher", wallet_organization, "redeemed_by"]
    list_filter = ["created_at"]
    search_fields = ["voucher__code", "wallet__organization__name", "redeemed_by__email"]
    list_select_related = ["voucher", "wallet__organization", "redeemed_by"]


@admin.register(Payment)
class PaymentAdmin(KeptByServicesAdmin):
    list_display = [
        "created_at",
        "provider",
        "provider_reference",
        wallet_organization,
        "amount",
        "currency",
        "status",
    ]
    list_filter = ["provider", "status", "currency"]
    search_fields = ["provider_reference", "wallet__organization__name"]
    list_select_related = ["wallet__organization"]


@admin.register(Meter)
class MeterAdmin(KeptByServicesAdmin):
    list_display = [
        "reference",
        "label_shown",
        "organization",
        "kind",
        "region",
        "gpu_model",
        "rate",
    ]
    list_filter = ["kind", "region", "gpu_model"]
    search_fields = [
        "reference",
        "label",
        "label_args__name",  # an environment's (its volume)
        "label_args__host",  # a whole machine's
        "organization__name",
        "organization__slug",
    ]
    list_select_related = ["organization"]
    exclude = ["label"]  # a message id: shown in the reader's language instead
    readonly_fields = ["label_shown"]

    @admin.display(description=_("name"))
    def label_shown(self, obj):
        return obj.label_text


@admin.register(RunInterval)
class RunIntervalAdmin(KeptByServicesAdmin):
    list_display = ["meter", "source", "started_at", "ended_at", "billed_until"]
    list_filter = [("ended_at", admin.EmptyFieldListFilter), "started_at"]
    search_fields = ["meter__reference", "meter__label", "source__key"]
    list_select_related = ["meter", "source"]


@admin.register(Source)
class SourceAdmin(KeptByServicesAdmin):
    list_display = ["key", "seen_until"]
    list_filter = ["seen_until"]
    search_fields = ["key"]


@admin.register(ReconciliationRun)
class ReconciliationRunAdmin(KeptByServicesAdmin):
    list_display = ["started_at", "wallets_checked", "intervals_checked", "clean"]
    list_filter = ["started_at"]
    search_fields = ["differences"]

    @admin.display(description=_("clean"), boolean=True)
    def clean(self, obj):
        return obj.is_clean
