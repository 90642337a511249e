"""The image catalogue as customers see it."""

from __future__ import annotations

from remotegpu.core.pages import ScopedListView

from .. import selectors


class ImageListView(ScopedListView):
    template_name = "environments/image_list.html"

    def scoped_queryset(self):
        return selectors.image_list_for_user(self.request.user)


class SpecListView(ScopedListView):
    template_name = "environments/spec_list.html"
    paginate_by = None

    def scoped_queryset(self):
        return selectors.spec_list(self.request.user)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        specs = list(context["object_list"])
        availability = selectors.spec_availability(specs)
        context["specs"] = [(spec, availability[spec.pk]) for spec in specs]
        return context
