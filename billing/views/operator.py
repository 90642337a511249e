"""Billing pages of operators, under ``/operator/billing/``: revenue, bank top-ups to decide,
the price list, vouchers, credits and reconciliation. Anyone but staff gets 404."""

from __future__ import annotations

from functools import cached_property

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.urls import reverse_lazy
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.generic import TemplateView

from remotegpu.core.pages import (
    PortalPageMixin,
    ScopedListView,
    ServiceActionView,
    ServiceFormView,
)

from ..choices import TopUpStatus
from ..forms import (
    PriceAmountForm,
    PriceForm,
    TopUpDecisionForm,
    VoucherCreateForm,
    WalletCreditForm,
)
from ..models import Price, ReconciliationRun, TopUpRequest, Voucher
from ..selectors import revenue_by_day, revenue_by_organization, revenue_window_start
from ..services.prices import price_delete, price_set
from ..services.recharge import top_up_approve, top_up_reject, voucher_create
from ..services.wallets import wallet_credit

REVENUE_DAYS = 30

CHECK_LABELS = {
    "balance": gettext_lazy("Balance differs from the sum of its ledger entries"),
    "charge": gettext_lazy("Charge differs from price × time"),
    "outside_interval": gettext_lazy("Entry outside its run interval"),
    "overlapping_entries": gettext_lazy("Entries charge the same time twice"),
    "billed_past_end": gettext_lazy("Interval billed past its end"),
    "overlapping_intervals": gettext_lazy("Run intervals of one meter overlap"),
}


class OperatorPageMixin(PortalPageMixin):
    operator_only = True


def _money(amount, currency: str) -> str:
    return f"{amount:,.2f} {currency}"


class BillingDashboardView(OperatorPageMixin, TemplateView):
    template_name = "billing/billing_dashboard.html"

    def get_context_data(self, **kwargs):
        now = timezone.now()
        days = revenue_by_day(days=REVENUE_DAYS, now=now)
        pending = TopUpRequest.objects.filter(status=TopUpStatus.PENDING).select_related(
            "wallet__organization", "requested_by"
        )
        return {
            **super().get_context_data(**kwargs),
            "currency": settings.BILLING_CURRENCY,
            "revenue_days": REVENUE_DAYS,
            "revenue_total": sum((day["amount"] for day in days), 0),
            "revenue_chart": {
                "days": [day["day"].isoformat() for day in days],
                "series": [
                    {
                        "label": _("Usage charged"),
                        "values": [float(day["amount"]) for day in days],
                    }
                ],
            },
            "organizations": revenue_by_organization(since=revenue_window_start(REVENUE_DAYS, now)),
            "pending_top_ups": pending.order_by("created_at"),
        }


class TopUpDecisionView(OperatorPageMixin, ServiceActionView):
    """Approve or reject a bank top-up; one decided already is refused with a message."""

    success_url = reverse_lazy("billing_operator:billing_dashboard")
    decide = None
    done = ""

    def scoped_queryset(self):
        return TopUpRequest.objects.select_related("wallet__organization")

    def perform(self, obj):
        form = TopUpDecisionForm(self.request.POST)
        note = form.cleaned_data["note"] if form.is_valid() else ""
        return self.decide(operator=self.request.user, top_up=obj, note=note)

    def get_success_message(self, obj):
        return self.done % {
            "amount": _money(obj.amount, obj.currency),
            "organization": obj.wallet.organization.name,
        }


class TopUpApproveView(TopUpDecisionView):
    decide = staticmethod(top_up_approve)
    done = gettext_lazy("Top-up of %(amount)s for %(organization)s approved and credited.")


class TopUpRejectView(TopUpDecisionView):
    decide = staticmethod(top_up_reject)
    done = gettext_lazy("Top-up of %(amount)s for %(organization)s rejected.")


class PriceListView(OperatorPageMixin, ServiceFormView):
    """The price list by resource, with a form that adds a price or replaces the one for the
    same resource, region and GPU model."""

    template_name = "billing/price_list.html"
    form_class = PriceForm
    success_url = reverse_lazy("billing_operator:price_list")

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "prices": Price.objects.select_related("updated_by"),
            "currency": settings.BILLING_CURRENCY,
        }

    def perform(self, form):
        return price_set(operator=self.request.user, **form.cleaned_data)

    def get_success_message(self, cleaned_data):
        return _("Price saved: %(price)s.") % {"price": self.result}


class PriceEditView(OperatorPageMixin, ServiceFormView):
    template_name = "billing/price_form.html"
    form_class = PriceAmountForm
    success_url = reverse_lazy("billing_operator:price_list")

    @cached_property
    def price(self) -> Price:
        return get_object_or_404(Price, pk=self.kwargs["pk"])

    def get_initial(self):
        return {"amount": self.price.amount}

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "price": self.price}

    def perform(self, form):
        return price_set(
            operator=self.request.user,
            resource=self.price.resource,
            region=self.price.region,
            gpu_model=self.price.gpu_model,
            amount=form.cleaned_data["amount"],
        )

    def get_success_message(self, cleaned_data):
        return _("Price saved: %(price)s.") % {"price": self.result}


class PriceDeleteView(OperatorPageMixin, ServiceActionView):
    success_url = reverse_lazy("billing_operator:price_list")

    def scoped_queryset(self):
        return Price.objects.all()

    def perform(self, obj):
        price_delete(operator=self.request.user, price=obj)

    def get_success_message(self, obj):
        return _("Price removed: %(price)s.") % {"price": obj}


class VoucherListView(OperatorPageMixin, ScopedListView):
    template_name = "billing/voucher_list.html"

    def scoped_queryset(self):
        return Voucher.objects.select_related("created_by")


class VoucherCreateView(OperatorPageMixin, ServiceFormView):
    template_name = "billing/voucher_form.html"
    form_class = VoucherCreateForm
    success_url = reverse_lazy("billing_operator:voucher_list")

    def perform(self, form):
        return voucher_create(operator=self.request.user, **form.cleaned_data)

    def get_success_message(self, cleaned_data):
        return _("Voucher %(code)s created, worth %(amount)s.") % {
            "code": self.result.code,
            "amount": _money(self.result.amount, self.result.currency),
        }


class WalletCreditView(OperatorPageMixin, ServiceFormView):
    template_name = "billing/wallet_credit_form.html"
    form_class = WalletCreditForm
    success_url = reverse_lazy("billing_operator:billing_dashboard")

    def get_initial(self):
        organization = self.request.GET.get("organization", "")
        return {"organization": organization} if organization.isdigit() else {}

    def perform(self, form):
        values = dict(form.cleaned_data)
        key = values.pop("key")
        return wallet_credit(
            operator=self.request.user,
            key=f"credit:{values['organization'].pk}:form:{key}",
            **values,
        )

    def get_success_message(self, cleaned_data):
        return _("%(kind)s of %(amount)s posted to %(organization)s.") % {
            "kind": self.result.get_kind_display(),
            "amount": _money(self.result.amount, self.result.currency),
            "organization": cleaned_data["organization"].name,
        }


class ReconciliationListView(OperatorPageMixin, ScopedListView):
    template_name = "billing/reconciliation_list.html"

    def scoped_queryset(self):
        return ReconciliationRun.objects.all()

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        for run in context["page_obj"]:
            run.difference_rows = [
                {**row, "label": CHECK_LABELS.get(row.get("check"), row.get("check"))}
                for row in run.differences
            ]
        return context
