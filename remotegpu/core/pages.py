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
    """A list page: ``scoped_queryset()`` filtered by ``filterset_class``, paginated; an htmx
    request gets ``partial_template_name`` (the table alone) when one is set."""

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
            queryset = self.filterset.qs
        return queryset

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
    field by field, and nothing is half done."""

    success_message = ""

    def perform(self, form):
        raise NotImplementedError

    def form_valid(self, form):
        try:
            self.result = self.perform(form)
        except ApplicationError as error:
            apply_error_to_form(form, error)
            return self.form_invalid(form)
        if self.success_message:
            messages.success(self.request, self.success_message)
        return HttpResponseRedirect(self.get_success_url())


class ServiceActionView(PortalPageMixin, View):
    """A POST that acts on one object of ``scoped_queryset()`` through ``perform(obj)``; the
    service's refusal becomes a message, and the browser goes back to ``get_success_url``."""

    http_method_names = ["post"]
    success_message = ""

    def perform(self, obj):
        raise NotImplementedError

    def get_success_url(self, obj) -> str:
        return obj.get_absolute_url()

    def post(self, request, *args, **kwargs):
        obj = get_object_or_404(self.scoped_queryset(), pk=kwargs["pk"])
        try:
            self.perform(obj)
        except ApplicationError as error:
            messages.error(request, str(error.message))
        else:
            if self.success_message:
                messages.success(request, self.success_message)
        return HttpResponseRedirect(self.get_success_url(obj))
