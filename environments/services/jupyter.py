"""Jupyter: an environment whose image publishes a port with the role ``jupyter`` gets a token
of its own, passed to the container as ``JUPYTER_TOKEN`` (JupyterLab and Notebook read it) and
shown to its organisation as a URL that opens JupyterLab signed in.

The token is stored sealed (Fernet, a key derived from ``SECRET_KEY``): the server must show it
again, and a copy of the database alone does not give it away.
"""

from __future__ import annotations

import secrets

from cryptography.fernet import InvalidToken

from remotegpu.core.secrets import sealing_key

from ..choices import PortRole
from ..models import Environment

TOKEN_BYTES = 24


def _sealing_key():
    return sealing_key(b"remotegpu jupyter token v1")


def jupyter_wanted(ports: list[dict]) -> bool:
    return any(port.get("role") == PortRole.JUPYTER for port in ports)


def jupyter_token_new() -> tuple[str, str]:
    """A fresh token and its sealed form."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, _sealing_key().encrypt(token.encode()).decode()


def jupyter_token(environment: Environment) -> str:
    """The environment's token; "" when it has none (or ``SECRET_KEY`` changed since)."""
    if not environment.jupyter_token_sealed:
        return ""
    try:
        return _sealing_key().decrypt(environment.jupyter_token_sealed.encode()).decode()
    except InvalidToken:
        return ""


def jupyter_url(environment: Environment) -> str:
    """``http://<host>:<port>/lab?token=…`` while it runs with a Jupyter port; "" otherwise."""
    token = jupyter_token(environment)
    host = environment.host
    if not token or host is None:
        return ""
    port = next((port for port in environment.ports.all() if port.role == PortRole.JUPYTER), None)
    if port is None:
        return ""
    return f"http://{host.address or host.hostname}:{port.host_port}/lab?token={token}"
