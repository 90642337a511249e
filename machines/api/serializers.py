from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import Organization

from ..choices import CommandKind, GPUHealth
from ..models import GPU, AgentCommand, Alert, AlertRule, Allocation, Host, JoinToken, Region
from ..services.allocations import allocation_connection


class RegionSerializer(serializers.ModelSerializer):
    host_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Region
        fields = ["id", "name", "slug", "location", "description", "host_count", "created_at"]
        read_only_fields = ["id", "host_count", "created_at"]


class GPUSerializer(serializers.ModelSerializer):
    host = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = GPU
        fields = [
            "id",
            "host",
            "uuid",
            "index",
            "model",
            "memory_total",
            "driver_version",
            "cuda_version",
            "compute_capability",
            "health",
            "utilization",
            "memory_used",
            "temperature",
            "power_draw",
            "power_limit",
            "ecc_errors",
            "updated_at",
        ]
        read_only_fields = fields


class HostSerializer(serializers.ModelSerializer):
    region = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    gpu_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "address",
            "region",
            "labels",
            "status",
            "status_reason",
            "status_changed_at",
            "heartbeat_interval",
            "agent_heartbeat_interval",
            "hostname",
            "cpu_model",
            "cpu_cores",
            "memory_total",
            "disk_total",
            "os",
            "kernel",
            "docker_version",
            "agent_version",
            "gpu_backend",
            "connected",
            "last_seen_at",
            "cpu_percent",
            "memory_used",
            "disk_used",
            "gpu_count",
            "created_at",
        ]
        read_only_fields = fields


class HostDetailSerializer(HostSerializer):
    gpus = GPUSerializer(many=True, read_only=True)

    class Meta(HostSerializer.Meta):
        fields = [*HostSerializer.Meta.fields, "gpus", "containers"]
        read_only_fields = fields


class HostLabelsSerializer(serializers.Serializer):
    labels = serializers.DictField(child=serializers.CharField(max_length=100, allow_blank=True))


class HostStatusSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class CredentialSerializer(serializers.Serializer):
    credential = serializers.CharField(
        help_text=_("The new host credential. It is shown only in this response.")
    )


class CommandCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=CommandKind.choices)


class AgentCommandSerializer(serializers.ModelSerializer):
    host = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = AgentCommand
        fields = [
            "id",
            "host",
            "kind",
            "payload",
            "status",
            "deadline",
            "attempts",
            "sent_at",
            "acked_at",
            "finished_at",
            "result",
            "error",
            "created_at",
        ]
        read_only_fields = fields


class JoinTokenSerializer(serializers.ModelSerializer):
    region = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    is_usable = serializers.BooleanField(read_only=True)

    class Meta:
        model = JoinToken
        fields = [
            "id",
            "name",
            "region",
            "labels",
            "expires_at",
            "max_uses",
            "uses",
            "revoked_at",
            "is_usable",
            "created_at",
        ]
        read_only_fields = fields


class JoinTokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    region = serializers.SlugRelatedField(
        slug_field="slug", queryset=Region.objects.all(), required=False, allow_null=True
    )
    labels = serializers.DictField(
        child=serializers.CharField(max_length=100, allow_blank=True), required=False, default=dict
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    max_uses = serializers.IntegerField(min_value=1, max_value=10000, default=1)


class JoinTokenCreatedSerializer(JoinTokenSerializer):
    token = serializers.CharField(help_text=_("The join token. It is shown only here."))
    join_command = serializers.CharField(help_text=_("The command to run on the new host."))

    class Meta(JoinTokenSerializer.Meta):
        fields = [*JoinTokenSerializer.Meta.fields, "token", "join_command"]
        read_only_fields = fields


class HostFactsSerializer(serializers.Serializer):
    hostname = serializers.CharField(max_length=255, required=False, allow_blank=True)
    cpu_model = serializers.CharField(max_length=200, required=False, allow_blank=True)
    cpu_cores = serializers.IntegerField(min_value=0, required=False)
    memory_total = serializers.IntegerField(min_value=0, required=False)
    disk_total = serializers.IntegerField(min_value=0, required=False)
    os = serializers.CharField(max_length=200, required=False, allow_blank=True)
    kernel = serializers.CharField(max_length=200, required=False, allow_blank=True)
    docker_version = serializers.CharField(max_length=50, required=False, allow_blank=True)
    agent_version = serializers.CharField(max_length=50, required=False, allow_blank=True)
    gpu_backend = serializers.CharField(max_length=20, required=False, allow_blank=True)


class AgentJoinSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=200)
    name = serializers.CharField(max_length=100)
    facts = HostFactsSerializer(required=False)


