"""Environments: the organisation's list, create, the page with its logs, and its actions."""

from __future__ import annotations

from decimal import Decimal

from django.contrib import messages
from django.shortcuts import redirect
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from billing.services.wallets import currency
from billing.templatetags.billing_format import money
from remotegpu.core.errors import ValidationError
from remotegpu.core.pages import (
    ScopedDetailView,
    ScopedListView,
    ServiceActionView,
    ServiceFormView,
)

from .. import selectors
from ..choices import EnvironmentStatus
from ..filters import EnvironmentFilter
from ..forms import EnvironmentAutoStopForm, EnvironmentCreateForm, EnvironmentStartForm
from ..services import autostop, lifecycle
from ..services.access import environment_may_open
from ..services.billing import specs_rates_by_region
from ..services.connection import environment_connection


class OrganizationEnvironmentsMixin:
    """The environments of the organisation the user works in."""

    def scoped_queryset(self):
        queryset = selectors.environment_list_for_user(self.request.user, include_deleted=True)
        organization = self.request.organization
        return queryset.filter(organization=organization) if organization else queryset.none()


class EnvironmentListView(OrganizationEnvironmentsMixin, ScopedListView):
    template_name = "environments/environment_list.html"
    partial_template_name = "environments/partials/environment_table.html"
    filterset_class = EnvironmentFilter

    def get_queryset(self):
        queryset = super().get_queryset()
        if not self.request.GET.get("status"):
            queryset = queryset.exclude(status=EnvironmentStatus.DELETED)
        return queryset


class OperatorEnvironmentListView(ScopedListView):
    """Every organisation's environments (operators)."""

    operator_only = True
    template_name = "environments/operator_environment_list.html"
    partial_template_name = "environments/partials/environment_table.html"
    filterset_class = EnvironmentFilter

    def scoped_queryset(self):
        return selectors.environment_list_for_user(self.request.user, include_deleted=True)

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), "operator_view": True}


class EnvironmentDetailView(ScopedDetailView):
    template_name = "environments/environment_detail.html"
    context_object_name = "environment"

    def scoped_queryset(self):
        return selectors.environment_list_for_user(self.request.user, include_deleted=True)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["events"] = selectors.environment_event_list(self.object)
        context["connection"] = environment_connection(self.object)
        context["auto_stop_form"] = EnvironmentAutoStopForm(
            initial={
                "stop_at": timezone.localtime(self.object.stop_at) if self.object.stop_at else None,
                "max_runtime_hours": Decimal(self.object.max_runtime_minutes) / 60
                if self.object.max_runtime_minutes
                else None,
                "idle_stop_minutes": self.object.idle_stop_minutes,
                "idle_gpu_percent": self.object.idle_gpu_percent,
            }
        )
        return context


class EnvironmentCreateView(ServiceFormView):
    template_name = "environments/environment_form.html"
    form_class = EnvironmentCreateForm
    success_message = gettext_lazy("Environment created: it is being provisioned.")

    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated and request.organization is None:
            messages.info(request, _("Environments belong to an organisation: create one first."))
            return redirect("accounts:organization_create")
        return super().dispatch(request, *args, **kwargs)

    def get_form_kwargs(self):
        return {
            **super().get_form_kwargs(),
            "user": self.request.user,
            "organization": self.request.organization,
        }

    def get_form(self, form_class=None):
        """Each spec says its price per hour: in the region chosen, or, for any region, the
        range of the regions' prices (where the environment is placed decides)."""
        form = super().get_form(form_class)
        field = form.fields["spec"]
        specs = list(field.queryset)
        by_region = specs_rates_by_region(specs)
        code = currency()

        def text(low, high=None):
            if high is None or high == low:
                return _("≈ %(price)s per hour") % {"price": money(low, code)}
            return _("≈ %(low)s to %(high)s per hour, by region") % {
                "low": money(low, code),
                "high": money(high, code),
            }

        anywhere = {}
        for spec in specs:
            rates = [rates[spec.pk] for rates in by_region.values()]
            anywhere[str(spec.pk)] = text(min(rates), max(rates))
        self.spec_prices = {
            "": anywhere,
            **{
                str(region.pk): {str(pk): text(rate) for pk, rate in rates.items()}
                for region, rates in by_region.items()
                if region is not None
            },
        }
        describe = field.label_from_instance
        field.label_from_instance = lambda spec: " — ".join(
            filter(None, [describe(spec), anywhere.get(str(spec.pk))])
        )
        return form

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        form = context["form"]
        region = str(form["region"].value() or "")
        chosen = str(form["spec"].value() or "")
        return {
            **context,
            "spec_prices": self.spec_prices,
            "spec_price": self.spec_prices.get(region, {}).get(chosen, ""),
        }

    def perform(self, form):
        data = dict(form.cleaned_data)
        return lifecycle.environment_create(
            user=self.request.user,
            organization=self.request.organization,
            name=data["name"],
            spec=data["spec"],
            image=data["image"],
            image_reference=data.get("image_reference", ""),
            region=data["region"],
            env=data["env"],
            ports=data["ports"],
            ssh_keys=list(data["ssh_keys"]),
            strategy=data["strategy"],
            **form.auto_stop(),
        )

    def get_success_url(self):
        return self.result.get_absolute_url()


class EnvironmentActionView(ServiceActionView):
    def scoped_queryset(self):
        return selectors.environment_list_for_user(self.request.user, include_deleted=True)


class EnvironmentStartView(EnvironmentActionView):
    success_message = gettext_lazy("Starting.")

    def perform(self, obj):
        form = EnvironmentStartForm(self.request.POST)
        form.is_valid()
        lifecycle.environment_start(user=self.request.user, environment=obj, **form.cleaned_data)


class EnvironmentStopView(EnvironmentActionView):
    success_message = gettext_lazy("Stopping: /workspace is kept.")

    def perform(self, obj):
        lifecycle.environment_stop(user=self.request.user, environment=obj)


class EnvironmentAutoStopView(EnvironmentActionView):
    success_message = gettext_lazy("Auto-stop saved.")

    def perform(self, obj):
        form = EnvironmentAutoStopForm(self.request.POST)
        if not form.is_valid():
            raise ValidationError(
                " ".join(str(e) for errors in form.errors.values() for e in errors)
            )
        autostop.environment_set_auto_stop(
            user=self.request.user, environment=obj, **form.auto_stop()
        )


class EnvironmentRestartView(EnvironmentActionView):
    success_message = gettext_lazy("Restarting.")

    def perform(self, obj):
        lifecycle.environment_restart(user=self.request.user, environment=obj)


class EnvironmentDeleteView(EnvironmentActionView):
    success_message = gettext_lazy("Deleting its container and volume.")

    def perform(self, obj):
        if self.request.POST.get("confirm") != obj.name:
            raise ValidationError(_("Type the environment's name to confirm the deletion."))
        lifecycle.environment_delete(user=self.request.user, environment=obj)

    def get_success_url(self, obj):
        if obj.status == EnvironmentStatus.DELETING or obj.status == EnvironmentStatus.DELETED:
            return reverse("environments:environment_list")
        return obj.get_absolute_url()


class EnvironmentTerminalView(ScopedDetailView):
    """A web terminal (xterm.js) on the environment; the socket checks who may open it."""

    template_name = "environments/environment_terminal.html"
    context_object_name = "environment"

    def scoped_queryset(self):
        return selectors.environment_list_for_user(self.request.user)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["may_open"] = environment_may_open(self.object, self.request.user)
        return context
