from django.urls import path
from rest_framework.routers import SimpleRouter

from . import payments, views

router = SimpleRouter()
router.include_format_suffixes = False
router.register("billing/ledger", views.LedgerViewSet, basename="billing-ledger")
router.register("billing/prices", views.PriceViewSet, basename="billing-price")
router.register("billing/wallets", views.WalletViewSet, basename="billing-wallet")
router.register("billing/top-ups", views.TopUpViewSet, basename="billing-top-up")
router.register("billing/vouchers", views.VoucherViewSet, basename="billing-voucher")
router.register("billing/payments", payments.PaymentViewSet, basename="payment")
# balance, usage, recharge, records, statements, revenue: billing-<name>
router.register("billing", views.BillingViewSet, basename="billing")

urlpatterns = [
    path(
        "billing/statements/<str:period>.<str:extension>",
        views.BillingViewSet.as_view({"get": "statement_file"}),
        name="billing-statement-file",
    ),
    path(
        "billing/webhooks/<slug:provider>/",
        payments.PaymentWebhookView.as_view(),
        name="payment-webhook",
    ),
    *router.urls,
]
