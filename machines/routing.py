from django.urls import path

from .consumers import AgentConsumer

# Agents authenticate with their credential and send no Origin: this route is mounted outside
# the browser routes' Origin check (remotegpu/asgi.py).
agent_websocket_urlpatterns = [
    path("agent/ws/", AgentConsumer.as_asgi()),
]
