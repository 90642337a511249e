"""Operator pages of the fleet, under ``/operator/`` (namespace ``machines``)."""

from django.urls import include, path

from ..views import alerts, allocations, hosts, join_tokens, regions

app_name = "machines"

urlpatterns = [
    path("onboarding/", include("machines.urls.onboarding")),
    path("", hosts.fleet_overview, name="fleet_overview"),
    path("hosts/", hosts.HostListView.as_view(), name="host_list"),
    path("hosts/import/", hosts.host_import, name="host_import"),
    path("hosts/import/template.csv", hosts.host_import_template, name="host_import_template"),
    path("hosts/<int:pk>/", hosts.HostDetailView.as_view(), name="host_detail"),
    path("hosts/<int:pk>/labels/", hosts.HostLabelsView.as_view(), name="host_labels"),
    path("hosts/<int:pk>/status/", hosts.HostStatusView.as_view(), name="host_status"),
    path("hosts/<int:pk>/commands/", hosts.HostCommandView.as_view(), name="host_command"),
    path(
        "hosts/<int:pk>/credential/revoke/",
        hosts.HostCredentialRevokeView.as_view(),
        name="host_credential_revoke",
    ),
    path(
        "hosts/<int:pk>/credential/rotate/",
        hosts.host_credential_rotate,
        name="host_credential_rotate",
    ),
    path("allocations/", allocations.AllocationListView.as_view(), name="allocation_list"),
    path("allocations/new/", allocations.AllocationCreateView.as_view(), name="allocation_create"),
    path(
        "allocations/<int:pk>/",
        allocations.AllocationDetailView.as_view(),
        name="allocation_detail",
    ),
    path(
        "allocations/<int:pk>/reclaim/",
        allocations.AllocationReclaimView.as_view(),
        name="allocation_reclaim",
    ),
    path("join-tokens/", join_tokens.join_token_list, name="join_token_list"),
    path(
        "join-tokens/<int:pk>/revoke/",
        join_tokens.JoinTokenRevokeView.as_view(),
        name="join_token_revoke",
    ),
    path("regions/", regions.region_list, name="region_list"),
    path("alerts/", alerts.AlertListView.as_view(), name="alert_list"),
    path("alerts/<int:pk>/", alerts.AlertDetailView.as_view(), name="alert_detail"),
    path(
        "alerts/<int:pk>/acknowledge/",
        alerts.AlertAcknowledgeView.as_view(),
        name="alert_acknowledge",
    ),
    path("alerts/rules/", alerts.alert_rule_list, name="alert_rule_list"),
    path("alerts/rules/new/", alerts.AlertRuleCreateView.as_view(), name="alert_rule_create"),
    path("alerts/rules/<int:pk>/", alerts.AlertRuleEditView.as_view(), name="alert_rule_edit"),
    path(
        "alerts/rules/<int:pk>/enabled/",
        alerts.AlertRuleEnabledView.as_view(),
        name="alert_rule_enabled",
    ),
]
