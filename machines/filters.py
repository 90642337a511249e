import django_filters
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .choices import AlertStatus, AllocationStatus, HostStatus, Severity
from .models import Alert, AlertRule, Allocation, Host, Region


class HostFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="search", label=_("Name or address"))
    status = django_filters.ChoiceFilter(
        choices=HostStatus.choices, label=_("Status"), empty_label=_("Any status")
    )
    region = django_filters.ModelChoiceFilter(
        queryset=Region.objects.order_by("name"),
        to_field_name="slug",
        label=_("Region"),
        empty_label=_("Any region"),
    )

    class Meta:
        model = Host
        fields = ["q", "status", "region"]

    def search(self, queryset, name, value):
        return queryset.filter(
            Q(name__icontains=value) | Q(address__icontains=value) | Q(hostname__icontains=value)
        )


class AlertFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=AlertStatus.choices, label=_("Status"), empty_label=_("Any status")
    )
    severity = django_filters.ChoiceFilter(
        choices=Severity.choices, label=_("Severity"), empty_label=_("Any severity")
    )
    rule = django_filters.ModelChoiceFilter(
        queryset=AlertRule.objects.order_by("name"), label=_("Rule"), empty_label=_("Any rule")
    )
    host = django_filters.CharFilter(
        field_name="host__name", lookup_expr="icontains", label=_("Host")
    )

    class Meta:
        model = Alert
        fields = ["status", "severity", "rule", "host"]


class AllocationFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=AllocationStatus.choices, label=_("Status"), empty_label=_("Any status")
    )
    q = django_filters.CharFilter(method="search", label=_("Host or organisation"))

    class Meta:
        model = Allocation
        fields = ["status", "q"]

    def search(self, queryset, name, value):
        return queryset.filter(
            Q(host__name__icontains=value)
            | Q(organization__name__icontains=value)
            | Q(organization__slug__icontains=value)
            | Q(tenant_user=value)
        )
