"""API of billing. Customers see their current organisation's wallet, usage, recharges, ledger
and statements (members read; owners and admins change settings and recharge); operators set
prices, credit wallets, decide bank top-ups, make vouchers and read revenue. Thin: every
change goes through a service."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time

from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.api.permissions import TokenWritePermission
from accounts.choices import MANAGER_ROLES
from accounts.models import Organization
from accounts.selectors import organization_default_for_user
from accounts.services.organizations import membership_require_role
from remotegpu.core.api.views import ScopedGenericViewSet
from remotegpu.core.errors import NotFound, ValidationError

from .. import selectors
from ..models import LedgerEntry, Price, TopUpRequest, Voucher
from ..services import prices as price_services
from ..services import recharge as recharge_services
from ..services.statements import statement_response
from ..services.wallets import wallet_credit, wallet_get, wallet_settings_update, wallet_summary
from . import serializers
from .filters import LedgerEntryFilter, TopUpFilter

OPERATOR = [permissions.IsAdminUser, TokenWritePermission]
PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})")
STATEMENT_TYPES = {"csv": "text/csv; charset=utf-8", "pdf": "application/pdf"}


def current_organization(request) -> Organization:
    """The organisation the caller works in (their current one, as on the pages): customer
    data is always its alone."""
    organization = organization_default_for_user(request.user)
    if organization is None:
        raise NotFound(_("You belong to no active organisation."))
    return organization


def _require_manager(request, organization: Organization) -> None:
    membership_require_role(request.user, organization, MANAGER_ROLES)


def _balance(organization: Organization) -> dict:
    summary = wallet_summary(organization)
    wallet = summary.wallet
    return {
        "balance": summary.balance,
        "currency": wallet.currency,
        "burn_rate_per_hour": summary.burn_rate,
        "hours_left": summary.hours_left,
        "runs_out_at": summary.runs_out_at,
        "low_balance_threshold": wallet.low_balance_threshold,
        "spend_limit_per_hour": wallet.spend_limit_per_hour,
        "is_low": summary.is_low,
    }


def _statement_month(request, year: int, month: int) -> dict:
    period = f"{year:04d}-{month:02d}"
    urls = {
        extension: request.build_absolute_uri(
            reverse("api:billing-statement-file", args=[period, extension])
        )
        for extension in STATEMENT_TYPES
    }
    return {"period": period, **urls}


RECHARGE_METHODS = {
    "bank_transfer": serializers.BankTransferSerializer,
    "voucher": serializers.VoucherRedeemSerializer,
}
PERIOD_PARAMETER = OpenApiParameter(
    "period", OpenApiTypes.STR, OpenApiParameter.PATH, description="Month, as YYYY-MM"
)
EXTENSION_PARAMETER = OpenApiParameter(
    "extension", OpenApiTypes.STR, OpenApiParameter.PATH, enum=list(STATEMENT_TYPES)
)


class BillingViewSet(viewsets.ViewSet):
    """The current organisation's billing (and the operators' revenue)."""

    @extend_schema(methods=["GET"], responses=serializers.BalanceSerializer)
    @extend_schema(
        methods=["PATCH"],
        request=serializers.BalanceUpdateSerializer,
        responses=serializers.BalanceSerializer,
        description="Set the low-balance threshold and spend limit (owners and admins).",
    )
    @action(detail=False, methods=["get", "patch"])
    def balance(self, request):
        """Balance, what it burns per hour and how long it lasts, and the wallet's settings."""
        organization = current_organization(request)
        if request.method == "PATCH":
            _require_manager(request, organization)
            data = serializers.BalanceUpdateSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            if data.validated_data:
                wallet = wallet_get(organization)
                values = {
                    "low_balance_threshold": wallet.low_balance_threshold,
                    "spend_limit_per_hour": wallet.spend_limit_per_hour,
                    **data.validated_data,
                }
                wallet_settings_update(actor=request.user, organization=organization, **values)
        return Response(serializers.BalanceSerializer(_balance(organization)).data)

    @extend_schema(
        parameters=[serializers.UsageQuerySerializer], responses=serializers.UsageSerializer
    )
    @action(detail=False, methods=["get"])
    def usage(self, request):
        """Spending per UTC day of the last ``days`` (1 to 90), by resource and GPU model."""
        query = serializers.UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        chart = selectors.usage_by_day(current_organization(request), query.validated_data["days"])
        body = {
            "days": chart.days,
            "series": [
                {"label": label, "values": values} for label, values in chart.series.items()
            ],
            "total": chart.total,
        }
        return Response(serializers.UsageSerializer(body).data)

    @extend_schema(
        request=PolymorphicProxySerializer(
            component_name="Recharge",
            serializers={method: serializer() for method, serializer in RECHARGE_METHODS.items()},
            resource_type_field_name="method",
        ),
        responses={201: serializers.RechargeRecordSerializer},
    )
    @action(detail=False, methods=["post"])
    def recharge(self, request):
        """Recharge (owners and admins): report a bank transfer, for an operator to approve, or
        redeem a voucher, credited at once."""
        organization = current_organization(request)
        _require_manager(request, organization)
        method = request.data.get("method") if isinstance(request.data, dict) else None
        if not isinstance(method, str) or method not in RECHARGE_METHODS:
            raise ValidationError.for_field("method", _("Choose bank_transfer or voucher."))
        data = RECHARGE_METHODS[method](data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if method == "voucher":
            redemption = recharge_services.voucher_redeem(
                user=request.user, organization=organization, code=values["code"]
            )
            voucher = redemption.voucher
            record = {
                "time": redemption.created_at,
                "amount": voucher.amount,
                "currency": voucher.currency,
                "status": "approved",
                "reference": voucher.code,
            }
        else:
            top_up = recharge_services.top_up_request(
                user=request.user,
                organization=organization,
                amount=values["amount"],
                reference=values["reference"],
                currency=values.get("currency", ""),
            )
            record = {
                "time": top_up.created_at,
                "amount": top_up.amount,
                "currency": top_up.currency,
                "status": top_up.status,
                "reference": top_up.reference,
            }
        body = serializers.RechargeRecordSerializer({"method": method, **record}).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses=serializers.RechargeRecordSerializer(many=True))
    @action(detail=False, methods=["get"])
    def records(self, request):
        """Money put in, newest first: bank top-ups (any status), payments and vouchers."""
        records = selectors.recharge_records(current_organization(request))
        return Response(serializers.RechargeRecordSerializer(records, many=True).data)

    @extend_schema(responses=serializers.StatementMonthSerializer(many=True))
    @action(detail=False, methods=["get"])
    def statements(self, request):
        """Months with ledger entries, newest first, with their statements' addresses."""
        months = selectors.statement_months(current_organization(request))
        body = [_statement_month(request, year, month) for year, month in months]
        return Response(serializers.StatementMonthSerializer(body, many=True).data)

    @extend_schema(
        operation_id="billing_statements_file",
        parameters=[PERIOD_PARAMETER, EXTENSION_PARAMETER],
        responses={
            (200, "text/csv"): OpenApiTypes.BINARY,
            (200, "application/pdf"): OpenApiTypes.BINARY,
            404: OpenApiResponse(
                response={"$ref": "#/components/schemas/Error"},
                description="No such month (not YYYY-MM, or not begun), or no such format.",
            ),
        },
    )
    def statement_file(self, request, period: str, extension: str):
        """A month's statement as CSV (every entry, exact amounts) or PDF; times in UTC."""
        organization = current_organization(request)
        match = PERIOD.fullmatch(period)
        if match is None or extension not in STATEMENT_TYPES:
            raise NotFound(_("No such statement."))
        year, month = int(match[1]), int(match[2])
        today = timezone.now().astimezone(UTC)
        if not (1 <= month <= 12 and year >= 1) or (year, month) > (today.year, today.month):
            raise NotFound(_("No such statement."))
        return statement_response(selectors.statement_get(organization, year, month), extension)

    @extend_schema(
        parameters=[serializers.RevenueQuerySerializer], responses=serializers.RevenueSerializer
    )
    @action(detail=False, methods=["get"], permission_classes=OPERATOR)
    def revenue(self, request):
        """Usage charged over the fleet (operators): per UTC day of the last ``days``, and per
        organisation over the same days, largest first."""
        query = serializers.RevenueQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        by_day = selectors.revenue_by_day(query.validated_data["days"])
        since = datetime.combine(by_day[0]["day"], time.min, tzinfo=UTC)
        body = {"by_day": by_day, "by_organization": selectors.revenue_by_organization(since)}
        return Response(serializers.RevenueSerializer(body).data)


