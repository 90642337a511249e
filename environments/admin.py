"""Operator admin for environments, images, specs and registry logins. Changes of state go
through services, so they are audited and reach the hosts."""

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from remotegpu.core.admin import ReadOnlyAdmin
from remotegpu.core.errors import ApplicationError

from .models import (
    Environment,
    EnvironmentEvent,
    GPUAssignment,
    Image,
    OrphanContainer,
    PortAllocation,
    RegistryCredential,
    Spec,
)
from .services.images import image_save, registry_credential_save
from .services.lifecycle import environment_delete, environment_stop
from .services.specs import spec_save


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "reference",
        "framework",
        "cuda_version",
        "organization",
        "is_active",
        "prepull_link",
    ]
    list_filter = [
        "is_active",
        "framework",
        "cuda_version",
        ("organization", admin.EmptyFieldListFilter),
    ]
    search_fields = ["name", "reference", "description", "organization__name"]
    autocomplete_fields = ["organization"]

    def save_model(self, request, obj, form, change):
        image_save(operator=request.user, image=obj)

    @admin.display(description=_("pre-pull"))
    def prepull_link(self, obj):
        return format_html(
            '<a href="{}">{}</a>',
            reverse("environments:image_prepull", args=[obj.pk]),
            _("Pull onto hosts…"),
        )


@admin.register(Spec)
class SpecAdmin(admin.ModelAdmin):
    list_display = ["name", "gpu_model", "gpu_count", "vcpu", "memory_gib", "disk_gib", "is_active"]
    list_filter = ["is_active", "gpu_model", "gpu_count", "regions"]
    search_fields = ["name", "gpu_model", "description"]
    filter_horizontal = ["regions"]

    def save_model(self, request, obj, form, change):
        spec_save(operator=request.user, spec=obj)


class RegistryCredentialForm(forms.ModelForm):
    password = forms.CharField(
        label=_("password"),
        widget=forms.PasswordInput,
        help_text=_("Stored encrypted; it is never shown again. Give it again to change it."),
    )

    class Meta:
        model = RegistryCredential
        fields = ["registry", "username"]


@admin.register(RegistryCredential)
class RegistryCredentialAdmin(admin.ModelAdmin):
    form = RegistryCredentialForm
    list_display = ["registry", "username", "updated_at"]
    list_filter = ["updated_at"]
    search_fields = ["registry", "username"]

    def save_model(self, request, obj, form, change):
        saved = registry_credential_save(
            operator=request.user,
            registry=form.cleaned_data["registry"],
            username=form.cleaned_data["username"],
            password=form.cleaned_data["password"],
        )
        obj.pk = saved.pk


class PortInline(admin.TabularInline):
    model = PortAllocation
    extra = 0
    can_delete = False
    fields = ["container_port", "host_port", "role", "name", "host"]
    readonly_fields = fields


class GPUAssignmentInline(admin.TabularInline):
    model = GPUAssignment
    extra = 0
    can_delete = False
    fields = ["gpu", "created_at", "released_at"]
    readonly_fields = fields


class EventInline(admin.TabularInline):
    model = EnvironmentEvent
    extra = 0
    can_delete = False
    fields = ["created_at", "status", "message"]
    readonly_fields = fields
    ordering = ["-created_at"]


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    """Operators see every environment; stopping and deleting go through the services."""

    list_display = [
        "name",
        "organization",
        "status",
        "status_reason",
        "spec",
        "host",
        "without_gpu",
        "created_at",
    ]
    list_filter = ["status", "status_reason", "without_gpu", "spec", "region", "created_at"]
    search_fields = [
        "name",
        "organization__name",
        "organization__slug",
        "host__name",
        "image_reference",
    ]
    list_select_related = ["organization", "spec", "host"]
    readonly_fields = [field.name for field in Environment._meta.fields]
    inlines = [GPUAssignmentInline, PortInline, EventInline]
    actions = ["stop_environments", "delete_environments"]

    def has_add_permission(self, request):
        return False  # environments are created through the portal or the API, which place them

    def _each(self, request, queryset, service, done_message):
        for environment in queryset:
            try:
                service(user=request.user, environment=environment)
            except ApplicationError as error:
                self.message_user(request, f"{environment}: {error.message}", messages.WARNING)
        self.message_user(request, done_message, messages.SUCCESS)

    @admin.action(description=_("Stop selected environments"))
    def stop_environments(self, request, queryset):
        self._each(request, queryset, environment_stop, _("Stop requested."))

    @admin.action(description=_("Delete selected environments"))
    def delete_environments(self, request, queryset):
        self._each(request, queryset, environment_delete, _("Delete requested."))


@admin.register(EnvironmentEvent)
class EnvironmentEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "environment", "status", "message"]
    list_filter = ["status", "created_at"]
    search_fields = ["environment__name", "message"]
    list_select_related = ["environment"]


@admin.register(GPUAssignment)
class GPUAssignmentAdmin(ReadOnlyAdmin):
    list_display = ["gpu", "environment", "created_at", "released_at"]
    list_filter = [("released_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["gpu__uuid", "gpu__host__name", "environment__name"]
    list_select_related = ["gpu__host", "environment"]


@admin.register(PortAllocation)
class PortAllocationAdmin(ReadOnlyAdmin):
    list_display = ["host", "host_port", "container_port", "role", "environment"]
    list_filter = ["role", "host"]
    search_fields = ["host__name", "environment__name", "host_port"]
    list_select_related = ["host", "environment"]


@admin.register(OrphanContainer)
class OrphanContainerAdmin(ReadOnlyAdmin):
    list_display = [
        "container_id",
        "host",
        "environment_label",
        "first_seen_at",
        "removal_requested_at",
    ]
    list_filter = [("removal_requested_at", admin.EmptyFieldListFilter), "first_seen_at"]
    search_fields = ["container_id", "host__name", "environment_label"]
