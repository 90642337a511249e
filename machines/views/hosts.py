"""Operator pages of the hosts: the fleet overview, the host list and a host's page with its
actions, and the batch import."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_POST

from remotegpu.core.errors import ApplicationError
from remotegpu.core.forms import style_widgets
from remotegpu.core.portal import apply_error_to_form, service_messages

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
from .base import operator_required, paginate

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


@operator_required
def host_list(request):
    # Paginate the bare hosts (cheap even far into 10,000 of them), then annotate only the
    # page's rows: PostgreSQL would otherwise compute every skipped row's GPU figures.
    host_filter = HostFilter(request.GET or None, queryset=selectors.host_list_base())
    style_widgets(host_filter.form)
    page = paginate(request, host_filter.qs.only("pk"))
    page.object_list = list(
        selectors.host_list_with_figures().filter(pk__in=[host.pk for host in page.object_list])
    )
    return render(request, "machines/host_list.html", {"filter": host_filter, "page": page})


def _host(pk) -> Host:
    host = selectors.host_list().filter(pk=pk).first()
    if host is None:
        raise Http404
    return host


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


def _render_host(request, host: Host, *, labels_form=None):
    commands = list(selectors.command_list().filter(host=host)[:RECENT_COMMANDS])
    for command in commands:
        command.result_text = (
            json.dumps(command.result, indent=2, sort_keys=True) if command.result else ""
        )
    context = {
        "host": host,
        "gpus": selectors.gpu_list().filter(host=host),
        "credentials": selectors.host_credential_list(host),
        "commands": commands,
        "command_kinds": CommandKind.choices,
        "status_actions": _status_actions(host),
        "labels_form": labels_form or HostLabelsForm(initial={"labels": host.labels_text}),
        "metrics_url": reverse("api:host-metrics", args=[host.pk]),
        "metric_ranges": METRIC_RANGES,
        "chart_refresh_seconds": _chart_refresh_seconds(request, host.effective_heartbeat_interval),
    }
    return render(request, "machines/host_detail.html", context)


@operator_required
def host_detail(request, pk):
    return _render_host(request, _host(pk))


@operator_required
@require_POST
def host_labels(request, pk):
    host = _host(pk)
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
    return _render_host(request, host, labels_form=form)


@operator_required
@require_POST
def host_status(request, pk):
    host = _host(pk)
    form = HostStatusForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose a status operators can set."))
        return redirect("machines:host_detail", pk=host.pk)
    with service_messages(request):
        host = host_services.host_set_status(
            operator=request.user,
            host=host,
            status=form.cleaned_data["status"],
            reason=form.cleaned_data["reason"],
        )
        messages.success(
            request,
            _("Host %(name)s is now %(status)s.")
            % {"name": host.name, "status": host.get_status_display()},
        )
    return redirect("machines:host_detail", pk=host.pk)


@operator_required
@require_POST
def host_command(request, pk):
    host = _host(pk)
    form = HostCommandForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Unknown command."))
        return redirect("machines:host_detail", pk=host.pk)
    with service_messages(request):
        command = command_services.command_create(
            host=host, kind=form.cleaned_data["kind"], requested_by=request.user
        )
        if host.connected:
            text = _("%(command)s sent to %(name)s.")
        else:
            text = _("%(command)s queued: %(name)s receives it when its agent connects.")
        messages.success(request, text % {"command": command.get_kind_display(), "name": host})
    return redirect("machines:host_detail", pk=host.pk)


@operator_required
@require_POST
def host_credential_revoke(request, pk):
    host = _host(pk)
    with service_messages(request):
        count = join_services.credential_revoke(operator=request.user, host=host)
        messages.success(
            request,
            ngettext(
                "%(count)d credential revoked; the agent of %(name)s was disconnected.",
                "%(count)d credentials revoked; the agent of %(name)s was disconnected.",
                count,
            )
            % {"count": count, "name": host.name},
        )
    return redirect("machines:host_detail", pk=host.pk)


@operator_required
@require_POST
def host_credential_rotate(request, pk):
    host = _host(pk)
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
