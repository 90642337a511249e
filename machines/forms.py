from django import forms
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from remotegpu.core.forms import StyledForm, style_widgets

from .choices import AlertMetric, CommandKind, Comparison, HostStatus, Severity
from .models import Region

LABELS_HELP = _("key=value pairs separated by commas, e.g. “gpu=a100, zone=b”.")


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


class RegionForm(forms.ModelForm):
    class Meta:
        model = Region
        fields = ["name", "slug", "location", "description"]
        widgets = {"description": forms.Textarea(attrs={"rows": 2})}
        help_texts = {"slug": _("Short name used in URLs and the API, e.g. “eu-west”.")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        style_widgets(self)


class HostImportForm(StyledForm):
    file = forms.FileField(
        label=_("CSV file"),
        help_text=_(
            "Columns name, address, region, labels; UTF-8; at most 10,000 hosts. Labels are "
            "key=value pairs separated by “;” (or by “,” inside quotes)."
        ),
        widget=forms.FileInput(attrs={"accept": ".csv,text/csv"}),
    )


class AlertRuleForm(StyledForm):
    """The fields of a rule; the service checks them (and says which is wrong)."""

    name = forms.CharField(label=_("Name"), max_length=100)
    metric = forms.ChoiceField(label=_("Metric"), choices=AlertMetric.choices)
    comparison = forms.ChoiceField(
        label=_("Comparison"),
        choices=Comparison.choices,
        help_text=_("Not used by “Host offline”: its condition is the host's status."),
    )
    threshold = forms.FloatField(label=_("Threshold"), initial=0)
    for_duration = forms.IntegerField(
        label=_("For (seconds)"),
        min_value=0,
        max_value=7 * 24 * 3600,
        initial=0,
        help_text=_("How long the condition must hold before the alert fires; 0 fires at once."),
    )
    severity = forms.ChoiceField(
        label=_("Severity"), choices=Severity.choices, initial=Severity.WARNING
    )
    enabled = forms.BooleanField(label=_("Enabled"), required=False, initial=True)
    notify_email = forms.BooleanField(label=_("E-mail operators"), required=False, initial=True)
    webhook_url = forms.CharField(
        label=_("Webhook URL"),
        max_length=200,
        required=False,
        help_text=_("Optional: firing and resolved events are POSTed here as JSON."),
    )
    webhook_secret = forms.CharField(
        label=_("Webhook secret"),
        max_length=200,
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text=_(
            "Signs each payload: header X-RemoteGPU-Signature is sha256= and the hex "
            "HMAC-SHA256 of the body. At least 16 characters; leave blank to keep the current one."
        ),
    )
