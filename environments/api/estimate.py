"""What an environment would cost: here rather than in billing, because it names a spec and a
region, which billing does not know about. The price is the one a run would be charged."""

from decimal import Decimal

from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from billing.services.prices import estimate
from billing.services.wallets import currency
from machines.models import Region

from ..models import Spec
from ..services.billing import spec_quantities

MAX_HOURS = Decimal(8760)  # a year


class EstimateRequestSerializer(serializers.Serializer):
    spec = serializers.PrimaryKeyRelatedField(queryset=Spec.objects.filter(is_active=True))
    region = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Region.objects.all(),
        required=False,
        allow_null=True,
        help_text=gettext_lazy("Region slug; empty: the price that applies everywhere."),
    )
    hours = serializers.DecimalField(
        max_digits=10, decimal_places=4, min_value=Decimal("0.0001"), max_value=MAX_HOURS
    )
    without_gpu = serializers.BooleanField(
        default=False, help_text=gettext_lazy("Priced as a start without GPU.")
    )

    def validate(self, attrs):
        spec, region = attrs["spec"], attrs.get("region")
        if region is not None and spec.regions.exists() and not spec.regions.contains(region):
            raise serializers.ValidationError({"region": _("This spec is not offered there.")})
        return attrs


class EstimateSerializer(serializers.Serializer):
    rate_per_hour = serializers.DecimalField(max_digits=20, decimal_places=6)
    hours = serializers.DecimalField(max_digits=10, decimal_places=4)
    total = serializers.DecimalField(max_digits=20, decimal_places=2)
    currency = serializers.CharField()


class EstimateView(APIView):
    """The price per hour of a spec (in a region, or without GPU) and what ``hours`` of it
    cost. It changes nothing, so read-only tokens may ask."""

    permission_classes = [permissions.IsAuthenticated]

    @extend_schema(request=EstimateRequestSerializer, responses=EstimateSerializer)
    def post(self, request):
        data = EstimateRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        quantities = spec_quantities(
            values["spec"], region=values.get("region"), without_gpu=values["without_gpu"]
        )
        body = estimate(quantities, values["hours"]) | {"currency": currency()}
        return Response(EstimateSerializer(body).data)
