import django_filters
from django import forms
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .choices import EntryKind
from .models import LedgerEntry

# The browser's own date picker; it submits YYYY-MM-DD whatever the page's language.
DATE = forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


class LedgerEntryFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(
        choices=EntryKind.choices, label=_("Kind"), empty_label=_("Any kind")
    )
    since = django_filters.DateFilter(
        field_name="created_at", lookup_expr="date__gte", label=_("From"), widget=DATE
    )
    until = django_filters.DateFilter(
        field_name="created_at", lookup_expr="date__lte", label=_("To"), widget=DATE
    )
    resource = django_filters.CharFilter(method="filter_resource", label=_("Resource"))

    class Meta:
        model = LedgerEntry
        fields = ["kind", "since", "until", "resource"]

    def filter_resource(self, queryset, name, value):
        """What was metered (its name, reference or GPU model) or the entry's description."""
        return queryset.filter(
            Q(meter__label__icontains=value)
            | Q(meter__reference__icontains=value)
            | Q(meter__gpu_model__icontains=value)
            | Q(description__icontains=value)
        )
