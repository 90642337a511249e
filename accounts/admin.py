"""Operator admin for accounts. Actions call services so that every change is audited."""

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .models import (
    APIToken,
    AuditEvent,
    Invitation,
    Membership,
    Notification,
    Organization,
    SSHKey,
    User,
)
from .services.organizations import organization_set_active
from .services.tokens import token_revoke
from .services.users import user_set_active


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]


def _set_users_active(request, queryset, active: bool):
    count = 0
    for user in queryset:
        user_set_active(operator=request.user, user=user, active=active)
        count += 1
    return count


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = ["email", "name", "is_active", "is_staff", "last_login", "date_joined"]
    list_filter = ["is_active", "is_staff", "is_superuser", "language", "date_joined"]
    search_fields = ["email", "name"]
    readonly_fields = ["last_login", "date_joined"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        (_("Personal"), {"fields": ["name", "current_organization", "language"]}),
        (_("Permissions"), {"fields": ["is_active", "is_staff", "is_superuser", "groups"]}),
        (_("Dates"), {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "password1", "password2"]})]
    actions = ["disable_users", "enable_users"]

    @admin.action(description=_("Disable selected users (ends their sessions and tokens)"))
    def disable_users(self, request, queryset):
        count = _set_users_active(request, queryset.exclude(pk=request.user.pk), active=False)
        self.message_user(
            request, ngettext("%d user disabled.", "%d users disabled.", count) % count
        )

    @admin.action(description=_("Enable selected users"))
    def enable_users(self, request, queryset):
        count = _set_users_active(request, queryset, active=True)
        self.message_user(request, ngettext("%d user enabled.", "%d users enabled.", count) % count)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "is_personal",
        "is_active",
        "gpu_quota",
        "environment_quota",
        "custom_images_allowed",
        "created_at",
    ]
    list_filter = ["is_active", "is_personal", "custom_images_allowed", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]
    actions = ["disable_organizations", "enable_organizations"]

    @admin.action(description=_("Disable selected organisations"))
    def disable_organizations(self, request, queryset):
        for organization in queryset:
            organization_set_active(operator=request.user, organization=organization, active=False)
        self.message_user(request, _("Organisations disabled."), messages.SUCCESS)

    @admin.action(description=_("Enable selected organisations"))
    def enable_organizations(self, request, queryset):
        for organization in queryset:
            organization_set_active(operator=request.user, organization=organization, active=True)
        self.message_user(request, _("Organisations enabled."), messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role", "created_at"]
    search_fields = ["user__email", "organization__name", "organization__slug"]
    autocomplete_fields = ["user", "organization"]
    list_select_related = ["user", "organization"]


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ["email", "organization", "role", "status", "expires_at", "invited_by"]
    list_filter = ["status", "role", "created_at"]
    search_fields = ["email", "organization__name", "organization__slug"]
    readonly_fields = ["key_digest", "sent_at", "send_count", "responded_at"]
    list_select_related = ["organization", "invited_by"]


@admin.register(APIToken)
class APITokenAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "user",
        "key",
        "write_enabled",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["write_enabled", "created_at", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "key", "user__email"]
    readonly_fields = ["key", "digest", "last_used_at", "revoked_at"]
    list_select_related = ["user"]
    actions = ["revoke_tokens"]

    def has_add_permission(self, request):
        return False  # tokens are issued by their owner, who alone sees the secret

    @admin.action(description=_("Revoke selected tokens"))
    def revoke_tokens(self, request, queryset):
        for token in queryset.filter(revoked_at__isnull=True):
            token_revoke(actor=request.user, token=token)
        self.message_user(request, _("Tokens revoked."), messages.SUCCESS)


@admin.register(SSHKey)
class SSHKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "key_type", "bits", "fingerprint", "created_at"]
    list_filter = ["key_type", "created_at"]
    search_fields = ["name", "fingerprint", "user__email", "comment"]
    readonly_fields = ["key_type", "bits", "fingerprint", "public_key", "comment"]
    list_select_related = ["user"]

    def has_add_permission(self, request):
        return False  # keys are validated by the service the portal and API use


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "actor_email", "organization", "action", "target_repr", "ip"]
    list_filter = ["action", "created_at"]
    search_fields = ["actor_email", "target_repr", "ip", "organization__slug"]
    date_hierarchy = "created_at"
    list_select_related = ["organization"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["title", "user", "level", "created_at", "read_at"]
    list_filter = ["level", "created_at", ("read_at", admin.EmptyFieldListFilter)]
    search_fields = ["title", "body", "user__email"]
    list_select_related = ["user"]
