import django_filters
from django.utils.translation import gettext_lazy as _

from ..choices import EntryKind, TopUpStatus
from ..models import LedgerEntry, TopUpRequest


class LedgerEntryFilter(django_filters.FilterSet):
    kind = django_filters.ChoiceFilter(choices=EntryKind.choices, label=_("Kind"))
    since = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="gte", label=_("From (inclusive)")
    )
    until = django_filters.IsoDateTimeFilter(
        field_name="created_at", lookup_expr="lt", label=_("To (exclusive)")
    )
    meter = django_filters.CharFilter(field_name="meter__reference", label=_("Meter reference"))

    class Meta:
        model = LedgerEntry
        fields = ["kind", "since", "until", "meter"]


class TopUpFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(choices=TopUpStatus.choices, label=_("Status"))
    organization = django_filters.CharFilter(
        field_name="wallet__organization__slug", label=_("Organisation")
    )

    class Meta:
        model = TopUpRequest
        fields = ["status", "organization"]
