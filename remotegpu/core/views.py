"""Liveness and readiness probes for load balancers and orchestrators."""

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.utils.translation import gettext as _
from django.views import defaults
from django.views.decorators.cache import never_cache

from remotegpu.core.api.exceptions import error_body


@never_cache
def healthz(request):
    """The process is up and serving requests."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_redis() -> str | None:
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()
    except (redis.RedisError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@never_cache
def readyz(request):
    """PostgreSQL and Redis are reachable; 503 with the failing check otherwise."""
    checks = {"database": _check_database(), "redis": _check_redis()}
    ready = not any(checks.values())
    body = {
        "status": "ok" if ready else "unavailable",
        "checks": {name: error or "ok" for name, error in checks.items()},
    }
    return JsonResponse(body, status=200 if ready else 503)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def page_not_found(request, exception=None):
    """404 in the API's error shape under /api/, Django's page elsewhere."""
    if _is_api(request):
        return JsonResponse(error_body("not_found", _("Not found.")), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    """500 in the API's error shape under /api/, Django's page elsewhere."""
    if _is_api(request):
        body = error_body("server_error", _("Something went wrong on our side; it was logged."))
        return JsonResponse(body, status=500)
    return defaults.server_error(request)
