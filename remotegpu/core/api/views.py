"""Base classes every app's API builds on."""

from rest_framework import viewsets


class ScopedQuerysetMixin:
    """``get_queryset`` returns ``scoped_queryset()``: the rows the caller may see, never more.

    The class-level ``queryset`` must be ``Model.objects.none()``: it only tells the schema
    generator the model, so a view that forgets to scope shows nothing rather than everything.
    """

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.queryset
        return self.scoped_queryset()

    def scoped_queryset(self):
        raise NotImplementedError


class ScopedGenericViewSet(ScopedQuerysetMixin, viewsets.GenericViewSet):
    pass


class ScopedReadOnlyModelViewSet(ScopedQuerysetMixin, viewsets.ReadOnlyModelViewSet):
    pass
