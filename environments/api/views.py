"""API of environments: thin viewsets; every change goes through a service."""

from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, permissions, status
from rest_framework.decorators import action
from rest_framework.response import Response

from accounts.api.permissions import ReadAnyWriteOperator, TokenWritePermission
from accounts.models import Organization
from accounts.selectors import organization_default_for_user
from remotegpu.core.api.views import CatalogueViewSet, ScopedGenericViewSet
from remotegpu.core.errors import ValidationError

from .. import selectors
from ..choices import EnvironmentStatus
from ..models import Environment, Image, RegistryCredential, Spec
from ..services import autostop, lifecycle
from ..services import images as image_services
from ..services.connection import environment_connection
from ..services.logs import environment_logs
from . import serializers


class ImageViewSet(CatalogueViewSet):
    """The image catalogue: customers read what they may use; operators curate it."""

    serializer_class = serializers.ImageSerializer
    queryset = Image.objects.none()
    permission_classes = [permissions.IsAuthenticated, TokenWritePermission, ReadAnyWriteOperator]
    filterset_fields = ["framework", "is_active"]
    ordering_fields = ["name", "created_at"]

    def scoped_queryset(self):
        return selectors.image_list_for_user(self.request.user)

    def save(self, user, instance):
        return image_services.image_save(operator=user, image=instance)

    @extend_schema(request=serializers.ImagePrepullSerializer, responses={202: None})
    @action(detail=True, methods=["post"])
    def prepull(self, request, pk=None):
        """Pull the image onto the hosts named (operators), so starts there never wait."""
        image = self.get_object()
        data = serializers.ImagePrepullSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        image_services.image_prepull(
            operator=request.user, image=image, hosts=data.validated_data["hosts"]
        )
        return Response(status=status.HTTP_202_ACCEPTED)


REGION = OpenApiParameter("region", OpenApiTypes.STR, description="Region slug")


class SpecViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedGenericViewSet):
    """GPU specs with live availability: how many could be placed right now."""

    serializer_class = serializers.SpecSerializer
    queryset = Spec.objects.none()
    filterset_fields = ["gpu_model", "gpu_count"]
    pagination_class = None

    def scoped_queryset(self):
        return selectors.spec_list(self.request.user)

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if getattr(self, "swagger_fake_view", False):
            return context
        region = None
        slug = self.request.query_params.get("region")
        if slug:
            from machines.models import Region

            region = Region.objects.filter(slug=slug).first()
            if region is None:
                raise ValidationError.for_field("region", _("No such region."))
        specs = list(self.filter_queryset(self.get_queryset()))
        context["availability"] = selectors.spec_availability(specs, region)
        return context

    @extend_schema(parameters=[REGION])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)


TAIL = OpenApiParameter("tail", OpenApiTypes.INT, description="How many lines (1 to 10000)")


class EnvironmentViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, ScopedGenericViewSet
):
    """GPU environments of the caller's organisations: create, start, stop, restart, delete,
    start without GPU, logs and the lifecycle log."""

    serializer_class = serializers.EnvironmentSerializer
    queryset = Environment.objects.none()
    filterset_fields = ["status", "organization__slug", "host__name"]
    ordering_fields = ["created_at", "name", "status"]

    def scoped_queryset(self):
        include_deleted = self.request.query_params.get("status") == EnvironmentStatus.DELETED
        return selectors.environment_list_for_user(
            self.request.user, include_deleted=include_deleted or self.action != "list"
        )

    def _output(self, environment, status_code=status.HTTP_200_OK):
        environment = self.get_queryset().get(pk=environment.pk)
        return Response(self.get_serializer(environment).data, status=status_code)

    def _organization(self, organization: Organization | None) -> Organization:
        user = self.request.user
        organization = organization or organization_default_for_user(user)
        if organization is None or not (
            user.is_staff or organization.memberships.filter(user=user).exists()
        ):
            raise ValidationError.for_field(
                "organization", _("Choose an organisation you belong to.")
            )
        return organization

    @extend_schema(
        request=serializers.EnvironmentCreateSerializer,
        responses={201: serializers.EnvironmentSerializer},
    )
    def create(self, request):
        data = serializers.EnvironmentCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        organization = self._organization(values.pop("organization", None))
        environment = lifecycle.environment_create(
            user=request.user, organization=organization, **values
        )
        return self._output(environment, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={202: serializers.EnvironmentSerializer})
    def destroy(self, request, pk=None):
        """Delete: its container and volume go; GPUs and ports are freed."""
        environment = lifecycle.environment_delete(user=request.user, environment=self.get_object())
        return self._output(environment, status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=serializers.EnvironmentStartSerializer,
        responses={202: serializers.EnvironmentSerializer},
    )
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        """Start a stopped environment; ``without_gpu`` starts it on CPU only."""
        data = serializers.EnvironmentStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        environment = lifecycle.environment_start(
            user=request.user, environment=self.get_object(), **data.validated_data
        )
        return self._output(environment, status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: serializers.EnvironmentSerializer})
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        """Stop: the container is removed, ``/workspace`` is kept, GPUs are released."""
        environment = lifecycle.environment_stop(user=request.user, environment=self.get_object())
        return self._output(environment, status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=serializers.EnvironmentAutoStopSerializer,
        responses={200: serializers.EnvironmentSerializer},
    )
    @action(detail=True, methods=["post"], url_path="auto-stop")
    def auto_stop(self, request, pk=None):
        """Set or clear its auto-stop: a stop time and a maximum run time per run."""
        data = serializers.EnvironmentAutoStopSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        environment = autostop.environment_set_auto_stop(
            user=request.user, environment=self.get_object(), **data.validated_data
        )
        return self._output(environment)

    @extend_schema(request=None, responses={202: serializers.EnvironmentSerializer})
    @action(detail=True, methods=["post"])
    def restart(self, request, pk=None):
        environment = lifecycle.environment_restart(
            user=request.user, environment=self.get_object()
        )
        return self._output(environment, status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[TAIL],
        responses={
            200: serializers.EnvironmentLogsSerializer,
            409: OpenApiResponse(
                response={"$ref": "#/components/schemas/Error"},
                description="It has no container, or its host is not connected or did not "
                "answer in time.",
            ),
        },
    )
    @action(detail=True, methods=["get"])
    def logs(self, request, pk=None):
        """The container's output (the last ``tail`` lines), read from its host now."""
        try:
            tail = int(request.query_params.get("tail", "200"))
        except ValueError:
            tail = 0
        if not 1 <= tail <= 10_000:
            raise ValidationError.for_field("tail", _("Give a number of lines from 1 to 10000."))
        lines = environment_logs(self.get_object(), tail=tail)
        return Response({"lines": lines})

    @extend_schema(responses=serializers.ConnectionSerializer)
    @action(detail=True, methods=["get"])
    def connection(self, request, pk=None):
        """How to reach it: published ports as addresses and URLs, and its JupyterLab URL."""
        return Response(
            serializers.ConnectionSerializer(environment_connection(self.get_object())).data
        )

    @extend_schema(responses=serializers.EnvironmentEventSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None)
    def events(self, request, pk=None):
        """The lifecycle log: scheduled, pulling, started, stopped, why it failed."""
        events = selectors.environment_event_list(self.get_object())
        return Response(serializers.EnvironmentEventSerializer(events, many=True).data)


class RegistryCredentialViewSet(
    mixins.ListModelMixin, mixins.CreateModelMixin, mixins.DestroyModelMixin, ScopedGenericViewSet
):
    """Logins for private registries (operators). The password is write-only."""

    serializer_class = serializers.RegistryCredentialSerializer
    queryset = RegistryCredential.objects.none()
    permission_classes = [permissions.IsAdminUser, TokenWritePermission]

    def scoped_queryset(self):
        return selectors.registry_credential_list()

    def perform_create(self, serializer):
        serializer.instance = image_services.registry_credential_save(
            operator=self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        image_services.registry_credential_delete(operator=self.request.user, credential=instance)
