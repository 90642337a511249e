"""The alert rules every fleet starts with. Idempotent by name: a rule an operator has already
created, renamed into place or changed is left as it is."""

from django.db import migrations

DEFAULT_ALERT_RULES = [
    {
        "name": "GPU temperature above 85 °C",
        "metric": "gpu_temperature",
        "comparison": "gt",
        "threshold": 85,
        "for_duration": 5 * 60,
        "severity": "critical",
    },
    {
        "name": "GPU memory above 95 %",
        "metric": "gpu_memory_percent",
        "comparison": "gt",
        "threshold": 95,
        "for_duration": 10 * 60,
        "severity": "warning",
    },
    {
        "name": "Disk above 90 %",
        "metric": "disk_percent",
        "comparison": "gt",
        "threshold": 90,
        "for_duration": 0,
        "severity": "warning",
    },
    {
        "name": "Host offline",
        "metric": "host_offline",
        "comparison": "gt",
        "threshold": 0,
        "for_duration": 0,
        "severity": "critical",
    },
]


def create_default_alert_rules(apps, schema_editor):
    AlertRule = apps.get_model("machines", "AlertRule")
    for rule in DEFAULT_ALERT_RULES:
        fields = {key: value for key, value in rule.items() if key != "name"}
        AlertRule.objects.get_or_create(name=rule["name"], defaults=fields)


class Migration(migrations.Migration):
    dependencies = [
        ("machines", "0003_alerts_onboarding"),
    ]

    # Going back leaves the rules: operators may have tuned them, and the table goes with 0003.
    operations = [
        migrations.RunPython(create_default_alert_rules, migrations.RunPython.noop),
    ]
