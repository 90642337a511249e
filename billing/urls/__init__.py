"""Billing pages of the current organisation, under ``/billing/`` (namespace ``billing``)."""

from django.urls import path, re_path

from ..payments.sandbox import SandboxCheckoutView
from ..views import customer

app_name = "billing"

MONTH = r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})"

urlpatterns = [
    path("", customer.BillingOverviewView.as_view(), name="billing_overview"),
    path("top-ups/", customer.TopUpRequestView.as_view(), name="top_up_create"),
    path("vouchers/redeem/", customer.VoucherRedeemView.as_view(), name="voucher_redeem"),
    path("settings/", customer.WalletSettingsView.as_view(), name="wallet_settings"),
    path("ledger/", customer.LedgerListView.as_view(), name="ledger_list"),
    path(
        "payments/sandbox/<str:reference>/",
        SandboxCheckoutView.as_view(),
        name="payment_sandbox_checkout",
    ),
    path("statements/", customer.StatementListView.as_view(), name="statement_list"),
    re_path(
        rf"^statements/{MONTH}\.csv$", customer.StatementCSVView.as_view(), name="statement_csv"
    ),
    re_path(
        rf"^statements/{MONTH}\.pdf$", customer.StatementPDFView.as_view(), name="statement_pdf"
    ),
]
