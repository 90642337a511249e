"""Operator pages of the hosts: the fleet overview, the host list and a host's page with its
actions, and the batch import."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_POST

from remotegpu.core.errors import ApplicationError, ValidationError
from remotegpu.core.pages import ScopedDetailView, ScopedListView, ServiceActionView
from remotegpu.core.portal import apply_error_to_form

from .. import selectors
from ..choices import CommandKind, HostStatus
from ..filters import HostFilter
from ..forms.hosts import HostCommandForm, HostImportForm, HostLabelsForm, HostStatusForm
from ..links import join_command
from ..models import Host
from ..services import commands as command_services
from ..services import hosts as host_services
from ..services import imports as import_services
from ..services import join as join_services
from .base import operator_required

RECENT_COMMANDS = 10
METRIC_RANGES = list(selectors.METRIC_RANGES)
# How often the charts fetch fresh figures, in seconds: ``?refresh=`` (a wall display, a test)
# within these bounds, else as often as the host reports (the fleet page: every 15 s).
CHART_REFRESH_MIN, CHART_REFRESH_MAX = 1, 300
FLEET_CHART_REFRESH = 15


def _chart_refresh_seconds(request, default: float) -> int:
    try:
        wanted = int(request.GET.get("refresh", default))
    except ValueError:
        wanted = default
    return min(max(wanted, CHART_REFRESH_MIN), CHART_REFRESH_MAX)


# Fleet overview ----------------------------------------------------------------------------


@operator_required
def fleet_overview(request):
    hosts = selectors.fleet_summary()["hosts"]
    models = selectors.gpu_figures_by_model()
    gpus = {
        key: sum(row[key] for row in models)
        for key in ("total", "healthy", "degraded", "lost", "allocated", "free")
    }
    context = {
        "host_total": hosts["total"],
        "host_statuses": [
            {"value": value, "label": label, "count": hosts[value]}
            for value, label in HostStatus.choices
        ],
        "gpus": gpus,
        "gpu_models": models,
        "host_allocation": selectors.host_allocation_counts(),
        "recently_offline": selectors.host_list_recently_offline(),
        "metric_ranges": METRIC_RANGES,
        "chart_refresh_seconds": _chart_refresh_seconds(request, FLEET_CHART_REFRESH),
    }
    return render(request, "machines/fleet_overview.html", context)


# Hosts -------------------------------------------------------------------------------------


class HostListView(ScopedListView):
    operator_only = True
    template_name = "machines/host_list.html"
    filterset_class = HostFilter

    def scoped_queryset(self):
        return selectors.host_list_base()

    def paginate_queryset(self, queryset, page_size):
        # Paginate the bare hosts (cheap even far into 10,000 of them), then annotate only the
        # page's rows: PostgreSQL would otherwise compute every skipped row's GPU figures.
        paginator, page, rows, is_paginated = super().paginate_queryset(
            queryset.only("pk"), page_size
        )
        page.object_list = list(
            selectors.host_list_with_figures().filter(pk__in=[host.pk for host in rows])
        )
        return paginator, page, page.object_list, is_paginated


def _status_actions(host: Host) -> list[tuple[str, str, str]]:
    """The operator states ``host`` can move to now: (status, label, button style). The service
    has the last word; this only hides buttons that would be refused."""
    current = host.status
    if current == HostStatus.RETIRED:
        return []
    actions = []
    if current != HostStatus.MAINTENANCE:
        actions.append((HostStatus.MAINTENANCE, _("Maintenance"), "outline-warning"))
    if current not in (HostStatus.DRAINING, HostStatus.PENDING):
        actions.append((HostStatus.DRAINING, _("Drain"), "outline-warning"))
    if current in (HostStatus.MAINTENANCE, HostStatus.DRAINING):
        actions.append((HostStatus.ONLINE, _("Return to service"), "outline-success"))
    actions.append((HostStatus.RETIRED, _("Retire"), "outline-danger"))
    return actions


class HostPageMixin:
    operator_only = True

    def scoped_queryset(self):
        return selectors.host_list()


class HostDetailView(HostPageMixin, ScopedDetailView):
    template_name = "machines/host_detail.html"
    context_object_name = "host"

    def get_context_data(self, **kwargs):
        host = self.object
        commands = list(selectors.command_list().filter(host=host)[:RECENT_COMMANDS])
        for command in commands:
            command.result_text = (
                json.dumps(command.result, indent=2, sort_keys=True) if command.result else ""
            )
        kwargs.setdefault("labels_form", HostLabelsForm(initial={"labels": host.labels_text}))
        return {
            **super().get_context_data(**kwargs),
            "gpus": selectors.gpu_list().filter(host=host),
            "credentials": selectors.host_credential_list(host),
            "commands": commands,
            "command_kinds": CommandKind.choices,
            "status_actions": _status_actions(host),
            "metrics_url": reverse("api:host-metrics", args=[host.pk]),
            "metric_ranges": METRIC_RANGES,
            "chart_refresh_seconds": _chart_refresh_seconds(
                self.request, host.effective_heartbeat_interval
            ),
        }


class HostLabelsView(HostDetailView):
    """The labels form of the host's page: refused labels show that page again, with errors."""

    http_method_names = ["post"]

    def post(self, request, *args, **kwargs):
        self.object = host = self.get_object()
        form = HostLabelsForm(request.POST)
        if form.is_valid():
            try:
                host_services.host_set_labels(
                    operator=request.user, host=host, labels=form.cleaned_data["labels"]
                )
            except ApplicationError as error:
                apply_error_to_form(form, error)
            else:
                messages.success(request, _("Labels saved."))
                return redirect("machines:host_detail", pk=host.pk)
        return self.render_to_response(self.get_context_data(labels_form=form))


