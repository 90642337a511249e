"""Addresses a new host's agent uses: taken from the request that asked, so they are the ones
that reached this server (behind a proxy, ``SECURE_PROXY_SSL_HEADER`` makes them https)."""


def server_url(request) -> str:
    return request.build_absolute_uri("/").rstrip("/")


def agent_websocket_url(request) -> str:
    base = server_url(request)
    return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/agent/ws/"


def join_command(request, token: str) -> str:
    """The one line an operator runs on a new host (the agent installed with pip)."""
    return (
        f"remotegpu-agent join --server {server_url(request)} --token {token} "
        "&& remotegpu-agent run"
    )
