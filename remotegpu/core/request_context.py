"""Who is asking, from where: set once per request, read by services that record it (audit)."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    ip: str | None = None
    user_agent: str = ""


_EMPTY = RequestContext()
_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "remotegpu_request_context", default=None
)


def client_ip(meta) -> str | None:
    # REMOTE_ADDR is the peer; deployments behind a proxy set it from X-Forwarded-For in the proxy
    # layer (daphne --proxy-headers), never from a header the client can forge here.
    return meta.get("REMOTE_ADDR") or None


def context_from_request(request) -> RequestContext:
    return RequestContext(
        ip=client_ip(request.META),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:500],
    )


def get() -> RequestContext:
    return _current.get() or _EMPTY


def set_(context: RequestContext) -> contextvars.Token:
    return _current.set(context)


def reset(token: contextvars.Token) -> None:
    _current.reset(token)
