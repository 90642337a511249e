from django import forms
from django.utils.translation import gettext_lazy as _

from remotegpu.core.forms import StyledForm

from ..models import Region
from .hosts import LABELS_HELP


class OnboardingForm(StyledForm):
    name = forms.CharField(
        label=_("Host name"), max_length=100, help_text=_("The name the host gets in the fleet.")
    )
    address = forms.CharField(
        label=_("Address"), max_length=255, help_text=_("Host name or IP address to reach by SSH.")
    )
    port = forms.IntegerField(label=_("SSH port"), min_value=1, max_value=65535, initial=22)
    username = forms.CharField(label=_("User"), max_length=100, initial="root")
    password = forms.CharField(
        label=_("Password"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}, render_value=False),
        help_text=_("A password or a private key. Kept encrypted until the job ends, then wiped."),
    )
    private_key = forms.CharField(
        label=_("Private key"),
        required=False,
        widget=forms.Textarea(
            attrs={
                "rows": 4,
                "class": "font-monospace",
                "spellcheck": "false",
                "autocomplete": "off",
                "placeholder": "-----BEGIN OPENSSH PRIVATE KEY-----",
            }
        ),
        help_text=_("OpenSSH or PEM text (RSA, ECDSA or Ed25519)."),
    )
    passphrase = forms.CharField(
        label=_("Key passphrase"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "off"}, render_value=False),
    )
    region = forms.ModelChoiceField(
        label=_("Region"),
        queryset=Region.objects.order_by("name"),
        required=False,
        empty_label=_("No region"),
    )
    labels = forms.CharField(label=_("Labels"), required=False, help_text=LABELS_HELP)


class OnboardingConfirmForm(StyledForm):
    fingerprint = forms.CharField(widget=forms.HiddenInput)
    server_url = forms.CharField(
        label=_("Server address for the agent"),
        max_length=300,
        help_text=_("The agent on the new host reaches this server here."),
    )
