from django.utils.translation import gettext_lazy as _
from rest_framework import serializers

from ..choices import Role
from ..models import (
    APIToken,
    AuditEvent,
    Invitation,
    Membership,
    Notification,
    Organization,
    SSHKey,
    User,
)
from ..services.ssh_keys import ssh_keygen_line


class UserSerializer(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "email", "name", "is_staff", "date_joined"]
        read_only_fields = ["id", "email", "is_staff", "date_joined"]


class MeSerializer(UserSerializer):
    current_organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta(UserSerializer.Meta):
        fields = [*UserSerializer.Meta.fields, "current_organization"]
        read_only_fields = [*UserSerializer.Meta.read_only_fields, "current_organization"]


class OrganizationSerializer(serializers.ModelSerializer):
    member_count = serializers.IntegerField(read_only=True)
    role = serializers.SerializerMethodField()

    class Meta:
        model = Organization
        fields = ["slug", "name", "is_personal", "is_active", "member_count", "role", "created_at"]
        read_only_fields = ["is_personal", "is_active", "member_count", "role", "created_at"]

    def get_role(self, organization) -> str | None:
        return self.context.get("roles", {}).get(organization.pk)


class OrganizationCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    slug = serializers.SlugField(max_length=60, required=False, allow_blank=True)


class OrganizationUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)


class MembershipSerializer(serializers.ModelSerializer):
    user = UserSerializer(read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "user", "role", "created_at"]
        read_only_fields = fields


class MembershipRoleSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class InvitationSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    invited_by = serializers.EmailField(source="invited_by.email", read_only=True, default=None)
    is_expired = serializers.BooleanField(read_only=True)

    class Meta:
        model = Invitation
        fields = [
            "id",
            "organization",
            "email",
            "role",
            "status",
            "invited_by",
            "expires_at",
            "sent_at",
            "send_count",
            "is_expired",
            "created_at",
        ]
        read_only_fields = fields


class InvitationCreateSerializer(serializers.Serializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class InvitationRespondSerializer(serializers.Serializer):
    key = serializers.CharField(max_length=200, help_text=_("The key from the invitation link."))


class APITokenSerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="display_prefix", read_only=True)
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = APIToken
        fields = [
            "id",
            "name",
            "prefix",
            "write_enabled",
            "expires_at",
            "allowed_ips",
            "last_used_at",
            "revoked_at",
            "is_active",
            "created_at",
        ]
        read_only_fields = fields


class APITokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    write_enabled = serializers.BooleanField(default=False)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    allowed_ips = serializers.ListField(
        child=serializers.CharField(max_length=50), required=False, default=list, max_length=50
    )


class APITokenCreatedSerializer(APITokenSerializer):
    token = serializers.CharField(
        read_only=True, help_text=_("The token itself. It is shown only in this response.")
    )

    class Meta(APITokenSerializer.Meta):
        fields = [*APITokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class SSHKeySerializer(serializers.ModelSerializer):
    ssh_keygen = serializers.SerializerMethodField(
        help_text=_("The line `ssh-keygen -lf` prints for this key.")
    )

    class Meta:
        model = SSHKey
        fields = [
            "id",
            "name",
            "key_type",
            "bits",
            "fingerprint",
            "comment",
            "public_key",
            "ssh_keygen",
            "created_at",
        ]
        read_only_fields = fields

    def get_ssh_keygen(self, key) -> str:
        return ssh_keygen_line(key)


class SSHKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    public_key = serializers.CharField(max_length=16384)


class AuditEventSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    action_display = serializers.CharField(source="get_action_display", read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor_email",
            "organization",
            "action",
            "action_display",
            "target_type",
            "target_id",
            "target_repr",
            "ip",
            "user_agent",
            "details",
        ]
        read_only_fields = fields


class NotificationSerializer(serializers.ModelSerializer):
    is_read = serializers.BooleanField(read_only=True)

    class Meta:
        model = Notification
        fields = ["id", "level", "title", "body", "url", "created_at", "read_at", "is_read"]
        read_only_fields = fields


class CountSerializer(serializers.Serializer):
    count = serializers.IntegerField()
