from django import forms
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from remotegpu.core.forms import StyledForm

from ..choices import HostStatus
from ..models import Host

DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]


def _moment(label) -> forms.DateTimeField:
    return forms.DateTimeField(
        label=label,
        input_formats=DATETIME_FORMATS,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format=DATETIME_FORMATS[0]),
    )


class AllocationForm(StyledForm):
    """The service checks the rest (overlaps, runtime, other organisations' environments) and
    says which field is wrong."""

    host = forms.ModelChoiceField(
        queryset=Host.objects.exclude(status=HostStatus.RETIRED).order_by("name"),
        label=_("Host"),
    )
    organization = forms.ModelChoiceField(
        queryset=Organization.objects.filter(is_active=True).order_by("name"),
        label=_("Organisation"),
    )
    starts_at = _moment(_("Starts"))
    ends_at = _moment(_("Ends"))


class AllocationReclaimForm(StyledForm):
    reason = forms.CharField(label=_("Reason"), max_length=200)
