import django_filters
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .choices import EnvironmentStatus
from .models import Environment


class EnvironmentFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="search", label=_("Search"))
    status = django_filters.ChoiceFilter(choices=EnvironmentStatus.choices, label=_("Status"))

    class Meta:
        model = Environment
        fields = ["q", "status"]

    def search(self, queryset, name, value):
        return queryset.filter(
            Q(name__icontains=value)
            | Q(image_reference__icontains=value)
            | Q(host__name__icontains=value)
            | Q(organization__name__icontains=value)
        )
