from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import Organization, SSHKey
from machines.models import Host, Region

from ..choices import PlacementStrategy, PortRole
from ..models import Environment, EnvironmentEvent, Image, RegistryCredential, Spec
from ..services.jupyter import jupyter_url


class PortSerializer(serializers.Serializer):
    port = serializers.IntegerField(min_value=1, max_value=65535)
    role = serializers.ChoiceField(choices=PortRole.choices, default=PortRole.TCP)
    name = serializers.CharField(max_length=50, required=False, allow_blank=True, default="")


class ImageSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Organization.objects.all(),
        allow_null=True,
        default=None,
        help_text=_("Empty: a public image."),
    )
    ports = PortSerializer(many=True, required=False)
    command = serializers.ListField(child=serializers.CharField(), required=False)
    env = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)

    class Meta:
        model = Image
        fields = [
            "id",
            "name",
            "reference",
            "description",
            "framework",
            "cuda_version",
            "command",
            "env",
            "ports",
            "organization",
            "is_active",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]


class ImagePrepullSerializer(serializers.Serializer):
    hosts = serializers.PrimaryKeyRelatedField(queryset=Host.objects.all(), many=True)


class SpecSerializer(serializers.ModelSerializer):
    regions = serializers.SlugRelatedField(slug_field="slug", many=True, read_only=True)
    available = serializers.SerializerMethodField(
        help_text=_("How many environments of this spec could be placed right now.")
    )
    available_by_region = serializers.SerializerMethodField()

    class Meta:
        model = Spec
        fields = [
            "id",
            "name",
            "description",
            "gpu_model",
            "gpu_count",
            "vcpu",
            "memory_gib",
            "disk_gib",
            "regions",
            "host_labels",
            "is_active",
            "available",
            "available_by_region",
        ]

    def _availability(self, spec):
        return self.context.get("availability", {}).get(spec.pk)

    def get_available(self, spec) -> int:
        availability = self._availability(spec)
        return availability.total if availability else 0

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "integer"}})
    def get_available_by_region(self, spec) -> dict:
        availability = self._availability(spec)
        return availability.by_region if availability else {}


class SpecBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Spec
        fields = ["id", "name", "gpu_model", "gpu_count", "vcpu", "memory_gib", "disk_gib"]


class AllocatedPortSerializer(serializers.Serializer):
    container_port = serializers.IntegerField()
    host_port = serializers.IntegerField()
    role = serializers.CharField()
    name = serializers.CharField()


class AssignedGPUSerializer(serializers.Serializer):
    uuid = serializers.CharField(source="gpu.uuid")
    index = serializers.IntegerField(source="gpu.index")
    model = serializers.CharField(source="gpu.model")


class EnvironmentSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    spec = SpecBriefSerializer(read_only=True)
    region = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    host = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    host_address = serializers.SerializerMethodField()
    ports = AllocatedPortSerializer(many=True, read_only=True)
    gpus = AssignedGPUSerializer(source="open_assignments", many=True, read_only=True)
    jupyter_url = serializers.SerializerMethodField(
        help_text=_("JupyterLab with its token, when its image publishes a Jupyter port.")
    )
    auto_stop_at = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text=_("When auto-stop stops this run (its stop time or its maximum run time)."),
    )

    class Meta:
        model = Environment
        fields = [
            "id",
            "name",
            "organization",
            "status",
            "status_reason",
            "status_message",
            "status_changed_at",
            "spec",
            "image",
            "image_reference",
            "command",
            "env",
            "region",
            "host",
            "host_address",
            "without_gpu",
            "gpus",
            "ports",
            "container_state",
            "progress",
            "created_at",
            "started_at",
            "stopped_at",
            "stop_at",
            "max_runtime_minutes",
            "idle_stop_minutes",
            "idle_gpu_percent",
            "auto_stop_at",
            "jupyter_url",
        ]

    def get_jupyter_url(self, environment) -> str:
        return jupyter_url(environment)

    def get_host_address(self, environment) -> str:
        host = environment.host
        return (host.address or host.hostname) if host is not None else ""


