"""Operator pages of alerts and alert rules."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from remotegpu.core.errors import ApplicationError
from remotegpu.core.forms import style_widgets
from remotegpu.core.portal import apply_error_to_form, service_messages

from .. import selectors
from ..filters import AlertFilter
from ..forms.alerts import AlertRuleForm
from ..models import Alert, AlertRule
from ..services import alerts as alert_services
from .base import operator_required, paginate


def _back(request, default: str) -> str:
    """Where a form posted from a list returns to: its ``next`` when it is ours."""
    target = request.POST.get("next", "")
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default


@operator_required
def alert_list(request):
    alert_filter = AlertFilter(request.GET or None, queryset=selectors.alert_list())
    style_widgets(alert_filter.form)
    page = paginate(request, alert_filter.qs)
    return render(request, "machines/alert_list.html", {"filter": alert_filter, "page": page})


@operator_required
def alert_detail(request, pk):
    alert = get_object_or_404(selectors.alert_list(), pk=pk)
    return render(request, "machines/alert_detail.html", {"alert": alert})


@operator_required
@require_POST
def alert_acknowledge(request, pk):
    alert = get_object_or_404(Alert, pk=pk)
    with service_messages(request):
        alert_services.alert_acknowledge(operator=request.user, alert=alert)
        messages.success(request, _("Alert acknowledged."))
    return redirect(_back(request, alert_services.alert_url(alert)))


@operator_required
def alert_rule_list(request):
    return render(request, "machines/alert_rule_list.html", {"rules": selectors.alert_rule_list()})


def _rule_form_page(request, form, rule=None):
    return render(request, "machines/alert_rule_form.html", {"form": form, "rule": rule})


@operator_required
def alert_rule_create(request):
    form = AlertRuleForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            rule = alert_services.alert_rule_create(operator=request.user, **form.cleaned_data)
        except ApplicationError as error:
            apply_error_to_form(form, error)
        else:
            messages.success(request, _("Alert rule %(name)s created.") % {"name": rule.name})
            return redirect("machines:alert_rule_list")
    return _rule_form_page(request, form)


@operator_required
def alert_rule_edit(request, pk):
    rule = get_object_or_404(AlertRule, pk=pk)
    initial = {field: getattr(rule, field) for field in alert_services.RULE_FIELDS}
    initial.pop("webhook_secret")
    form = AlertRuleForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            rule = alert_services.alert_rule_update(
                operator=request.user, rule=rule, **form.cleaned_data
            )
        except ApplicationError as error:
            apply_error_to_form(form, error)
        else:
            messages.success(request, _("Alert rule %(name)s saved.") % {"name": rule.name})
            return redirect("machines:alert_rule_list")
    return _rule_form_page(request, form, rule)


@operator_required
@require_POST
def alert_rule_enabled(request, pk):
    rule = get_object_or_404(AlertRule, pk=pk)
    enabled = request.POST.get("enabled") == "1"
    with service_messages(request):
        rule = alert_services.alert_rule_set_enabled(
            operator=request.user, rule=rule, enabled=enabled
        )
        if enabled:
            text = _("Alert rule %(name)s enabled.")
        else:
            text = _("Alert rule %(name)s disabled; its open alerts were closed.")
        messages.success(request, text % {"name": rule.name})
    return redirect("machines:alert_rule_list")
