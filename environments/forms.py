from decimal import Decimal

from django import forms
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.models import Organization, SSHKey, User
from machines.models import Host, Region
from remotegpu.core.forms import StyledForm

from .choices import PlacementStrategy, PortRole
from .models import Image, Spec
from .selectors import image_prepull_hosts, spec_availability, spec_list
from .services.autostop import MAX_IDLE_MINUTES, MAX_RUNTIME_MINUTES
from .services.images import image_list_for_organization


def _parse_env(text: str) -> dict[str, str]:
    variables = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise forms.ValidationError(
                _("Line %(number)d: write NAME=value.") % {"number": number}
            )
        variables[name.strip()] = value
    return variables


def _parse_ports(text: str) -> list[dict]:
    ports = []
    for item in text.replace(",", " ").split():
        port, _sep, role = item.partition(":")
        if not port.isdigit():
            raise forms.ValidationError(_("%(item)s is not a port.") % {"item": item})
        role = role or PortRole.TCP
        if role not in PortRole.values:
            raise forms.ValidationError(_("Unknown port role %(role)s.") % {"role": role})
        ports.append({"port": int(port), "role": role})
    return ports


def max_runtime_hours_field(label) -> forms.DecimalField:
    return forms.DecimalField(
        label=label,
        required=False,
        min_value=Decimal("0.1"),
        max_value=Decimal(MAX_RUNTIME_MINUTES // 60),
        decimal_places=2,
    )


def idle_stop_minutes_field(label, help_text="") -> forms.IntegerField:
    return forms.IntegerField(
        label=label,
        required=False,
        min_value=10,
        max_value=MAX_IDLE_MINUTES,
        help_text=help_text,
    )


def hours_to_minutes(hours: Decimal | None) -> int | None:
    return round(hours * 60) if hours is not None else None


class EnvironmentCreateForm(forms.Form):
    name = forms.CharField(
        label=gettext_lazy("Name"),
        max_length=63,
        help_text=gettext_lazy("Lower-case letters, digits and hyphens."),
    )
    image = forms.ModelChoiceField(
        label=gettext_lazy("Image"), queryset=Image.objects.none(), required=False
    )
    image_reference = forms.CharField(
        label=gettext_lazy("Custom image reference"),
        max_length=300,
        required=False,
        help_text=gettext_lazy("Instead of a catalogue image (where your organisation may)."),
    )
    spec = forms.ModelChoiceField(label=gettext_lazy("GPU spec"), queryset=Spec.objects.none())
    region = forms.ModelChoiceField(
        label=gettext_lazy("Region"),
        queryset=Region.objects.all(),
        required=False,
        empty_label=gettext_lazy("Any region"),
    )
    env = forms.CharField(
        label=gettext_lazy("Environment variables"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "font-monospace"}),
        help_text=gettext_lazy("One NAME=value per line."),
    )
    ports = forms.CharField(
        label=gettext_lazy("Extra ports"),
        required=False,
        help_text=gettext_lazy("Container ports to publish, e.g. 8080:http 9000:tcp."),
    )
    ssh_keys = forms.ModelMultipleChoiceField(
        label=gettext_lazy("SSH keys to inject"),
        queryset=SSHKey.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    strategy = forms.ChoiceField(
        label=gettext_lazy("Placement"),
        choices=PlacementStrategy.choices,
        initial=PlacementStrategy.BINPACK,
    )
    max_runtime_hours = max_runtime_hours_field(gettext_lazy("Auto-stop each run after (hours)"))
    idle_stop_minutes = idle_stop_minutes_field(
        gettext_lazy("Auto-stop when its GPUs are idle for (minutes)"),
        help_text=gettext_lazy("Its GPUs under five per cent busy, no session open; empty: never."),
    )

    def auto_stop(self) -> dict:
        return {
            "max_runtime_minutes": hours_to_minutes(self.cleaned_data["max_runtime_hours"]),
            "idle_stop_minutes": self.cleaned_data["idle_stop_minutes"],
        }

    def __init__(self, *args, user: User, organization: Organization, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["image"].queryset = image_list_for_organization(organization)
        if not organization.custom_images_allowed:
            del self.fields["image_reference"]
        specs = list(spec_list())
        availability = spec_availability(specs)
        self.fields["spec"].queryset = spec_list()
        self.fields["spec"].label_from_instance = lambda spec: (
            _("%(name)s — %(vcpu)d vCPU, %(memory)d GiB — %(available)d available now")
            % {
                "name": spec.name,
                "vcpu": spec.vcpu,
                "memory": spec.memory_gib,
                "available": availability[spec.pk].total,
            }
        )
        self.fields["ssh_keys"].queryset = SSHKey.objects.filter(user=user)
        for name, field in self.fields.items():
            if name != "ssh_keys":
                field.widget.attrs.setdefault("class", "")
                field.widget.attrs["class"] += (
                    " form-select" if isinstance(field.widget, forms.Select) else " form-control"
                )

    def clean_env(self):
        return _parse_env(self.cleaned_data["env"])

    def clean_ports(self):
        return _parse_ports(self.cleaned_data["ports"])


class EnvironmentAutoStopForm(StyledForm):
    """Both fields each time: a blank one clears it."""

    stop_at = forms.DateTimeField(
        label=gettext_lazy("Stop at"),
        required=False,
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
    )
    max_runtime_hours = max_runtime_hours_field(gettext_lazy("Stop each run after (hours)"))
    idle_stop_minutes = idle_stop_minutes_field(gettext_lazy("Stop when idle for (minutes)"))
    idle_gpu_percent = forms.IntegerField(
        label=gettext_lazy("Idle below GPU utilisation (%)"),
        min_value=1,
        max_value=100,
        initial=5,
    )

    def auto_stop(self) -> dict:
        return {
            "stop_at": self.cleaned_data["stop_at"],
            "max_runtime_minutes": hours_to_minutes(self.cleaned_data["max_runtime_hours"]),
            "idle_stop_minutes": self.cleaned_data["idle_stop_minutes"],
            "idle_gpu_percent": self.cleaned_data["idle_gpu_percent"],
        }


class EnvironmentStartForm(forms.Form):
    without_gpu = forms.BooleanField(required=False)
    wait = forms.BooleanField(required=False)


class ImagePrepullForm(forms.Form):
    hosts = forms.ModelMultipleChoiceField(
        label=gettext_lazy("Hosts"),
        queryset=Host.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        help_text=gettext_lazy("The image is pulled onto each now; starts there never wait."),
    )

    def __init__(self, *args, image: Image, **kwargs):
        super().__init__(*args, **kwargs)
        self.image = image
        self.fields["hosts"].queryset = image_prepull_hosts()
        self.fields["hosts"].label_from_instance = self._host_label

    def _host_label(self, host: Host) -> str:
        holds = _("holds it") if self.image.reference in (host.images or []) else _("not yet")
        region = host.region.name if host.region else _("no region")
        return f"{host.name} ({region}, {host.get_status_display()}; {holds})"


class SpecEstimateForm(StyledForm):
    """What the specs cost for a number of hours, in a region (the estimate on the spec list)."""

    hours = forms.DecimalField(
        label=gettext_lazy("Hours"),
        min_value=Decimal("0.01"),
        max_value=Decimal(8760),
        decimal_places=2,
        initial=Decimal(1),
    )
    region = forms.ModelChoiceField(
        label=gettext_lazy("Region"),
        queryset=Region.objects.all(),
        required=False,
        to_field_name="slug",
        empty_label=gettext_lazy("Default prices"),
    )
