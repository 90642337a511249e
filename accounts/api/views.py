"""API of accounts: thin viewsets; every change goes through a service."""

from django.utils.translation import gettext as _
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.generics import RetrieveUpdateAPIView
from rest_framework.response import Response

from remotegpu.core.api.views import ScopedGenericViewSet, ScopedReadOnlyModelViewSet
from remotegpu.core.errors import NotFound, PermissionDenied

from .. import selectors
from ..choices import MANAGER_ROLES
from ..filters import AuditEventFilter, NotificationFilter
from ..models import (
    APIToken,
    AuditEvent,
    Invitation,
    Membership,
    Notification,
    Organization,
    SSHKey,
)
from ..services import invitations as invitation_services
from ..services import notifications as notification_services
from ..services import organizations as organization_services
from ..services import ssh_keys as ssh_key_services
from ..services import tokens as token_services
from . import serializers

ORGANIZATION_SLUG = OpenApiParameter(
    "organization_slug", OpenApiTypes.STR, OpenApiParameter.PATH, description="Organisation slug"
)


class MeView(RetrieveUpdateAPIView):
    """The signed-in user."""

    serializer_class = serializers.MeSerializer
    http_method_names = ["get", "patch", "head", "options"]

    def get_object(self):
        return self.request.user


class OrganizationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedGenericViewSet):
    """Organisations the caller belongs to (operators: all)."""

    serializer_class = serializers.OrganizationSerializer
    queryset = Organization.objects.none()
    lookup_field = "slug"
    lookup_value_regex = r"[-\w]+"

    def scoped_queryset(self):
        return selectors.organization_list_for_user(self.request.user)

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context["roles"] = dict(
            Membership.objects.filter(user=self.request.user).values_list("organization_id", "role")
        )
        return context

    def _output(self, organization, status_code=status.HTTP_200_OK):
        organization = self.get_queryset().get(pk=organization.pk)
        return Response(self.get_serializer(organization).data, status=status_code)

    @extend_schema(
        request=serializers.OrganizationCreateSerializer,
        responses={201: serializers.OrganizationSerializer},
    )
    def create(self, request):
        data = serializers.OrganizationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        organization = organization_services.organization_create(
            user=request.user, **data.validated_data
        )
        return self._output(organization, status.HTTP_201_CREATED)

    @extend_schema(
        request=serializers.OrganizationUpdateSerializer,
        responses=serializers.OrganizationSerializer,
    )
    def partial_update(self, request, slug=None):
        organization = self.get_object()
        data = serializers.OrganizationUpdateSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        if data.validated_data:
            organization_services.organization_update(
                actor=request.user, organization=organization, **data.validated_data
            )
        return self._output(organization)

    @extend_schema(request=None, responses=serializers.OrganizationSerializer)
    @action(detail=True, methods=["post"])
    def switch(self, request, slug=None):
        """Make this the caller's current organisation."""
        organization = self.get_object()
        organization_services.organization_switch(user=request.user, organization=organization)
        return self._output(organization)


class OrganizationScopedMixin:
    """Resolves ``organization_slug`` from the URL; non-members get 404, never a hint."""

    def get_organization(self):
        if not hasattr(self, "_organization"):
            organization = selectors.organization_get_for_user(
                self.request.user, self.kwargs["organization_slug"]
            )
            if organization is None:
                raise NotFound()
            if not organization.is_active and not self.request.user.is_staff:
                raise PermissionDenied(_("This organisation has been disabled by an operator."))
            self._organization = organization
        return self._organization

    def require_manager(self):
        organization_services.membership_require_role(
            self.request.user, self.get_organization(), MANAGER_ROLES
        )


