"""Whole-machine allocations: the operators' list, "Allocate" form, page and reclaim action, and
the customers' "My machines" (their organisation's allocations with how to connect)."""

from __future__ import annotations

from datetime import timedelta

from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from remotegpu.core.errors import ValidationError
from remotegpu.core.pages import (
    ScopedDetailView,
    ScopedListView,
    ServiceActionView,
    ServiceFormView,
)

from .. import selectors
from ..choices import AllocationStatus
from ..filters import AllocationFilter
from ..forms.allocations import AllocationForm, AllocationReclaimForm
from ..services import allocations as allocation_services

DEFAULT_LEASE = timedelta(days=7)
# What a reclaim report's keys (agent/remotegpu_agent/tenants.py) mean, for its readers.
REPORT_LABELS = {
    "containers": gettext_lazy("Containers"),
    "volumes": gettext_lazy("Volumes"),
    "processes": gettext_lazy("Processes"),
    "keys": gettext_lazy("SSH keys"),
    "temporary_files": gettext_lazy("Temporary files"),
    "crontab": gettext_lazy("Crontab"),
    "account": gettext_lazy("Account"),
    "group": gettext_lazy("Group"),
    "home": gettext_lazy("Home folder"),
    "data": gettext_lazy("Data folder"),
    "docker": gettext_lazy("Docker"),
}


def _report_value(value) -> str:
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if isinstance(value, list):
        return ", ".join(str(item) for item in value) or "—"
    return str(value) if value not in (None, "") else "—"


def report_rows(section) -> list[tuple[str, str]]:
    """A report section ({kind: names, count or flag}) as (label, text) rows."""
    if not isinstance(section, dict):
        return []
    return [
        (str(REPORT_LABELS.get(key, key)), _report_value(value))
        for key, value in sorted(section.items())
    ]


class AllocationDetailMixin:
    template_name = "machines/allocation_detail.html"
    context_object_name = "allocation"
    operator_view = False

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["operator_view"] = self.operator_view
        context["connection"] = allocation_services.allocation_connection(self.object)
        report = self.object.reclaim_report
        context["report_removed"] = report_rows(report.get("removed"))
        context["report_remaining"] = report_rows(report.get("remaining"))
        if self.operator_view:
            context["reclaim_form"] = AllocationReclaimForm()
        return context


# Operators ---------------------------------------------------------------------------------


class OperatorAllocationMixin:
    operator_only = True

    def scoped_queryset(self):
        return selectors.allocation_list()


class AllocationListView(OperatorAllocationMixin, ScopedListView):
    template_name = "machines/allocation_list.html"
    filterset_class = AllocationFilter


class AllocationDetailView(OperatorAllocationMixin, AllocationDetailMixin, ScopedDetailView):
    operator_view = True


class AllocationCreateView(ServiceFormView):
    operator_only = True
    template_name = "machines/allocation_form.html"
    form_class = AllocationForm

    def get_initial(self):
        now = timezone.localtime().replace(second=0, microsecond=0)
        initial = {"starts_at": now, "ends_at": now + DEFAULT_LEASE}
        host = self.request.GET.get("host", "")
        if host.isdigit():
            initial["host"] = int(host)
        return initial

    def perform(self, form):
        return allocation_services.allocation_create(actor=self.request.user, **form.cleaned_data)

    def get_success_url(self):
        return reverse("machines:allocation_detail", args=[self.result.pk])

    def get_success_message(self, cleaned_data):
        return _("%(host)s is allocated to %(organization)s.") % {
            "host": self.result.host.name,
            "organization": self.result.organization.name,
        }


class AllocationReclaimView(OperatorAllocationMixin, ServiceActionView):
    def perform(self, obj):
        form = AllocationReclaimForm(self.request.POST)
        if not form.is_valid():
            raise ValidationError.for_field("reason", _("Say why the machine is reclaimed."))
        return allocation_services.allocation_reclaim(
            actor=self.request.user, allocation=obj, reason=form.cleaned_data["reason"]
        )

    def get_success_url(self, obj):
        return reverse("machines:allocation_detail", args=[obj.pk])

    def get_success_message(self, obj):
        if self.result.status == AllocationStatus.RECLAIMED:
            return _("The allocation ended before it started.")
        return _("Reclaiming %(host)s: its agent removes the tenant's things and reports.") % {
            "host": obj.host.name
        }


# Customers ---------------------------------------------------------------------------------


class MyMachineListView(ScopedListView):
    """The allocations of the organisation the user works in."""

    template_name = "machines/my_machine_list.html"

    def scoped_queryset(self):
        organization = self.request.organization
        queryset = selectors.allocation_list_for_user(self.request.user)
        return queryset.filter(organization=organization) if organization else queryset.none()


class MyMachineDetailView(AllocationDetailMixin, ScopedDetailView):
    def scoped_queryset(self):
        return selectors.allocation_list_for_user(self.request.user)
