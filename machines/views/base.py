"""The staff-only guard and the pagination of the operator pages that stay functions; the
others are ``remotegpu.core.pages`` classes with ``operator_only = True``."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404

from remotegpu.core.pages import PAGE_SIZE


def operator_required(view):
    """Signed in (else the login page) and staff (else 404)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise Http404
        return view(request, *args, **kwargs)

    return login_required(wrapper)


def paginate(request, queryset):
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))