@extend_schema_view(
    list=extend_schema(parameters=[ORGANIZATION_SLUG]),
    retrieve=extend_schema(parameters=[ORGANIZATION_SLUG]),
    partial_update=extend_schema(
        parameters=[ORGANIZATION_SLUG],
        request=serializers.MembershipRoleSerializer,
        responses=serializers.MembershipSerializer,
    ),
    destroy=extend_schema(parameters=[ORGANIZATION_SLUG]),
)
class MembershipViewSet(
    OrganizationScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    ScopedGenericViewSet,
):
    """Members of an organisation. Owners and admins change roles and remove members."""

    serializer_class = serializers.MembershipSerializer
    queryset = Membership.objects.none()
    filterset_fields = ["role"]

    def scoped_queryset(self):
        return selectors.membership_list(self.get_organization())

    def partial_update(self, request, organization_slug=None, pk=None):
        membership = self.get_object()
        data = serializers.MembershipRoleSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        if "role" in data.validated_data:
            organization_services.membership_change_role(
                actor=request.user, membership=membership, role=data.validated_data["role"]
            )
        return Response(self.get_serializer(membership).data)

    def destroy(self, request, organization_slug=None, pk=None):
        organization_services.membership_remove(actor=request.user, membership=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    list=extend_schema(parameters=[ORGANIZATION_SLUG]),
    retrieve=extend_schema(parameters=[ORGANIZATION_SLUG]),
    create=extend_schema(
        parameters=[ORGANIZATION_SLUG],
        request=serializers.InvitationCreateSerializer,
        responses={201: serializers.InvitationSerializer},
    ),
    destroy=extend_schema(parameters=[ORGANIZATION_SLUG], description="Revoke the invitation."),
    resend=extend_schema(
        parameters=[ORGANIZATION_SLUG], request=None, responses=serializers.InvitationSerializer
    ),
)
class InvitationViewSet(
    OrganizationScopedMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    ScopedGenericViewSet,
):
    """Invitations of an organisation; owners and admins only."""

    serializer_class = serializers.InvitationSerializer
    queryset = Invitation.objects.none()
    filterset_fields = ["status", "role"]

    def scoped_queryset(self):
        self.require_manager()
        return selectors.invitation_list(self.get_organization())

    def create(self, request, organization_slug=None):
        # Resolve the organisation first: a non-member is told "not found", not "invalid".
        organization = self.get_organization()
        data = serializers.InvitationCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation, _key = invitation_services.invitation_create(
            actor=request.user, organization=organization, **data.validated_data
        )
        return Response(self.get_serializer(invitation).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, organization_slug=None, pk=None):
        invitation_services.invitation_revoke(actor=request.user, invitation=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def resend(self, request, organization_slug=None, pk=None):
        invitation = self.get_object()
        invitation_services.invitation_resend(actor=request.user, invitation=invitation)
        invitation.refresh_from_db()
        return Response(self.get_serializer(invitation).data)


class MyInvitationViewSet(mixins.ListModelMixin, ScopedGenericViewSet):
    """Invitations waiting for the caller's e-mail address; accept or decline by key."""

    serializer_class = serializers.InvitationSerializer
    queryset = Invitation.objects.none()

    def scoped_queryset(self):
        return selectors.invitation_list_pending_for_user(self.request.user)

    @extend_schema(
        request=serializers.InvitationRespondSerializer, responses=serializers.MembershipSerializer
    )
    @action(detail=False, methods=["post"])
    def accept(self, request):
        data = serializers.InvitationRespondSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = invitation_services.invitation_accept(
            user=request.user, key=data.validated_data["key"]
        )
        return Response(serializers.MembershipSerializer(membership).data)

    @extend_schema(
        request=serializers.InvitationRespondSerializer, responses=serializers.InvitationSerializer
    )
    @action(detail=False, methods=["post"])
    def decline(self, request):
        data = serializers.InvitationRespondSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invitation = invitation_services.invitation_decline(
            user=request.user, key=data.validated_data["key"]
        )
        return Response(serializers.InvitationSerializer(invitation).data)


@extend_schema_view(
    destroy=extend_schema(description="Revoke the token; it stops working at once.")
)
class APITokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedGenericViewSet):
    """The caller's API tokens. The token itself is shown once, in the create response."""

    serializer_class = serializers.APITokenSerializer
    queryset = APIToken.objects.none()

    def scoped_queryset(self):
        return selectors.token_list(self.request.user)

    @extend_schema(
        request=serializers.APITokenCreateSerializer,
        responses={201: serializers.APITokenCreatedSerializer},
    )
    def create(self, request):
        data = serializers.APITokenCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = token_services.token_create(user=request.user, **data.validated_data)
        body = serializers.APITokenSerializer(issued.token).data | {"token": issued.plaintext}
        return Response(body, status=status.HTTP_201_CREATED)

    def destroy(self, request, pk=None):
        token_services.token_revoke(actor=request.user, token=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class SSHKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedGenericViewSet):
    """The caller's SSH public keys."""

    serializer_class = serializers.SSHKeySerializer
    queryset = SSHKey.objects.none()

    def scoped_queryset(self):
        return selectors.ssh_key_list(self.request.user)

    @extend_schema(
        request=serializers.SSHKeyCreateSerializer, responses={201: serializers.SSHKeySerializer}
    )
    def create(self, request):
        data = serializers.SSHKeyCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = ssh_key_services.ssh_key_add(user=request.user, **data.validated_data)
        return Response(self.get_serializer(key).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, pk=None):
        ssh_key_services.ssh_key_delete(actor=request.user, key=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditEventViewSet(ScopedReadOnlyModelViewSet):
    """Audit events: owners and admins see their organisations', operators everything."""

    serializer_class = serializers.AuditEventSerializer
    queryset = AuditEvent.objects.none()
    filterset_class = AuditEventFilter
    ordering_fields = ["created_at"]

    def scoped_queryset(self):
        return selectors.audit_event_list_for_user(self.request.user)


class NotificationViewSet(ScopedReadOnlyModelViewSet):
    """The caller's notifications."""

    serializer_class = serializers.NotificationSerializer
    queryset = Notification.objects.none()
    filterset_class = NotificationFilter

    def scoped_queryset(self):
        return selectors.notification_list(self.request.user)

    @extend_schema(request=None, responses=serializers.NotificationSerializer)
    @action(detail=True, methods=["post"])
    def read(self, request, pk=None):
        notification = self.get_object()
        notification_services.notification_mark_read(request.user, [notification.pk])
        notification.refresh_from_db()
        return Response(self.get_serializer(notification).data)

    @extend_schema(request=None, responses=serializers.CountSerializer)
    @action(detail=False, methods=["post"], url_path="read-all")
    def read_all(self, request):
        count = notification_services.notification_mark_all_read(request.user)
        return Response({"count": count})
