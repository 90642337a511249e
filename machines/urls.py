from django.urls import include, path

from . import alert_views, views

app_name = "machines"

urlpatterns = [
    path("onboarding/", include("machines.onboarding_urls")),
    path("", views.fleet_overview, name="fleet_overview"),
    path("hosts/", views.host_list, name="host_list"),
    path("hosts/import/", views.host_import, name="host_import"),
    path("hosts/import/template.csv", views.host_import_template, name="host_import_template"),
    path("hosts/<int:pk>/", views.host_detail, name="host_detail"),
    path("hosts/<int:pk>/labels/", views.host_labels, name="host_labels"),
    path("hosts/<int:pk>/status/", views.host_status, name="host_status"),
    path("hosts/<int:pk>/commands/", views.host_command, name="host_command"),
    path(
        "hosts/<int:pk>/credential/revoke/",
        views.host_credential_revoke,
        name="host_credential_revoke",
    ),
    path(
        "hosts/<int:pk>/credential/rotate/",
        views.host_credential_rotate,
        name="host_credential_rotate",
    ),
    path("join-tokens/", views.join_token_list, name="join_token_list"),
    path("join-tokens/<int:pk>/revoke/", views.join_token_revoke, name="join_token_revoke"),
    path("regions/", views.region_list, name="region_list"),
    path("alerts/", alert_views.alert_list, name="alert_list"),
    path("alerts/<int:pk>/", alert_views.alert_detail, name="alert_detail"),
    path("alerts/<int:pk>/acknowledge/", alert_views.alert_acknowledge, name="alert_acknowledge"),
    path("alerts/rules/", alert_views.alert_rule_list, name="alert_rule_list"),
    path("alerts/rules/new/", alert_views.alert_rule_create, name="alert_rule_create"),
    path("alerts/rules/<int:pk>/", alert_views.alert_rule_edit, name="alert_rule_edit"),
    path(
        "alerts/rules/<int:pk>/enabled/", alert_views.alert_rule_enabled, name="alert_rule_enabled"
    ),
]
