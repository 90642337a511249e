"""Every app's WebSocket routes: browser routes (session + Origin checked) and agent routes."""

from accounts.routing import websocket_urlpatterns as accounts_websockets
from machines.consumers_onboarding import onboarding_websocket_urlpatterns
from machines.routing import agent_websocket_urlpatterns

browser_websocket_urlpatterns = [*accounts_websockets, *onboarding_websocket_urlpatterns]
agent_websocket_urlpatterns = [*agent_websocket_urlpatterns]