class AgentJoinedSerializer(serializers.Serializer):
    host_id = serializers.IntegerField()
    host_name = serializers.CharField()
    credential = serializers.CharField()
    websocket_url = serializers.CharField()
    heartbeat_interval = serializers.IntegerField()


class MetricsQuerySerializer(serializers.Serializer):
    range = serializers.ChoiceField(
        choices=["1h", "6h", "24h", "7d"],
        default="1h",
        help_text=_("How far back: 1h, 6h, 24h or 7d, in 120 buckets."),
    )


class HostSeriesSerializer(serializers.Serializer):
    t = serializers.ListField(
        child=serializers.IntegerField(), help_text=_("Bucket starts, epoch seconds.")
    )
    cpu = serializers.ListField(child=serializers.FloatField(allow_null=True))
    memory = serializers.ListField(
        child=serializers.FloatField(allow_null=True), help_text=_("Memory used, %.")
    )


class GPUSeriesSerializer(serializers.Serializer):
    uuid = serializers.CharField()
    index = serializers.IntegerField()
    model = serializers.CharField()
    memory_total = serializers.IntegerField(help_text=_("Bytes."))
    t = serializers.ListField(
        child=serializers.IntegerField(), help_text=_("Bucket starts, epoch seconds.")
    )
    utilization = serializers.ListField(child=serializers.FloatField(allow_null=True))
    memory_used = serializers.ListField(child=serializers.IntegerField(), help_text=_("Bytes."))
    temperature = serializers.ListField(child=serializers.FloatField(allow_null=True))
    power_draw = serializers.ListField(child=serializers.FloatField(allow_null=True))


class HostMetricsSerializer(serializers.Serializer):
    range = serializers.CharField()
    step = serializers.IntegerField(help_text=_("Bucket width in seconds."))
    host = HostSeriesSerializer()
    gpus = GPUSeriesSerializer(many=True)


class FleetMetricsSerializer(serializers.Serializer):
    range = serializers.CharField()
    step = serializers.IntegerField(help_text=_("Bucket width in seconds."))
    t = serializers.ListField(
        child=serializers.IntegerField(), help_text=_("Bucket starts, epoch seconds.")
    )
    utilization = serializers.ListField(
        child=serializers.FloatField(allow_null=True),
        help_text=_("Average GPU utilisation across the fleet, %."),
    )
    gpus = serializers.ListField(
        child=serializers.IntegerField(), help_text=_("GPUs that reported in the bucket.")
    )


class HostImportSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text=_("CSV with the columns name, address, region, labels (UTF-8, ≤ 10,000 rows).")
    )


class ImportedHostSerializer(serializers.Serializer):
    """One imported host (``{"host", "token", "join_command"}``)."""

    id = serializers.IntegerField(source="host.pk")
    name = serializers.CharField(source="host.name")
    address = serializers.CharField(source="host.address", allow_null=True)
    region = serializers.CharField(source="host.region.slug", allow_null=True)
    labels = serializers.DictField(source="host.labels", child=serializers.CharField())
    status = serializers.CharField(source="host.status")
    token = serializers.CharField(help_text=_("Its single-use join token, shown once."))
    join_command = serializers.CharField(help_text=_("The command to run on the server."))


class HostImportResultSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    hosts = ImportedHostSerializer(many=True)


