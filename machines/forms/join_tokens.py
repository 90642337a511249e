from django import forms
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from remotegpu.core.forms import StyledForm

from ..models import Region
from .hosts import LABELS_HELP


class JoinTokenForm(StyledForm):
    name = forms.CharField(label=_("Name"), max_length=100)
    region = forms.ModelChoiceField(
        label=_("Region"),
        queryset=Region.objects.order_by("name"),
        required=False,
        empty_label=_("No region"),
    )
    labels = forms.CharField(
        label=_("Labels"),
        required=False,
        help_text=format_lazy(
            "{} {}", _("Applied to every host that joins with this token."), LABELS_HELP
        ),
    )
    expires_in_hours = forms.IntegerField(
        label=_("Expires in (hours)"), min_value=1, max_value=24 * 365, initial=24
    )
    max_uses = forms.IntegerField(
        label=_("Maximum uses"),
        min_value=1,
        max_value=10000,
        initial=1,
        help_text=_("How many hosts may join with it."),
    )
