from django.urls import path

from .consumers.agent import AgentConsumer
from .consumers.onboarding import OnboardingConsumer

# The onboarding page's socket is a browser route: session and Origin checked.
onboarding_websocket_urlpatterns = [
    path("ws/onboarding/<int:job_id>/", OnboardingConsumer.as_asgi()),
]

# Agents authenticate with their credential and send no Origin: this route is mounted outside
# the browser routes' Origin check (remotegpu/asgi.py).
agent_websocket_urlpatterns = [
    path("agent/ws/", AgentConsumer.as_asgi()),
]
