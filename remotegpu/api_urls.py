"""Every app's API under /api/v1/."""

from django.urls import include, path

app_name = "api"

urlpatterns = [
    path("", include("accounts.api.urls")),
    path("", include("machines.api.urls")),
    path("", include("environments.api.urls")),
]
