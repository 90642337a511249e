import django_filters
from django import forms
from django.utils.translation import gettext_lazy as _

from .choices import AuditAction
from .models import AuditEvent, Notification

# The browser's own date picker; it submits YYYY-MM-DD whatever the page's language.
DATE = forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")


class AuditEventFilter(django_filters.FilterSet):
    action = django_filters.ChoiceFilter(
        choices=AuditAction.choices, label=_("Action"), empty_label=_("Any action")
    )
    actor = django_filters.CharFilter(
        field_name="actor_email", lookup_expr="icontains", label=_("Actor")
    )
    organization = django_filters.CharFilter(
        field_name="organization__slug", label=_("Organisation")
    )
    since = django_filters.DateFilter(
        field_name="created_at", lookup_expr="date__gte", label=_("From"), widget=DATE
    )
    until = django_filters.DateFilter(
        field_name="created_at", lookup_expr="date__lte", label=_("To"), widget=DATE
    )

    class Meta:
        model = AuditEvent
        fields = ["action", "actor", "organization", "since", "until"]


class NotificationFilter(django_filters.FilterSet):
    unread = django_filters.BooleanFilter(
        field_name="read_at", lookup_expr="isnull", label=_("Unread only")
    )

    class Meta:
        model = Notification
        fields = ["unread", "level"]
