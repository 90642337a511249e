"""Operator admin for the fleet. Actions call services so that every change is audited."""

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.utils.translation import gettext_lazy as _

from remotegpu.core.admin import ReadOnlyAdmin
from remotegpu.core.errors import ApplicationError

from .choices import HostStatus
from .models import (
    GPU,
    AgentCommand,
    Alert,
    AlertRule,
    Allocation,
    GPUSample,
    GPUSampleRollup,
    Host,
    HostCredential,
    HostGPUModel,
    HostSample,
    HostSampleRollup,
    JoinToken,
    OnboardingJob,
    Region,
)
from .services.allocations import allocation_reclaim
from .services.commands import command_create
from .services.hosts import host_set_labels, host_set_status, labels_validate
from .services.join import credential_revoke, join_token_revoke
from .services.regions import region_save


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "location", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["name", "slug", "location"]
    prepopulated_fields = {"slug": ["name"]}

    def save_model(self, request, obj, form, change):
        region_save(operator=request.user, region=obj)


class GPUInline(admin.TabularInline):
    model = GPU
    extra = 0
    can_delete = False
    fields = ["index", "model", "uuid", "health", "utilization", "temperature", "power_draw"]
    readonly_fields = fields


class LabelsForm(forms.ModelForm):
    """Labels typed in the admin follow the rules of every other way of setting them."""

    def clean_labels(self):
        try:
            return labels_validate(self.cleaned_data["labels"])
        except ApplicationError as error:
            raise forms.ValidationError(error.message) from error


def _status_action(status, description):
    @admin.action(description=description)
    def set_status(modeladmin, request, queryset):
        done = 0
        for host in queryset:
            try:
                host_set_status(operator=request.user, host=host, status=status)
                done += 1
            except ApplicationError as error:  # each host's refusal is reported, the rest proceed
                modeladmin.message_user(request, f"{host}: {error}", messages.ERROR)
        modeladmin.message_user(request, _("%(n)d hosts changed.") % {"n": done})

    set_status.__name__ = f"set_{status}"
    return set_status


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    form = LabelsForm
    list_display = [
        "name",
        "region",
        "status",
        "connected",
        "gpu_backend",
        "agent_version",
        "last_seen_at",
    ]
    list_filter = ["status", "connected", "region", "gpu_backend"]
    search_fields = ["name", "address", "hostname", "cpu_model"]
    list_select_related = ["region"]
    inlines = [GPUInline]
    readonly_fields = [
        "status",
        "status_reason",
        "status_changed_at",
        "hostname",
        "cpu_model",
        "cpu_cores",
        "memory_total",
        "disk_total",
        "os",
        "kernel",
        "docker_version",
        "agent_version",
        "gpu_backend",
        "containers",
        "ssh_port",
        "ssh_host_key_fingerprint",
        "connected",
        "last_seen_at",
        "cpu_percent",
        "memory_used",
        "disk_used",
    ]
    actions = [
        _status_action(HostStatus.MAINTENANCE, _("Put in maintenance")),
        _status_action(HostStatus.DRAINING, _("Drain")),
        _status_action(HostStatus.ONLINE, _("Return to service")),
        _status_action(HostStatus.RETIRED, _("Retire")),
        "revoke_credentials",
        "ping",
    ]

    def save_model(self, request, obj, form, change):
        if change and "labels" in form.changed_data:
            # Through the service, so that the change is audited like on the pages and the API.
            current = Host.objects.get(pk=obj.pk)
            host_set_labels(operator=request.user, host=current, labels=obj.labels)
        super().save_model(request, obj, form, change)

    @admin.action(description=_("Revoke credentials (disconnects the agent)"))
    def revoke_credentials(self, request, queryset):
        for host in queryset:
            credential_revoke(operator=request.user, host=host)
        self.message_user(request, _("Credentials revoked."), messages.SUCCESS)

    @admin.action(description=_("Ping the agent"))
    def ping(self, request, queryset):
        for host in queryset:
            command_create(host=host, kind="ping", requested_by=request.user)
        self.message_user(request, _("Ping queued."), messages.SUCCESS)


@admin.register(GPU)
class GPUAdmin(admin.ModelAdmin):
    list_display = [
        "host",
        "index",
        "model",
        "health",
        "utilization",
        "temperature",
        "memory_used",
        "memory_total",
    ]
    list_filter = ["health", "model", "host__region"]
    search_fields = ["uuid", "model", "host__name"]
    list_select_related = ["host"]


