"""Every app's API under /api/v1/."""

from django.urls import include, path

from environments.api.estimate import EstimateView

app_name = "api"

urlpatterns = [
    path("", include("accounts.api.urls")),
    path("", include("machines.api.urls")),
    path("", include("environments.api.urls")),
    # The estimate names specs and regions, so environments answers it under billing's path.
    path("billing/estimate/", EstimateView.as_view(), name="billing-estimate"),
    path("", include("billing.api.urls")),
]
