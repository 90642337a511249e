"""Operator pages of alerts and alert rules."""

from __future__ import annotations

from functools import cached_property

from django.shortcuts import get_object_or_404, render
from django.urls import reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from remotegpu.core.pages import (
    ScopedDetailView,
    ScopedListView,
    ServiceActionView,
    ServiceFormView,
)

from .. import selectors
from ..filters import AlertFilter
from ..forms.alerts import AlertRuleForm
from ..models import AlertRule
from ..services import alerts as alert_services
from .base import operator_required


class AlertPageMixin:
    operator_only = True

    def scoped_queryset(self):
        return selectors.alert_list()


class AlertListView(AlertPageMixin, ScopedListView):
    template_name = "machines/alert_list.html"
    filterset_class = AlertFilter


class AlertDetailView(AlertPageMixin, ScopedDetailView):
    template_name = "machines/alert_detail.html"
    context_object_name = "alert"


class AlertAcknowledgeView(AlertPageMixin, ServiceActionView):
    success_message = gettext_lazy("Alert acknowledged.")

    def perform(self, obj):
        return alert_services.alert_acknowledge(operator=self.request.user, alert=obj)

    def get_success_url(self, obj):
        """Back to the list the form was posted from (its ``next``) when that is ours."""
        target = self.request.POST.get("next", "")
        if url_has_allowed_host_and_scheme(
            target, allowed_hosts={self.request.get_host()}, require_https=self.request.is_secure()
        ):
            return target
        return alert_services.alert_url(obj)


@operator_required
def alert_rule_list(request):
    return render(request, "machines/alert_rule_list.html", {"rules": selectors.alert_rule_list()})


class AlertRuleCreateView(ServiceFormView):
    operator_only = True
    template_name = "machines/alert_rule_form.html"
    form_class = AlertRuleForm
    success_url = reverse_lazy("machines:alert_rule_list")

    def perform(self, form):
        return alert_services.alert_rule_create(operator=self.request.user, **form.cleaned_data)

    def get_success_message(self, cleaned_data):
        return _("Alert rule %(name)s created.") % {"name": self.result.name}


class AlertRuleEditView(AlertRuleCreateView):
    @cached_property
    def rule(self) -> AlertRule:
        return get_object_or_404(AlertRule, pk=self.kwargs["pk"])

    def get_initial(self):
        initial = {field: getattr(self.rule, field) for field in alert_services.RULE_FIELDS}
        initial.pop("webhook_secret")
        return initial

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "rule": self.rule}

    def perform(self, form):
        return alert_services.alert_rule_update(
            operator=self.request.user, rule=self.rule, **form.cleaned_data
        )

    def get_success_message(self, cleaned_data):
        return _("Alert rule %(name)s saved.") % {"name": self.result.name}


class AlertRuleEnabledView(ServiceActionView):
    operator_only = True
    success_url = reverse_lazy("machines:alert_rule_list")

    def scoped_queryset(self):
        return AlertRule.objects.all()

    def perform(self, obj):
        enabled = self.request.POST.get("enabled") == "1"
        return alert_services.alert_rule_set_enabled(
            operator=self.request.user, rule=obj, enabled=enabled
        )

    def get_success_message(self, obj):
        if self.result.enabled:
            text = _("Alert rule %(name)s enabled.")
        else:
            text = _("Alert rule %(name)s disabled; its open alerts were closed.")
        return text % {"name": self.result.name}
