from django.urls import path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.include_format_suffixes = False
router.register("regions", views.RegionViewSet, basename="region")
router.register("hosts", views.HostViewSet, basename="host")
router.register("gpus", views.GPUViewSet, basename="gpu")
router.register("host-commands", views.AgentCommandViewSet, basename="host-command")
router.register("join-tokens", views.JoinTokenViewSet, basename="join-token")
router.register("alerts", views.AlertViewSet, basename="alert")
router.register("alert-rules", views.AlertRuleViewSet, basename="alert-rule")
router.register("allocations", views.AllocationViewSet, basename="allocation")

urlpatterns = [
    path("agent/join/", views.AgentJoinView.as_view(), name="agent-join"),
    path("fleet/metrics/", views.FleetMetricsView.as_view(), name="fleet-metrics"),
    *router.urls,
]
