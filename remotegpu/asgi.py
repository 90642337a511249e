"""ASGI entry point for daphne: HTTP (Django) and WebSockets (Channels)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.production")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import URLPattern  # noqa: E402

from remotegpu.routing import (  # noqa: E402
    agent_websocket_urlpatterns,
    browser_websocket_urlpatterns,
)


def browser_route(route: URLPattern) -> URLPattern:
    """A browser socket: session authentication, and only from an allowed Origin."""
    consumer = AllowedHostsOriginValidator(AuthMiddlewareStack(route.callback))
    return URLPattern(route.pattern, consumer, name=route.name)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Agents hold a host credential and send no Origin, so their routes skip the Origin
        # check that browser routes need.
        "websocket": URLRouter(
            [
                *agent_websocket_urlpatterns,
                *(browser_route(route) for route in browser_websocket_urlpatterns),
            ]
        ),
    }
)
