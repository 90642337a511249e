"""Base classes every app's API builds on."""

from rest_framework import mixins, viewsets


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


class CatalogueViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    ScopedGenericViewSet,
):
    """Rows operators curate and everyone reads (regions, images). Creates and updates go
    through ``save(user, instance)``, a service that validates and audits; the answer is the
    row as a read shows it."""

    http_method_names = ["get", "post", "patch", "head", "options"]

    def save(self, user, instance):
        raise NotImplementedError

    def perform_create(self, serializer):
        model = self.queryset.model
        saved = self.save(self.request.user, model(**serializer.validated_data))
        serializer.instance = self.get_queryset().get(pk=saved.pk)

    def perform_update(self, serializer):
        instance = serializer.instance
        for field, value in serializer.validated_data.items():
            setattr(instance, field, value)
        self.save(self.request.user, instance)
        serializer.instance = self.get_queryset().get(pk=instance.pk)
