from django.urls import path

from .consumers import EnvironmentConsumer, EnvironmentListConsumer, TerminalConsumer

websocket_urlpatterns = [
    path("ws/environments/", EnvironmentListConsumer.as_asgi()),
    path("ws/environments/<int:environment_id>/", EnvironmentConsumer.as_asgi()),
    path("ws/environments/<int:environment_id>/terminal/", TerminalConsumer.as_asgi()),
]