class AlertRuleSerializer(serializers.ModelSerializer):
    """A rule as operators read and write it; the secret is write-only."""

    webhook_secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        max_length=200,
        help_text=_(
            "Signs each webhook payload (X-RemoteGPU-Signature: sha256=<hex HMAC-SHA256 of "
            "the body>). At least 16 characters; never shown again. Omit or leave blank on "
            "update to keep the current one."
        ),
    )
    webhook_secret_set = serializers.SerializerMethodField()
    open_alert_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = AlertRule
        fields = [
            "id",
            "name",
            "metric",
            "comparison",
            "threshold",
            "for_duration",
            "severity",
            "enabled",
            "notify_email",
            "webhook_url",
            "webhook_secret",
            "webhook_secret_set",
            "open_alert_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "open_alert_count", "created_at", "updated_at"]
        # Uniqueness and the other business rules are the service's; it answers by field.
        extra_kwargs = {"name": {"validators": []}}

    def get_webhook_secret_set(self, rule) -> bool:
        return bool(rule.webhook_secret)


class AlertSerializer(serializers.ModelSerializer):
    rule_name = serializers.CharField(source="rule.name", read_only=True)
    metric = serializers.CharField(source="rule.metric", read_only=True)
    host_name = serializers.CharField(source="host.name", read_only=True)
    gpu_uuid = serializers.CharField(source="gpu.uuid", read_only=True, allow_null=True)
    gpu_index = serializers.IntegerField(source="gpu.index", read_only=True, allow_null=True)
    acknowledged_by = serializers.SlugRelatedField(
        slug_field="email", read_only=True, allow_null=True
    )

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "rule_name",
            "metric",
            "host",
            "host_name",
            "gpu",
            "gpu_uuid",
            "gpu_index",
            "status",
            "severity",
            "value",
            "message",
            "since",
            "fired_at",
            "acknowledged_at",
            "acknowledged_by",
            "resolved_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


# Whole-machine allocations -----------------------------------------------------------------


class AllocationHostSerializer(serializers.ModelSerializer):
    region = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)

    class Meta:
        model = Host
        fields = ["id", "name", "address", "region", "cpu_model", "cpu_cores", "memory_total"]
        read_only_fields = fields


class AllocationGPUSerializer(serializers.ModelSerializer):
    class Meta:
        model = GPU
        fields = ["index", "uuid", "model", "memory_total", "health"]
        read_only_fields = fields


class AllocationConnectionSerializer(serializers.Serializer):
    available = serializers.BooleanField(
        help_text=_("The allocation is active and the host's SSH gateway serves.")
    )
    user = serializers.CharField(help_text=_("The tenant's account on the host."))
    address = serializers.CharField()
    port = serializers.IntegerField(
        help_text=_("The SSH gateway's port; 0 while it does not serve.")
    )
    host_key_fingerprint = serializers.CharField()
    ssh_command = serializers.CharField()
    ssh_config = serializers.CharField(help_text=_("A block for ~/.ssh/config."))


class AllocationSerializer(serializers.ModelSerializer):
    host = AllocationHostSerializer(read_only=True)
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    gpus = serializers.SerializerMethodField()
    connection = serializers.SerializerMethodField()

    class Meta:
        model = Allocation
        fields = [
            "id",
            "host",
            "organization",
            "starts_at",
            "ends_at",
            "status",
            "status_message",
            "tenant_user",
            "gpus",
            "connection",
            "activated_at",
            "reclaim_reason",
            "reclaim_requested_at",
            "reclaim_report",
            "reclaimed_at",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(AllocationGPUSerializer(many=True))
    def get_gpus(self, allocation):
        gpus = getattr(allocation.host, "gpu_list", None)
        if gpus is None:
            gpus = allocation.host.gpus.exclude(health=GPUHealth.LOST).order_by("index", "uuid")
        return AllocationGPUSerializer(gpus, many=True).data

    @extend_schema_field(AllocationConnectionSerializer)
    def get_connection(self, allocation):
        return AllocationConnectionSerializer(allocation_connection(allocation)).data


class AllocationCreateSerializer(serializers.Serializer):
    host = serializers.PrimaryKeyRelatedField(queryset=Host.objects.all())
    organization = serializers.SlugRelatedField(
        slug_field="slug", queryset=Organization.objects.all()
    )
    starts_at = serializers.DateTimeField(help_text=_("Now or later; it is activated then."))
    ends_at = serializers.DateTimeField(help_text=_("It is reclaimed then."))


class AllocationReclaimSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=200)
