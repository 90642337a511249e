from django.urls import path

from .consumers import EnvironmentConsumer, EnvironmentListConsumer

websocket_urlpatterns = [
    path("ws/environments/", EnvironmentListConsumer.as_asgi()),
    path("ws/environments/<int:environment_id>/", EnvironmentConsumer.as_asgi()),
]