class HostActionView(HostPageMixin, ServiceActionView):
    """A button of the host's page: it acts, then shows that page again."""

    def get_success_url(self, obj):
        return reverse("machines:host_detail", args=[obj.pk])


class HostStatusView(HostActionView):
    def perform(self, obj):
        form = HostStatusForm(self.request.POST)
        if not form.is_valid():
            raise ValidationError(_("Choose a status operators can set."))
        return host_services.host_set_status(
            operator=self.request.user,
            host=obj,
            status=form.cleaned_data["status"],
            reason=form.cleaned_data["reason"],
        )

    def get_success_message(self, obj):
        host = self.result
        return _("Host %(name)s is now %(status)s.") % {
            "name": host.name,
            "status": host.get_status_display(),
        }


class HostCommandView(HostActionView):
    def perform(self, obj):
        form = HostCommandForm(self.request.POST)
        if not form.is_valid():
            raise ValidationError(_("Unknown command."))
        return command_services.command_create(
            host=obj, kind=form.cleaned_data["kind"], requested_by=self.request.user
        )

    def get_success_message(self, obj):
        if obj.connected:
            text = _("%(command)s sent to %(name)s.")
        else:
            text = _("%(command)s queued: %(name)s receives it when its agent connects.")
        return text % {"command": self.result.get_kind_display(), "name": obj}


class HostCredentialRevokeView(HostActionView):
    def perform(self, obj):
        return join_services.credential_revoke(operator=self.request.user, host=obj)

    def get_success_message(self, obj):
        return ngettext(
            "%(count)d credential revoked; the agent of %(name)s was disconnected.",
            "%(count)d credentials revoked; the agent of %(name)s was disconnected.",
            self.result,
        ) % {"count": self.result, "name": obj.name}


@operator_required
@require_POST
def host_credential_rotate(request, pk):
    """A POST answered with a page, not a redirect: the new credential is shown this once."""
    host = get_object_or_404(selectors.host_list(), pk=pk)
    try:
        credential = join_services.credential_rotate(operator=request.user, host=host)
    except ApplicationError as error:
        messages.error(request, str(error.message))
        return redirect("machines:host_detail", pk=host.pk)
    return render(
        request, "machines/credential_rotated.html", {"host": host, "credential": credential}
    )


# Batch import ------------------------------------------------------------------------------


@operator_required
def host_import(request):
    """Upload a CSV of hosts: all imported with their join commands, or every error by line."""
    form = HostImportForm(request.POST or None, request.FILES or None)
    context = {"form": form, "max_rows": import_services.MAX_ROWS}
    if request.method == "POST" and form.is_valid():
        try:
            result = import_services.hosts_import_csv(
                request.user, form.cleaned_data["file"].read(import_services.MAX_BYTES + 1)
            )
        except ApplicationError as error:
            message = str(error.message)
            context["import_error"] = message
            context["line_errors"] = [
                line for line in error.fields.get("file", []) if line != message
            ]
        else:
            imported = [
                {"host": item.host, "join_command": join_command(request, item.token)}
                for item in result.hosts
            ]
            return render(request, "machines/host_import_done.html", {"imported": imported})
    return render(request, "machines/host_import.html", context)


@operator_required
@require_GET
def host_import_template(request):
    response = HttpResponse(import_services.TEMPLATE_CSV, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="hosts-template.csv"'
    return response
