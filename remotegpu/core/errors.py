"""One family of errors for the whole product.

Services raise these; the API's exception handler turns them into
``{"error": {"code", "message", "fields"}}`` and portal views into form errors or messages.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _


class ApplicationError(Exception):
    code = "error"
    status_code = 400
    default_message = _("The request could not be completed.")

    def __init__(self, message=None, *, fields: dict[str, list[str]] | None = None, code=None):
        self.message = message or self.default_message
        self.fields = fields or {}
        if code:
            self.code = code
        super().__init__(str(self.message))


class ValidationError(ApplicationError):
    code = "invalid"
    status_code = 400
    default_message = _("Some fields are invalid.")

    @classmethod
    def for_field(cls, field: str, message) -> ValidationError:
        return cls(message, fields={field: [str(message)]})


class PermissionDenied(ApplicationError):
    code = "permission_denied"
    status_code = 403
    default_message = _("You do not have permission to do this.")


class NotFound(ApplicationError):
    code = "not_found"
    status_code = 404
    default_message = _("Not found.")


class Conflict(ApplicationError):
    code = "conflict"
    status_code = 409
    default_message = _("The request conflicts with the current state.")
