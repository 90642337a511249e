from django import forms
from django.utils.translation import gettext_lazy as _

from remotegpu.core.forms import StyledForm

from .choices import Role


class OrganizationForm(StyledForm):
    name = forms.CharField(label=_("Name"), max_length=100)
    slug = forms.SlugField(
        label=_("Slug"),
        max_length=60,
        required=False,
        help_text=_("Used in URLs and the API. Leave empty to derive it from the name."),
    )


class OrganizationRenameForm(StyledForm):
    name = forms.CharField(label=_("Name"), max_length=100)


class InvitationForm(StyledForm):
    email = forms.EmailField(label=_("E-mail address"))
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices, initial=Role.MEMBER)


class RoleForm(StyledForm):
    role = forms.ChoiceField(label=_("Role"), choices=Role.choices)


class APITokenForm(StyledForm):
    name = forms.CharField(label=_("Name"), max_length=100)
    write_enabled = forms.BooleanField(
        label=_("Allow changes (read-write)"), required=False, initial=False
    )
    expires_at = forms.DateTimeField(
        label=_("Expires"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text=_("Leave empty for a token that does not expire."),
    )
    allowed_ips = forms.CharField(
        label=_("Allowed IP networks"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("One CIDR network per line, e.g. 10.0.0.0/8. Empty allows any address."),
    )

    def clean_allowed_ips(self):
        value = self.cleaned_data["allowed_ips"]
        return [line.strip() for line in value.replace(",", "\n").splitlines() if line.strip()]


class SSHKeyForm(StyledForm):
    name = forms.CharField(label=_("Name"), max_length=100, required=False)
    public_key = forms.CharField(
        label=_("Public key"),
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "ssh-ed25519 AAAA... you@laptop"}),
        max_length=16384,
    )


class ProfileForm(StyledForm):
    name = forms.CharField(label=_("Name"), max_length=150, required=False)