@admin.register(JoinToken)
class JoinTokenAdmin(admin.ModelAdmin):
    form = LabelsForm
    list_display = ["name", "region", "uses", "max_uses", "expires_at", "revoked_at", "created_by"]
    list_filter = ["region", "created_at", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "key"]
    readonly_fields = ["key", "digest", "uses", "revoked_at", "created_by"]
    list_select_related = ["region", "created_by"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False  # minted on the operator pages, which show the token once

    @admin.action(description=_("Revoke selected join tokens"))
    def revoke(self, request, queryset):
        for join_token in queryset:
            join_token_revoke(operator=request.user, join_token=join_token)
        self.message_user(request, _("Join tokens revoked."), messages.SUCCESS)


@admin.register(HostCredential)
class HostCredentialAdmin(admin.ModelAdmin):
    list_display = ["host", "key", "last_used_at", "revoked_at", "created_at"]
    list_filter = ["created_at", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["host__name", "key"]
    readonly_fields = ["host", "key", "digest", "join_token", "last_used_at", "revoked_at"]
    list_select_related = ["host"]

    def has_add_permission(self, request):
        return False


@admin.register(AgentCommand)
class AgentCommandAdmin(admin.ModelAdmin):
    list_display = ["id", "host", "kind", "status", "attempts", "created_at", "finished_at"]
    list_filter = ["status", "kind", "created_at"]
    search_fields = ["host__name", "error"]
    readonly_fields = [f.name for f in AgentCommand._meta.fields]
    list_select_related = ["host"]

    def has_add_permission(self, request):
        return False


@admin.register(HostSample, HostSampleRollup)
class HostSampleAdmin(admin.ModelAdmin):
    list_display = ["host", "time", "cpu_percent", "memory_used", "disk_used"]
    list_filter = ["time"]
    search_fields = ["host__name"]
    list_select_related = ["host"]


@admin.register(GPUSample, GPUSampleRollup)
class GPUSampleAdmin(admin.ModelAdmin):
    list_display = ["gpu", "time", "utilization", "temperature", "power_draw", "memory_used"]
    list_filter = ["time"]
    search_fields = ["gpu__uuid", "gpu__host__name"]
    list_select_related = ["gpu", "gpu__host"]


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "metric",
        "comparison",
        "threshold",
        "for_duration",
        "severity",
        "enabled",
    ]
    list_filter = ["enabled", "severity", "metric"]
    search_fields = ["name"]
    # Django 6 will assume https for a URL typed without a scheme; say so now.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ["rule", "host", "gpu", "status", "severity", "value", "fired_at", "resolved_at"]
    list_filter = ["status", "severity", "rule"]
    search_fields = ["host__name", "gpu__uuid", "rule__name", "message"]
    list_select_related = ["rule", "host", "gpu"]
    readonly_fields = [f.name for f in Alert._meta.fields]

    def has_add_permission(self, request):
        return False  # alerts come from rule evaluation


@admin.register(OnboardingJob)
class OnboardingJobAdmin(admin.ModelAdmin):
    list_display = ["name", "address", "port", "username", "status", "step", "created_at"]
    list_filter = ["status", "auth_method", "created_at"]
    search_fields = ["name", "address", "username"]
    readonly_fields = [f.name for f in OnboardingJob._meta.fields if f.name != "id"]

    def has_add_permission(self, request):
        return False  # started from the operator pages, which confirm the host key


@admin.register(HostGPUModel)
class HostGPUModelAdmin(ReadOnlyAdmin):
    """The database keeps these counts (a trigger on the GPU table)."""

    list_display = ["host", "model", "healthy"]
    list_filter = ["model"]
    search_fields = ["host__name", "model"]
    list_select_related = ["host"]

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    """Allocations are made on the operator pages and the API, which check overlaps and the
    host; here operators look them up, and may reclaim."""

    list_display = [
        "host",
        "organization",
        "status",
        "starts_at",
        "ends_at",
        "tenant_user",
        "reclaimed_at",
    ]
    list_filter = ["status", "starts_at", "ends_at", "host__region"]
    search_fields = ["host__name", "organization__name", "organization__slug", "tenant_user"]
    list_select_related = ["host", "organization"]
    actions = ["reclaim"]

    def has_delete_permission(self, request, obj=None):
        return False  # the record of who had which machine stays

    @admin.action(description=_("Reclaim selected allocations now"))
    def reclaim(self, request, queryset):
        for allocation in queryset:
            try:
                allocation_reclaim(
                    actor=request.user,
                    allocation=allocation,
                    reason=str(_("Reclaimed from the admin.")),
                )
            except ApplicationError as error:  # each refusal is reported, the rest proceed
                self.message_user(request, f"{allocation}: {error}", messages.ERROR)
        self.message_user(request, _("Reclaim requested."), messages.SUCCESS)
