"""What browser WebSocket consumers share."""

from __future__ import annotations

from types import SimpleNamespace

from django.utils import translation

CLOSE_NOT_SIGNED_IN = 4401
CLOSE_NOT_FOUND = 4404  # also for someone who may not see it: it does not exist for them


def scope_language(scope) -> str:
    """The page's language: the language cookie, else Accept-Language (as LocaleMiddleware)."""
    headers = dict(scope.get("headers", []))
    request = SimpleNamespace(
        COOKIES=scope.get("cookies", {}),
        META={"HTTP_ACCEPT_LANGUAGE": headers.get(b"accept-language", b"").decode("latin-1")},
        path_info=scope.get("path", "/"),
    )
    return translation.get_language_from_request(request)