class EnvironmentAutoStopSerializer(serializers.Serializer):
    """Give a field to set it, null to clear it; a field left out stays as it is."""

    stop_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text=_("Stop it once at this time.")
    )
    max_runtime_minutes = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text=_("Stop each run after this many minutes (1 to 43200)."),
    )
    idle_stop_minutes = serializers.IntegerField(
        required=False,
        allow_null=True,
        help_text=_(
            "Stop it when its GPUs stay under idle_gpu_percent and no session is open for this "
            "many minutes (10 to 10080)."
        ),
    )
    idle_gpu_percent = serializers.IntegerField(
        required=False, help_text=_("GPU utilisation under which it counts as idle (1 to 100).")
    )


class EnvironmentCreateSerializer(EnvironmentAutoStopSerializer):
    name = serializers.CharField(max_length=63)
    organization = serializers.SlugRelatedField(
        slug_field="slug",
        queryset=Organization.objects.filter(is_active=True),
        required=False,
        help_text=_("Default: your current organisation."),
    )
    spec = serializers.PrimaryKeyRelatedField(queryset=Spec.objects.filter(is_active=True))
    image = serializers.PrimaryKeyRelatedField(
        queryset=Image.objects.filter(is_active=True), required=False, allow_null=True
    )
    image_reference = serializers.CharField(max_length=300, required=False, allow_blank=True)
    region = serializers.SlugRelatedField(
        slug_field="slug", queryset=Region.objects.all(), required=False, allow_null=True
    )
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=4096, trim_whitespace=False),
        required=False,
    )
    ports = PortSerializer(many=True, required=False)
    ssh_keys = serializers.PrimaryKeyRelatedField(
        queryset=SSHKey.objects.all(), many=True, required=False
    )
    command = serializers.ListField(
        child=serializers.CharField(trim_whitespace=False), required=False, allow_null=True
    )
    strategy = serializers.ChoiceField(
        choices=PlacementStrategy.choices, default=PlacementStrategy.BINPACK
    )


class EnvironmentStartSerializer(serializers.Serializer):
    without_gpu = serializers.BooleanField(
        default=False, help_text=_("Start on CPU only, with the same volume.")
    )
    wait = serializers.BooleanField(
        default=False,
        help_text=_("If its GPUs are taken, wait for them (pending) instead of answering 409."),
    )


class PublishedPortSerializer(serializers.Serializer):
    container_port = serializers.IntegerField()
    host_port = serializers.IntegerField()
    role = serializers.ChoiceField(choices=PortRole.choices)
    role_label = serializers.CharField()
    name = serializers.CharField()
    address = serializers.CharField(help_text=_("host:port"))
    url = serializers.CharField(help_text=_("For web roles (http, jupyter); empty otherwise."))


class SSHAccessSerializer(serializers.Serializer):
    user = serializers.CharField(help_text=_("The SSH user name: the environment's id."))
    port = serializers.IntegerField(help_text=_("The host's SSH gateway port."))
    command = serializers.CharField(help_text=_("The ssh command line."))
    config = serializers.CharField(help_text=_("A block for ~/.ssh/config."))
    host_key_fingerprint = serializers.CharField(
        help_text=_("The gateway's host key, as ssh-keygen -l prints it.")
    )
    known_hosts = serializers.CharField(
        help_text=_("A known_hosts line that pins the gateway's host key.")
    )


class ConnectionSerializer(serializers.Serializer):
    host = serializers.CharField(help_text=_("The host's address."))
    reachable = serializers.BooleanField(help_text=_("It runs: the addresses answer."))
    ssh = SSHAccessSerializer(
        allow_null=True, help_text=_("SSH through the host's gateway; null if it has none.")
    )
    ports = PublishedPortSerializer(many=True)
    jupyter_url = serializers.CharField(
        help_text=_("JupyterLab with its token, when its image publishes a Jupyter port.")
    )


class EnvironmentEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = EnvironmentEvent
        fields = ["created_at", "status", "message", "details"]


class EnvironmentLogsSerializer(serializers.Serializer):
    lines = serializers.ListField(child=serializers.CharField())


class RegistryCredentialSerializer(serializers.ModelSerializer):
    password = serializers.CharField(write_only=True, style={"input_type": "password"})

    class Meta:
        model = RegistryCredential
        fields = ["id", "registry", "username", "password", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]
