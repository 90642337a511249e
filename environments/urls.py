from django.urls import path

from .views import environments, images

app_name = "environments"

urlpatterns = [
    path("", environments.EnvironmentListView.as_view(), name="environment_list"),
    path("new/", environments.EnvironmentCreateView.as_view(), name="environment_create"),
    path("<int:pk>/", environments.EnvironmentDetailView.as_view(), name="environment_detail"),
    path(
        "<int:pk>/terminal/",
        environments.EnvironmentTerminalView.as_view(),
        name="environment_terminal",
    ),
    path("<int:pk>/start/", environments.EnvironmentStartView.as_view(), name="environment_start"),
    path("<int:pk>/stop/", environments.EnvironmentStopView.as_view(), name="environment_stop"),
    path(
        "<int:pk>/auto-stop/",
        environments.EnvironmentAutoStopView.as_view(),
        name="environment_auto_stop",
    ),
    path(
        "<int:pk>/restart/",
        environments.EnvironmentRestartView.as_view(),
        name="environment_restart",
    ),
    path(
        "<int:pk>/delete/", environments.EnvironmentDeleteView.as_view(), name="environment_delete"
    ),
    path("images/", images.ImageListView.as_view(), name="image_list"),
    path("images/<int:pk>/prepull/", images.ImagePrepullView.as_view(), name="image_prepull"),
    path("specs/", images.SpecListView.as_view(), name="spec_list"),
    path(
        "all/",
        environments.OperatorEnvironmentListView.as_view(),
        name="operator_environment_list",
    ),
]
