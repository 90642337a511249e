"""Forms of the host pages; ``LABELS_HELP`` is shared by every form that takes labels."""

from django import forms
from django.utils.translation import gettext_lazy as _

from remotegpu.core.forms import StyledForm

from ..choices import CommandKind, HostStatus

LABELS_HELP = _("key=value pairs separated by commas, e.g. “gpu=a100, zone=b”.")


class HostLabelsForm(StyledForm):
    labels = forms.CharField(label=_("Labels"), required=False, help_text=LABELS_HELP)


class HostStatusForm(StyledForm):
    status = forms.ChoiceField(
        choices=[
            (HostStatus.MAINTENANCE, _("Maintenance")),
            (HostStatus.DRAINING, _("Drain")),
            (HostStatus.ONLINE, _("Return to service")),
            (HostStatus.RETIRED, _("Retire")),
        ]
    )
    reason = forms.CharField(label=_("Reason"), max_length=200, required=False)


class HostCommandForm(StyledForm):
    kind = forms.ChoiceField(choices=CommandKind.choices)


class HostImportForm(StyledForm):
    file = forms.FileField(
        label=_("CSV file"),
        help_text=_(
            "Columns name, address, region, labels; UTF-8; at most 10,000 hosts. Labels are "
            "key=value pairs separated by “;” (or by “,” inside quotes)."
        ),
        widget=forms.FileInput(attrs={"accept": ".csv,text/csv"}),
    )
