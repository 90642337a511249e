"""API of the fleet. Operators only, except regions (readable by everyone signed in), the agent's
join endpoint (authenticated by the join token in its body) and whole-machine allocations (their
organisation's members read them)."""

from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status
from rest_framework.decorators import action
from rest_framework.filters import OrderingFilter, SearchFilter
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from accounts.api.permissions import ReadAnyWriteOperator, TokenWritePermission
from remotegpu.core.api.views import (
    CatalogueViewSet,
    ScopedGenericViewSet,
    ScopedReadOnlyModelViewSet,
)

from .. import selectors
from ..choices import HostStatus
from ..links import agent_websocket_url, join_command
from ..models import GPU, AgentCommand, Alert, AlertRule, Allocation, Host, JoinToken, Region
from ..services import alerts as alert_services
from ..services import allocations as allocation_services
from ..services import commands as command_services
from ..services import hosts as host_services
from ..services import imports as import_services
from ..services import join as join_services
from ..services.regions import region_save
from . import serializers
from .parsers import CSVParser


class AgentJoinView(APIView):
    """An agent trades a join token for its host credential (shown once)."""

    authentication_classes = []
    permission_classes = [permissions.AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "agent_join"

    @extend_schema(
        request=serializers.AgentJoinSerializer,
        responses={
            201: serializers.AgentJoinedSerializer,
            429: OpenApiResponse(
                response={"$ref": "#/components/schemas/Error"},
                description="Too many join attempts from this address; retry later.",
            ),
        },
        auth=[],
    )
    def post(self, request):
        data = serializers.AgentJoinSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        joined = join_services.host_join(
            token=data.validated_data["token"],
            name=data.validated_data["name"],
            facts=data.validated_data.get("facts"),
        )
        body = {
            "host_id": joined.host.pk,
            "host_name": joined.host.name,
            "credential": joined.credential,
            "websocket_url": agent_websocket_url(request),
            "heartbeat_interval": joined.host.heartbeat_interval,
        }
        return Response(body, status=status.HTTP_201_CREATED)


class RegionViewSet(CatalogueViewSet):
    """Regions: everyone signed in reads them; operators manage them."""

    serializer_class = serializers.RegionSerializer
    queryset = Region.objects.none()
    permission_classes = [permissions.IsAuthenticated, TokenWritePermission, ReadAnyWriteOperator]

    def scoped_queryset(self):
        return selectors.region_list()

    def save(self, user, instance):
        return region_save(operator=user, region=instance)


class OperatorMixin:
    # Setting permission_classes replaces the defaults: read-only tokens stay read-only here too.
    permission_classes = [permissions.IsAdminUser, TokenWritePermission]


class HostViewSet(OperatorMixin, ScopedReadOnlyModelViewSet):
    """Hosts of the fleet, with their operator actions."""

    serializer_class = serializers.HostSerializer
    queryset = Host.objects.none()
    filter_backends = [DjangoFilterBackend, SearchFilter, OrderingFilter]
    filterset_fields = ["status", "region__slug", "connected"]
    search_fields = ["name", "address", "hostname"]
    ordering_fields = ["name", "last_seen_at", "status"]

    def scoped_queryset(self):
        queryset = selectors.host_list()
        if self.action == "retrieve":
            queryset = queryset.prefetch_related("gpus")
        return queryset

    def get_serializer_class(self):
        if self.action == "retrieve":
            return serializers.HostDetailSerializer
        return serializers.HostSerializer

    def _detail(self, host):
        return Response(serializers.HostDetailSerializer(self.get_queryset().get(pk=host.pk)).data)

    @extend_schema(
        request=serializers.HostLabelsSerializer, responses=serializers.HostDetailSerializer
    )
    @action(detail=True, methods=["post"])
    def labels(self, request, pk=None):
        host = self.get_object()
        data = serializers.HostLabelsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        host_services.host_set_labels(
            operator=request.user, host=host, labels=data.validated_data["labels"]
        )
        return self._detail(host)

    def _set_status(self, request, target):
        host = self.get_object()
        data = serializers.HostStatusSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        host_services.host_set_status(
            operator=request.user, host=host, status=target, reason=data.validated_data["reason"]
        )
        return self._detail(host)

    @extend_schema(
        request=serializers.HostStatusSerializer, responses=serializers.HostDetailSerializer
    )
    @action(detail=True, methods=["post"])
    def maintenance(self, request, pk=None):
        """Stop new placements for maintenance; what runs keeps running."""
        return self._set_status(request, HostStatus.MAINTENANCE)

    @extend_schema(
        request=serializers.HostStatusSerializer, responses=serializers.HostDetailSerializer
    )
    @action(detail=True, methods=["post"])
    def drain(self, request, pk=None):
        """Stop new placements; what runs finishes."""
        return self._set_status(request, HostStatus.DRAINING)

    @extend_schema(
        request=serializers.HostStatusSerializer, responses=serializers.HostDetailSerializer
    )
    @action(detail=True, methods=["post"])
    def retire(self, request, pk=None):
        """Take the host out of the fleet for good; its agent is disconnected."""
        return self._set_status(request, HostStatus.RETIRED)

    @extend_schema(
        request=serializers.HostStatusSerializer, responses=serializers.HostDetailSerializer
    )
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Return a host in maintenance or draining to service."""
        return self._set_status(request, HostStatus.ONLINE)

    @extend_schema(request=None, responses={204: None})
    @action(detail=True, methods=["post"], url_path="revoke-credential")
    def revoke_credential(self, request, pk=None):
        """Revoke the host's credential; its agent is disconnected at once."""
        join_services.credential_revoke(operator=request.user, host=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=serializers.CredentialSerializer)
    @action(detail=True, methods=["post"], url_path="rotate-credential")
    def rotate_credential(self, request, pk=None):
        """Issue a new credential (shown once) and revoke the old one."""
        credential = join_services.credential_rotate(operator=request.user, host=self.get_object())
        return Response({"credential": credential})

    @extend_schema(
        parameters=[serializers.MetricsQuerySerializer],
        responses=serializers.HostMetricsSerializer,
    )
    @action(detail=True, methods=["get"])
    def metrics(self, request, pk=None):
        """CPU, memory and per-GPU figures over a range, averaged in 120 buckets."""
        query = serializers.MetricsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(selectors.host_metrics(self.get_object(), query.validated_data["range"]))

    @extend_schema(
        request=serializers.CommandCreateSerializer,
        responses={201: serializers.AgentCommandSerializer},
    )
    @action(detail=True, methods=["post"])
    def commands(self, request, pk=None):
        """Queue a command for the host's agent (durable: sent when it is connected)."""
        data = serializers.CommandCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        command = command_services.command_create(
            host=self.get_object(), kind=data.validated_data["kind"], requested_by=request.user
        )
        return Response(
            serializers.AgentCommandSerializer(command).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        request={
            "multipart/form-data": serializers.HostImportSerializer,
            "text/csv": OpenApiTypes.STR,
        },
        responses={201: serializers.HostImportResultSerializer},
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="import",
        url_name="import",
        parser_classes=[MultiPartParser, CSVParser],
    )
    def import_csv(self, request):
        """Import hosts from CSV (a ``file`` part, or a ``text/csv`` body): all or nothing, every
        error listed by line. Each host is created pending with its own single-use join token."""
        if isinstance(request.data, bytes):
            data = request.data
        else:
            upload = serializers.HostImportSerializer(data=request.data)
            upload.is_valid(raise_exception=True)
            data = upload.validated_data["file"].read(import_services.MAX_BYTES + 1)
        result = import_services.hosts_import_csv(request.user, data)
        hosts = [
            {
                "host": item.host,
                "token": item.token,
                "join_command": join_command(request, item.token),
            }
            for item in result.hosts
        ]
        body = serializers.HostImportResultSerializer({"count": len(hosts), "hosts": hosts}).data
        return Response(body, status=status.HTTP_201_CREATED)


class FleetMetricsView(OperatorMixin, APIView):
    """Average GPU utilisation across the fleet over a range, in 120 buckets."""

    @extend_schema(
        parameters=[serializers.MetricsQuerySerializer],
        responses=serializers.FleetMetricsSerializer,
    )
    def get(self, request):
        query = serializers.MetricsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(selectors.fleet_metrics(query.validated_data["range"]))


class GPUViewSet(OperatorMixin, ScopedReadOnlyModelViewSet):
    serializer_class = serializers.GPUSerializer
    queryset = GPU.objects.none()
    filterset_fields = ["host", "model", "health"]

    def scoped_queryset(self):
        return selectors.gpu_list()


class AgentCommandViewSet(OperatorMixin, ScopedReadOnlyModelViewSet):
    serializer_class = serializers.AgentCommandSerializer
    queryset = AgentCommand.objects.none()
    filterset_fields = ["host", "kind", "status"]

    def scoped_queryset(self):
        return selectors.command_list()


class JoinTokenViewSet(
    OperatorMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedGenericViewSet
):
    """Join tokens. The token and its join command are shown once, at creation."""

    serializer_class = serializers.JoinTokenSerializer
    queryset = JoinToken.objects.none()

    def scoped_queryset(self):
        return selectors.join_token_list()

    @extend_schema(
        request=serializers.JoinTokenCreateSerializer,
        responses={201: serializers.JoinTokenCreatedSerializer},
    )
    def create(self, request):
        data = serializers.JoinTokenCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = join_services.join_token_create(operator=request.user, **data.validated_data)
        body = serializers.JoinTokenSerializer(issued.join_token).data | {
            "token": issued.plaintext,
            "join_command": join_command(request, issued.plaintext),
        }
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(description="Revoke the join token; hosts that joined with it stay.")
    def destroy(self, request, pk=None):
        join_services.join_token_revoke(operator=request.user, join_token=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class AlertViewSet(OperatorMixin, ScopedReadOnlyModelViewSet):
    """Alerts raised by the rules, newest first; a firing alert can be acknowledged."""

    serializer_class = serializers.AlertSerializer
    queryset = Alert.objects.none()
    filterset_fields = ["status", "severity", "rule", "host", "gpu"]
    ordering_fields = ["created_at", "since", "fired_at", "resolved_at"]

    def scoped_queryset(self):
        return selectors.alert_list()

    @extend_schema(request=None, responses=serializers.AlertSerializer)
    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        """Someone is on it: the alert stays open until its condition clears (409 unless it is
        firing)."""
        alert = alert_services.alert_acknowledge(operator=request.user, alert=self.get_object())
        return Response(serializers.AlertSerializer(self.get_queryset().get(pk=alert.pk)).data)


class AlertRuleViewSet(
    OperatorMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    ScopedGenericViewSet,
):
    """Alert rules. Disabling a rule (``enabled: false``) or changing its metric closes its open
    alerts; deleting it deletes its alerts too."""

    serializer_class = serializers.AlertRuleSerializer
    queryset = AlertRule.objects.none()
    filterset_fields = ["enabled", "metric", "severity"]
    ordering_fields = ["name", "created_at"]

    def scoped_queryset(self):
        return selectors.alert_rule_list()

    def perform_create(self, serializer):
        rule = alert_services.alert_rule_create(
            operator=self.request.user, **serializer.validated_data
        )
        serializer.instance = self.get_queryset().get(pk=rule.pk)

    def perform_update(self, serializer):
        rule = alert_services.alert_rule_update(
            operator=self.request.user, rule=serializer.instance, **serializer.validated_data
        )
        serializer.instance = self.get_queryset().get(pk=rule.pk)

    def perform_destroy(self, instance):
        alert_services.alert_rule_delete(operator=self.request.user, rule=instance)


class AllocationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedGenericViewSet):
    """Whole-machine allocations: a host, all its GPUs, lent to one organisation for a time
    range. Members read their organisations' (with how to connect); operators read every one,
    allocate hosts and reclaim them."""

    serializer_class = serializers.AllocationSerializer
    queryset = Allocation.objects.none()
    permission_classes = [permissions.IsAuthenticated, TokenWritePermission, ReadAnyWriteOperator]
    filterset_fields = ["status", "host__name", "organization__slug"]
    ordering_fields = ["starts_at", "ends_at", "created_at"]

    def scoped_queryset(self):
        return selectors.allocation_list_for_user(self.request.user)

    def _output(self, allocation, status_code):
        allocation = self.get_queryset().get(pk=allocation.pk)
        return Response(self.get_serializer(allocation).data, status=status_code)

    @extend_schema(
        request=serializers.AllocationCreateSerializer,
        responses={201: serializers.AllocationSerializer},
    )
    def create(self, request):
        """Allocate a host to an organisation (operators). A start that has come activates it
        at once: the host makes the tenant's account."""
        data = serializers.AllocationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        allocation = allocation_services.allocation_create(
            actor=request.user, **data.validated_data
        )
        return self._output(allocation, status.HTTP_201_CREATED)

    @extend_schema(
        request=serializers.AllocationReclaimSerializer,
        responses={202: serializers.AllocationSerializer},
    )
    @action(detail=True, methods=["post"])
    def reclaim(self, request, pk=None):
        """Reclaim the host now (operators): the organisation's containers, volumes, processes,
        account and files on it are removed and the removal checked; the report lands in
        ``reclaim_report``."""
        allocation = self.get_object()
        data = serializers.AllocationReclaimSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        allocation = allocation_services.allocation_reclaim(
            actor=request.user, allocation=allocation, reason=data.validated_data["reason"]
        )
        return self._output(allocation, status.HTTP_202_ACCEPTED)
