"""API of card payments: start one (owners and admins of the caller's organisation), list
them, and the providers' signed webhook."""

from __future__ import annotations

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import organization_default_for_user
from remotegpu.core.api.views import ScopedGenericViewSet
from remotegpu.core.errors import PermissionDenied

from ..models import Payment
from ..payments.base import SIGNATURE_HEADER
from ..services.payments import payment_create, payment_webhook


class PaymentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Payment
        fields = [
            "id",
            "provider",
            "provider_reference",
            "amount",
            "currency",
            "status",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class PaymentCreateSerializer(serializers.Serializer):
    # Strings, so that the service's money rules (two decimals, a sane size) name the field;
    # a float would already have lost the cents.
    amount = serializers.CharField(max_length=40, help_text=gettext_lazy("For example 25.00."))
    currency = serializers.CharField(
        max_length=3,
        required=False,
        allow_blank=True,
        help_text=gettext_lazy("Empty: the site's currency."),
    )


class PaymentCreatedSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    amount = serializers.DecimalField(max_digits=20, decimal_places=6)
    currency = serializers.CharField()
    checkout_url = serializers.URLField(help_text=gettext_lazy("Send the customer here to pay."))


class PaymentEventSerializer(serializers.Serializer):
    """The sandbox's notification; another provider sends its own documented shape."""

    id = serializers.CharField()
    type = serializers.ChoiceField(choices=["payment.succeeded", "payment.failed"])
    reference = serializers.CharField()
    amount = serializers.DecimalField(max_digits=20, decimal_places=2)
    currency = serializers.CharField()


class WebhookReceivedSerializer(serializers.Serializer):
    received = serializers.BooleanField()


ERROR = {"$ref": "#/components/schemas/Error"}


def _organization(request):
    # The middleware resolves the organisation for a signed-in browser only; a token-
    # authenticated call gets the same choice (remembered, else personal, else oldest) here.
    organization = getattr(request, "organization", None)
    if organization is None and request.user.is_authenticated:
        organization = organization_default_for_user(request.user)
    return organization


class PaymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedGenericViewSet):
    """Card payments into the wallet of the organisation the caller works in."""

    serializer_class = PaymentSerializer
    queryset = Payment.objects.none()
    filterset_fields = ["status"]
    ordering_fields = ["created_at", "amount"]

    def scoped_queryset(self):
        organization = _organization(self.request)
        if organization is None:
            return Payment.objects.none()
        return Payment.objects.filter(wallet__organization=organization)

    @extend_schema(
        request=PaymentCreateSerializer,
        responses={
            201: PaymentCreatedSerializer,
            409: OpenApiResponse(
                response=ERROR,
                description="Card payments are not set up on this site (`payments_unavailable`).",
            ),
            502: OpenApiResponse(
                response=ERROR,
                description="The payment provider failed; nothing was charged.",
            ),
        },
    )
    def create(self, request):
        """Start a card payment: a pending payment and the checkout page to send the customer
        to. The wallet is credited when the provider confirms the payment."""
        data = PaymentCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organization = _organization(request)
        if organization is None:
            raise PermissionDenied(_("Join or create an organisation first."))
        payment, checkout_url = payment_create(
            user=request.user,
            organization=organization,
            amount=data.validated_data["amount"],
            currency=data.validated_data.get("currency") or None,
        )
        body = {
            "id": payment.pk,
            "status": payment.status,
            "amount": payment.amount,
            "currency": payment.currency,
            # The sandbox's page is on this site (a path); a real provider's is absolute.
            "checkout_url": request.build_absolute_uri(checkout_url),
        }
        return Response(PaymentCreatedSerializer(body).data, status=status.HTTP_201_CREATED)


PROVIDER = OpenApiParameter(
    "provider", OpenApiTypes.STR, OpenApiParameter.PATH, description="The provider's name"
)
SIGNATURE = OpenApiParameter(
    SIGNATURE_HEADER,
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=True,
    description='`t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` keyed with the '
    "webhook secret; refused when more than five minutes off.",
)


class PaymentWebhookView(APIView):
    """A payment provider's notification: signed, not signed in. CSRF does not apply: no
    session authenticates it (DRF checks CSRF only for session authentication)."""

    authentication_classes = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        operation_id="billing_webhook_receive",
        parameters=[PROVIDER, SIGNATURE],
        request=PaymentEventSerializer,
        responses={
            200: WebhookReceivedSerializer,
            400: OpenApiResponse(
                response=ERROR,
                description="The signature is missing, wrong or more than five minutes old "
                "(`invalid_signature`), the body is malformed, or its amount or currency "
                "differs from the payment's. Nothing changed.",
            ),
            404: OpenApiResponse(
                response=ERROR,
                description="No such provider is enabled, or no payment has this reference.",
            ),
        },
        auth=[],
    )
    def post(self, request, provider):
        """Receive a provider's notification: a repeated one changes nothing and is answered
        200 too, so the provider stops retrying."""
        # The raw bytes, exactly as signed: never the parsed and re-encoded data.
        payment_webhook(provider, request.body, request.headers)
        return Response({"received": True})
