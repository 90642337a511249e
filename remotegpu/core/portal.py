"""Helpers for portal views: turn service errors into form errors or messages."""

from __future__ import annotations

from contextlib import contextmanager

from django.contrib import messages

from .errors import ApplicationError


def apply_error_to_form(form, error: ApplicationError) -> None:
    placed = False
    for field, field_messages in error.fields.items():
        for message in field_messages:
            form.add_error(field if field in form.fields else None, message)
            placed = True
    if not placed:
        form.add_error(None, str(error.message))


@contextmanager
def service_messages(request):
    """Run a service call; on an ApplicationError show its message instead of failing."""
    try:
        yield
    except ApplicationError as error:
        messages.error(request, str(error.message))
