"""Every app's WebSocket routes: browser routes (session + Origin checked) and agent routes."""

from accounts.routing import websocket_urlpatterns as accounts_websockets
from environments.routing import websocket_urlpatterns as environments_websockets
from machines.routing import agent_websocket_urlpatterns, onboarding_websocket_urlpatterns

browser_websocket_urlpatterns = [
    *accounts_websockets,
    *onboarding_websocket_urlpatterns,
    *environments_websockets,
]
agent_websocket_urlpatterns = [*agent_websocket_urlpatterns]
