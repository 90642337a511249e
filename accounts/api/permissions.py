from django.utils.translation import gettext_lazy as _
from rest_framework import permissions

from ..models import APIToken


class TokenWritePermission(permissions.BasePermission):
    """A read-only token may only read."""

    message = _("This token is read-only; create a read-write token to make changes.")

    def has_permission(self, request, view):
        if isinstance(request.auth, APIToken) and not request.auth.write_enabled:
            return request.method in permissions.SAFE_METHODS
        return True


class ReadAnyWriteOperator(permissions.BasePermission):
    """Everyone signed in reads; only operators write (regions, the image catalogue)."""

    def has_permission(self, request, view):
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_staff)
