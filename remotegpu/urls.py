from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from accounts import views as accounts_views
from machines import prometheus
from machines.views.onboarding import agent_wheel_download
from remotegpu.core import views as core_views

urlpatterns = [
    path("healthz", core_views.healthz, name="healthz"),
    path("readyz", core_views.readyz, name="readyz"),
    path("metrics", prometheus.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("i18n/setlang/", accounts_views.language_set, name="set_language"),
    path("api/v1/", include("remotegpu.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    path("api/", RedirectView.as_view(pattern_name="swagger-ui", permanent=False)),
    path("operator/", include("machines.urls")),
    path("machines/", include("machines.urls.my_machines")),
    path("environments/", include("environments.urls")),
    path("billing/", include("billing.urls")),
    path("operator/billing/", include("billing.urls.operator")),
    path(
        "agent/download/remotegpu_agent-<str:version>-py3-none-any.whl",
        agent_wheel_download,
        name="agent_wheel_download",
    ),
    path("", include("accounts.urls")),
]

handler404 = "remotegpu.core.views.page_not_found"
handler500 = "remotegpu.core.views.server_error"
