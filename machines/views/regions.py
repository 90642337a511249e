"""Operator page of regions: the list, and a form to add one."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _

from .. import selectors
from ..forms.regions import RegionForm
from ..services.regions import region_save
from .base import operator_required


@operator_required
def region_list(request):
    form = RegionForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        region = region_save(operator=request.user, region=form.save(commit=False))
        messages.success(request, _("Region %(name)s created.") % {"name": region.name})
        return redirect("machines:region_list")
    return render(
        request, "machines/region_list.html", {"form": form, "regions": selectors.region_list()}
    )