class LedgerViewSet(mixins.ListModelMixin, ScopedGenericViewSet):
    """The current organisation's ledger, newest first: every movement of its money."""

    serializer_class = serializers.LedgerEntrySerializer
    queryset = LedgerEntry.objects.none()
    filterset_class = LedgerEntryFilter
    ordering_fields = ["created_at", "amount"]

    def scoped_queryset(self):
        return selectors.ledger_list(current_organization(self.request))


class PriceViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, ScopedGenericViewSet):
    """The price list (operators). A price is per hour (storage: per GiB-month) for a resource,
    in one region or all, for one GPU model or all; the most specific wins. Changes re-price
    running meters from the next second billed."""

    serializer_class = serializers.PriceSerializer
    queryset = Price.objects.none()
    permission_classes = OPERATOR
    filterset_fields = ["resource", "region", "gpu_model"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def scoped_queryset(self):
        return Price.objects.select_related("updated_by")

    def _output(self, price, status_code=status.HTTP_200_OK):
        price = self.get_queryset().get(pk=price.pk)
        return Response(serializers.PriceSerializer(price).data, status=status_code)

    @extend_schema(
        request=serializers.PriceCreateSerializer, responses={201: serializers.PriceSerializer}
    )
    def create(self, request):
        data = serializers.PriceCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        price = price_services.price_set(operator=request.user, **data.validated_data)
        return self._output(price, status.HTTP_201_CREATED)

    @extend_schema(request=serializers.PriceUpdateSerializer, responses=serializers.PriceSerializer)
    def partial_update(self, request, pk=None):
        """Change the amount; resource, region and GPU model name the price."""
        price = self.get_object()
        data = serializers.PriceUpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        price = price_services.price_set(
            operator=request.user,
            resource=price.resource,
            region=price.region,
            gpu_model=price.gpu_model,
            amount=data.validated_data["amount"],
        )
        return self._output(price)

    def perform_destroy(self, instance):
        price_services.price_delete(operator=self.request.user, price=instance)


class WalletViewSet(ScopedGenericViewSet):
    """Organisations' wallets, by organisation id (operators)."""

    serializer_class = serializers.WalletCreditSerializer
    queryset = Organization.objects.none()
    permission_classes = OPERATOR
    lookup_url_kwarg = "organization_id"
    lookup_value_regex = r"\d+"

    def scoped_queryset(self):
        return Organization.objects.all()

    @extend_schema(
        request=serializers.WalletCreditSerializer,
        responses={201: serializers.LedgerEntrySerializer},
    )
    @action(detail=True, methods=["post"])
    def credit(self, request, organization_id=None):
        """Add money to the organisation's wallet (a negative adjustment takes it away), with a
        reason for the ledger and audit log."""
        organization = self.get_object()
        data = serializers.WalletCreditSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        key = values.pop("idempotency_key", "")
        entry = wallet_credit(
            operator=request.user,
            organization=organization,
            key=f"credit:{organization.pk}:api:{key}" if key else "",
            **values,
        )
        body = serializers.LedgerEntrySerializer(entry).data
        return Response(body, status=status.HTTP_201_CREATED)


class TopUpViewSet(mixins.ListModelMixin, ScopedGenericViewSet):
    """Bank top-ups customers reported (operators): approve (credits the wallet once) or
    reject; deciding one already decided is 409."""

    serializer_class = serializers.TopUpSerializer
    queryset = TopUpRequest.objects.none()
    permission_classes = OPERATOR
    filterset_class = TopUpFilter
    ordering_fields = ["created_at", "amount"]

    def scoped_queryset(self):
        return TopUpRequest.objects.select_related(
            "wallet__organization", "requested_by", "decided_by"
        )

    def _decide(self, request, service):
        top_up = self.get_object()
        data = serializers.TopUpDecisionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        top_up = service(operator=request.user, top_up=top_up, **data.validated_data)
        return Response(self.get_serializer(self.get_queryset().get(pk=top_up.pk)).data)

    @extend_schema(
        request=serializers.TopUpDecisionSerializer, responses=serializers.TopUpSerializer
    )
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        return self._decide(request, recharge_services.top_up_approve)

    @extend_schema(
        request=serializers.TopUpDecisionSerializer, responses=serializers.TopUpSerializer
    )
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        return self._decide(request, recharge_services.top_up_reject)


class VoucherViewSet(mixins.ListModelMixin, ScopedGenericViewSet):
    """Vouchers of promotional credit (operators); customers redeem them with ``recharge``."""

    serializer_class = serializers.VoucherSerializer
    queryset = Voucher.objects.none()
    permission_classes = OPERATOR
    filterset_fields = ["is_active"]

    def scoped_queryset(self):
        return Voucher.objects.all()

    @extend_schema(
        request=serializers.VoucherCreateSerializer, responses={201: serializers.VoucherSerializer}
    )
    def create(self, request):
        data = serializers.VoucherCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        voucher = recharge_services.voucher_create(operator=request.user, **data.validated_data)
        return Response(serializers.VoucherSerializer(voucher).data, status=status.HTTP_201_CREATED)
