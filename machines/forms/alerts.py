from django import forms
from django.utils.translation import gettext_lazy as _

from remotegpu.core.forms import StyledForm

from ..choices import AlertMetric, Comparison, Severity


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
