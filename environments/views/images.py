"""The image catalogue as customers see it, and operators' pre-pulls."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django.contrib import messages
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.translation import ngettext

from billing.services.wallets import CENT, currency
from remotegpu.core.pages import ScopedListView, ServiceFormView

from .. import selectors
from ..forms import ImagePrepullForm, SpecEstimateForm
from ..models import Image
from ..services.billing import specs_rates
from ..services.images import image_prepull


class ImageListView(ScopedListView):
    template_name = "environments/image_list.html"

    def scoped_queryset(self):
        return selectors.image_list_for_user(self.request.user)


class SpecListView(ScopedListView):
    template_name = "environments/spec_list.html"
    paginate_by = None

    def scoped_queryset(self):
        return selectors.spec_list(self.request.user)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        specs = list(context["object_list"])
        availability = selectors.spec_availability(specs)
        # The estimate: each spec's price per hour, and for how many hours in which region.
        form = SpecEstimateForm(self.request.GET or None)
        hours, region = Decimal(1), None
        if form.is_valid():
            hours, region = form.cleaned_data["hours"], form.cleaned_data["region"]
        rates = specs_rates(specs, region=region)
        context["estimate_form"] = form
        context["hours"] = hours
        context["currency"] = currency()
        context["specs"] = [
            (
                spec,
                availability[spec.pk],
                rates[spec.pk],
                (rates[spec.pk] * hours).quantize(CENT, ROUND_HALF_UP),
            )
            for spec in specs
        ]
        return context


class ImagePrepullView(ServiceFormView):
    """Operators pull an image onto chosen hosts ahead of need, and watch the pulls."""

    operator_only = True
    template_name = "environments/image_prepull.html"
    partial_template_name = "environments/partials/prepull_table.html"
    form_class = ImagePrepullForm

    def dispatch(self, request, *args, **kwargs):
        self.image = get_object_or_404(Image.objects.all(), pk=kwargs["pk"])
        return super().dispatch(request, *args, **kwargs)

    def get_template_names(self):
        if getattr(self.request, "htmx", False) and self.request.method == "GET":
            return [self.partial_template_name]
        return [self.template_name]

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "image": self.image}

    def get_context_data(self, **kwargs):
        pulls = selectors.image_prepull_list(self.image)
        return {
            **super().get_context_data(**kwargs),
            "image": self.image,
            "pulls": pulls,
            "pulling": any(pull.command.is_open for pull in pulls),
        }

    def perform(self, form):
        commands = image_prepull(
            operator=self.request.user, image=self.image, hosts=list(form.cleaned_data["hosts"])
        )
        messages.success(
            self.request,
            ngettext("Pulling onto %(count)d host.", "Pulling onto %(count)d hosts.", len(commands))
            % {"count": len(commands)},
        )
        return commands

    def get_success_url(self):
        return reverse("environments:image_prepull", args=[self.image.pk])
