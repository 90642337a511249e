"""Generic portal pages: a list, a detail, a form and an action are configuration.

As NetBox's generic views do, each page names its scoped queryset (the rows the user may see),
its template and, for lists, a django-filter ``FilterSet``; the base does the rest: sign-in,
operator-only pages answering 404 to others, 404 for objects outside the scope, pagination,
htmx partials, and service errors turned into form errors or messages.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import Http404, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.views import View
from django.views.generic import DetailView, FormView, ListView

from .errors import ApplicationError
from .forms import style_widgets
from .portal import apply_error_to_form

PAGE_SIZE = 50


class PortalPageMixin(LoginRequiredMixin):
    """Signed in; ``operator_only`` pages are 404 to anyone but staff (no hint they exist)."""

    operator_only = False

    def dispatch(self, request, *args, **kwargs):
        if self.operator_only and request.user.is_authenticated and not request.user.is_staff:
            raise Http404
        return super().dispatch(request, *args, **kwargs)

    def scoped_queryset(self):
        """The rows this user may see; every page builds on it, never on a model's manager."""
        raise NotImplementedError


class ScopedListView(PortalPageMixin, ListView):
    """A list page: ``scoped_queryset()`` filtered by ``filterset_class`` (its form styled as
    every form is), paginated into ``page_obj``; an htmx request gets ``partial_template_name``
    (the table alone) when one is set."""

    paginate_by = PAGE_SIZE
    filterset_class = None
    partial_template_name: str | None = None

    def get_queryset(self):
        queryset = self.scoped_queryset()
        self.filterset = None
        if self.filterset_class is not None:
            self.filterset = self.filterset_class(
                self.request.GET or None, queryset=queryset, request=self.request
            )
            style_widgets(self.filterset.form)
            queryset = self.filterset.qs
        return queryset

    def paginate_queryset(self, queryset, page_size):
        # A stale or mistyped ?page= (rows deleted since the link was made) shows the nearest
        # page, not a 404.
        paginator = self.get_paginator(
            queryset, page_size, self.get_paginate_orphans(), self.get_allow_empty()
        )
        page = paginator.get_page(self.request.GET.get(self.page_kwarg))
        return paginator, page, page.object_list, page.has_other_pages()

    def get_template_names(self):
        if self.partial_template_name and getattr(self.request, "htmx", False):
            return [self.partial_template_name]
        return super().get_template_names()

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["filterset"] = self.filterset
        query = self.request.GET.copy()
        query.pop("page", None)
        context["query_without_page"] = query.urlencode()
        return context


class ScopedDetailView(PortalPageMixin, DetailView):
    """One object of ``scoped_queryset()``; anything outside it is 404."""

    def get_queryset(self):
        return self.scoped_queryset()


class ServiceFormView(PortalPageMixin, FormView):
    """A form whose ``perform(form)`` calls a service: the service's errors land on the form,
    field by field, and nothing is half done. What ``perform`` returns is ``self.result``, for
    ``get_success_url`` and ``get_success_message``; as with Django's ``SuccessMessageMixin``,
    ``success_message`` may name the form's fields (``%(email)s``)."""

    success_message = ""

    def perform(self, form):
        raise NotImplementedError

    def get_success_message(self, cleaned_data) -> str:
        return self.success_message % cleaned_data

    def form_valid(self, form):
        try:
            self.result = self.perform(form)
        except ApplicationError as error:
            apply_error_to_form(form, error)
            return self.form_invalid(form)
        message = self.get_success_message(form.cleaned_data)
        if message:
            messages.success(self.request, message)
        return HttpResponseRedirect(self.get_success_url())


class ServiceActionView(PortalPageMixin, View):
    """A POST that acts on one object of ``scoped_queryset()`` through ``perform(obj)``; the
    service's refusal becomes a message, and the browser goes back to ``get_success_url``:
    ``success_url`` when set (a list), else the object's own page. What ``perform`` returns is
    ``self.result``, for a ``get_success_message`` that names what was done."""

    http_method_names = ["post"]
    success_message = ""
    success_url: str | None = None

    def perform(self, obj):
        raise NotImplementedError

    def get_success_message(self, obj) -> str:
        return self.success_message

    def get_success_url(self, obj) -> str:
        if self.success_url:
            return str(self.success_url)
        return obj.get_absolute_url()

    def post(self, request, *args, **kwargs):
        obj = get_object_or_404(self.scoped_queryset(), pk=kwargs["pk"])
        try:
            self.result = self.perform(obj)
        except ApplicationError as error:
            messages.error(request, str(error.message))
        else:
            message = self.get_success_message(obj)
            if message:
                messages.success(request, message)
        return HttpResponseRedirect(self.get_success_url(obj))
