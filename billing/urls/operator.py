"""Billing pages of operators, under ``/operator/billing/`` (namespace ``billing_operator``)."""

from django.urls import path

from ..views import operator

app_name = "billing_operator"

urlpatterns = [
    path("", operator.BillingDashboardView.as_view(), name="billing_dashboard"),
    path("top-ups/<int:pk>/approve/", operator.TopUpApproveView.as_view(), name="top_up_approve"),
    path("top-ups/<int:pk>/reject/", operator.TopUpRejectView.as_view(), name="top_up_reject"),
    path("prices/", operator.PriceListView.as_view(), name="price_list"),
    path("prices/<int:pk>/", operator.PriceEditView.as_view(), name="price_edit"),
    path("prices/<int:pk>/delete/", operator.PriceDeleteView.as_view(), name="price_delete"),
    path("vouchers/", operator.VoucherListView.as_view(), name="voucher_list"),
    path("vouchers/new/", operator.VoucherCreateView.as_view(), name="voucher_create"),
    path("credit/", operator.WalletCreditView.as_view(), name="wallet_credit"),
    path("reconciliation/", operator.ReconciliationListView.as_view(), name="reconciliation_list"),
]
