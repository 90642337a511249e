"""Billing pages of the organisation the user works in: the overview with its forms, the
ledger and the monthly statements. Anyone in the organisation reads them; owners and admins
recharge and change the wallet's settings."""

from __future__ import annotations

from datetime import date

from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.urls import reverse_lazy
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views import View
from django.views.generic import TemplateView

from accounts.choices import MANAGER_ROLES
from accounts.services.organizations import membership_require_role
from remotegpu.core.errors import ApplicationError
from remotegpu.core.pages import PortalPageMixin, ScopedListView, ServiceFormView

from ..choices import PaymentStatus, TopUpStatus
from ..filters import LedgerEntryFilter
from ..forms import TopUpRequestForm, VoucherRedeemForm, WalletSettingsForm
from ..models import Wallet
from ..selectors import (
    ledger_list,
    recharge_records,
    statement_get,
    statement_months,
    usage_by_day,
)
from ..services.recharge import top_up_request, voucher_redeem
from ..services.statements import statement_response
from ..services.wallets import wallet_settings_update, wallet_summary

USAGE_DAYS = 30
RECENT_ROWS = 10


class OrganizationBillingMixin(PortalPageMixin):
    """The current organisation's billing: 404 to a user who belongs to none."""

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated and request.organization is None:
            raise Http404(_("You are not a member of any organisation."))
        return super().dispatch(request, *args, **kwargs)


def _is_manager(request) -> bool:
    return request.membership_role in MANAGER_ROLES or request.user.is_staff


def _recharge_rows(organization) -> list[dict]:
    """Recharge records with their method and status in words."""
    methods = {"bank_transfer": _("Bank transfer"), "voucher": _("Voucher")}
    rows = []
    for record in recharge_records(organization)[:RECENT_ROWS]:
        method = record["method"]
        statuses = TopUpStatus if method in methods else PaymentStatus
        status = record["status"]
        rows.append(
            {
                **record,
                "method_label": methods.get(method)
                or _("Card (%(provider)s)") % {"provider": method},
                "status_label": statuses(status).label if status in statuses.values else status,
            }
        )
    return rows


def overview_context(request, forms: dict | None = None) -> dict:
    """What the billing page shows; ``forms`` are bound forms to show with their errors."""
    organization = request.organization
    summary = wallet_summary(organization)
    usage = usage_by_day(organization, days=USAGE_DAYS)
    can_manage = _is_manager(request)
    context = {
        "organization": organization,
        "summary": summary,
        "usage_chart": usage.as_json(),
        "usage_total": usage.total,
        "usage_days": USAGE_DAYS,
        "entries": ledger_list(organization)[:RECENT_ROWS],
        "recharges": _recharge_rows(organization),
        "statement_months": [
            date(year, month, 1) for year, month in statement_months(organization)
        ],
        "can_manage": can_manage,
    }
    if can_manage:
        wallet = summary.wallet
        context.update(
            top_up_form=TopUpRequestForm(),
            voucher_form=VoucherRedeemForm(),
            settings_form=WalletSettingsForm(
                initial={
                    "low_balance_threshold": wallet.low_balance_threshold,
                    "spend_limit_per_hour": wallet.spend_limit_per_hour,
                }
            ),
        )
        context.update(forms or {})
    return context


class BillingOverviewView(OrganizationBillingMixin, TemplateView):
    template_name = "billing/overview.html"

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), **overview_context(self.request)}


class ManagerFormView(OrganizationBillingMixin, ServiceFormView):
    """A form of the billing page for owners and admins (403 to members); posted to its own
    URL, its errors shown on the billing page in the form's place (``form_slot``)."""

    http_method_names = ["post"]
    template_name = "billing/overview.html"
    success_url = reverse_lazy("billing:billing_overview")
    form_slot = ""

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated and request.organization is not None:
            try:
                membership_require_role(request.user, request.organization, MANAGER_ROLES)
            except ApplicationError as error:
                raise PermissionDenied(str(error.message)) from error
        return super().dispatch(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = context.pop("form")
        return {**context, **overview_context(self.request, {self.form_slot: form})}


class TopUpRequestView(ManagerFormView):
    form_class = TopUpRequestForm
    form_slot = "top_up_form"

    def perform(self, form):
        return top_up_request(
            user=self.request.user,
            organization=self.request.organization,
            amount=form.cleaned_data["amount"],
            reference=form.cleaned_data["reference"],
        )

    def get_success_message(self, cleaned_data):
        return _(
            "Bank top-up of %(amount)s %(currency)s requested: it is credited once an operator "
            "has matched the transfer."
        ) % {"amount": f"{self.result.amount:.2f}", "currency": self.result.currency}


class VoucherRedeemView(ManagerFormView):
    form_class = VoucherRedeemForm
    form_slot = "voucher_form"

    def perform(self, form):
        return voucher_redeem(
            user=self.request.user,
            organization=self.request.organization,
            code=form.cleaned_data["code"],
        )

    def get_success_message(self, cleaned_data):
        voucher = self.result.voucher
        return _("Voucher %(code)s redeemed: %(amount)s %(currency)s added.") % {
            "code": voucher.code,
            "amount": f"{voucher.amount:.2f}",
            "currency": voucher.currency,
        }


class WalletSettingsView(ManagerFormView):
    form_class = WalletSettingsForm
    form_slot = "settings_form"

    def perform(self, form):
        """Saved (and audited) only when a value changes: a form posted as it was shown is
        no change to record."""
        wallet = Wallet.objects.filter(organization=self.request.organization).first()
        current = {name: getattr(wallet, name, None) for name in form.cleaned_data}
        if form.cleaned_data == current:
            return None
        return wallet_settings_update(
            actor=self.request.user,
            organization=self.request.organization,
            **form.cleaned_data,
        )

    def get_success_message(self, cleaned_data):
        return _("Billing settings saved.") if self.result else _("Nothing changed.")


class LedgerListView(OrganizationBillingMixin, ScopedListView):
    template_name = "billing/ledger_list.html"
    filterset_class = LedgerEntryFilter

    def scoped_queryset(self):
        return ledger_list(self.request.organization)


class StatementListView(OrganizationBillingMixin, TemplateView):
    template_name = "billing/statement_list.html"

    def get_context_data(self, **kwargs):
        months = statement_months(self.request.organization)
        return {
            **super().get_context_data(**kwargs),
            "months": [date(year, month, 1) for year, month in months],
        }


class StatementDownloadView(OrganizationBillingMixin, View):
    """A month's statement as a file; a month that is not a month, or is yet to come, is 404."""

    http_method_names = ["get"]
    extension = ""

    def get(self, request, year: str, month: str):
        year_number, month_number = int(year), int(month)
        today = timezone.now().date()
        if (
            not 1 <= month_number <= 12
            or year_number < 1
            or (year_number, month_number) > (today.year, today.month)
        ):
            raise Http404(_("There is no statement for this month."))
        statement = statement_get(request.organization, year_number, month_number)
        return statement_response(statement, self.extension)


class StatementCSVView(StatementDownloadView):
    extension = "csv"


class StatementPDFView(StatementDownloadView):
    extension = "pdf"
