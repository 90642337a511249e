from django.urls import path
from rest_framework.routers import DefaultRouter

from . import views

# No ``.json`` suffix routes: clients choose the format with the Accept header.
router = DefaultRouter()
router.include_format_suffixes = False
router.register("organizations", views.OrganizationViewSet, basename="organization")
router.register(
    r"organizations/(?P<organization_slug>[-\w]+)/members",
    views.MembershipViewSet,
    basename="membership",
)
router.register(
    r"organizations/(?P<organization_slug>[-\w]+)/invitations",
    views.InvitationViewSet,
    basename="invitation",
)
router.register("invitations", views.MyInvitationViewSet, basename="my-invitation")
router.register("tokens", views.APITokenViewSet, basename="token")
router.register("ssh-keys", views.SSHKeyViewSet, basename="ssh-key")
router.register("audit-events", views.AuditEventViewSet, basename="audit-event")
router.register("notifications", views.NotificationViewSet, basename="notification")

urlpatterns = [
    path("me/", views.MeView.as_view(), name="me"),
    *router.urls,
]
