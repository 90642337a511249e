from django.urls import path

from . import views

app_name = "accounts"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("settings/profile/", views.profile, name="profile"),
    path("orgs/", views.organization_list, name="organization_list"),
    path("orgs/new/", views.OrganizationCreateView.as_view(), name="organization_create"),
    path("orgs/<slug:slug>/switch/", views.organization_switch, name="organization_switch"),
    path("org/settings/", views.OrganizationSettingsView.as_view(), name="organization_settings"),
    path("org/members/", views.member_list, name="member_list"),
    path("org/members/<int:pk>/role/", views.MemberRoleView.as_view(), name="member_role"),
    path("org/members/<int:pk>/remove/", views.member_remove, name="member_remove"),
    path("org/invitations/new/", views.InvitationCreateView.as_view(), name="invitation_create"),
    path(
        "org/invitations/<int:pk>/resend/",
        views.InvitationResendView.as_view(),
        name="invitation_resend",
    ),
    path(
        "org/invitations/<int:pk>/revoke/",
        views.InvitationRevokeView.as_view(),
        name="invitation_revoke",
    ),
    path("invitations/<str:key>/", views.invitation_respond, name="invitation_respond"),
    path("settings/tokens/", views.token_list, name="token_list"),
    path("settings/tokens/new/", views.token_create, name="token_create"),
    path("settings/tokens/<int:pk>/revoke/", views.TokenRevokeView.as_view(), name="token_revoke"),
    path("settings/ssh-keys/", views.ssh_key_list, name="ssh_key_list"),
    path("settings/ssh-keys/new/", views.SSHKeyCreateView.as_view(), name="ssh_key_create"),
    path(
        "settings/ssh-keys/<int:pk>/delete/",
        views.SSHKeyDeleteView.as_view(),
        name="ssh_key_delete",
    ),
    path("audit/", views.AuditListView.as_view(), name="audit_list"),
    path("audit/export.csv", views.audit_export, name="audit_export"),
    path("notifications/", views.NotificationListView.as_view(), name="notification_list"),
    path("notifications/<int:pk>/read/", views.notification_read, name="notification_read"),
    path("notifications/read-all/", views.notification_read_all, name="notification_read_all"),
]
