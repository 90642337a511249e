"""The Prometheus exposition at /metrics: behind a token, read from the database per scrape,
a constant number of queries, and valid per ``promtool check metrics``."""

from __future__ import annotations

import subprocess

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from machines.choices import AlertMetric, AlertStatus, GPUHealth, HostStatus, Severity
from machines.models import Alert, AlertRule
from remotegpu.core.testing import require_executable

from .factories import GIB, GPUFactory, HostFactory, RegionFactory

URL = "/metrics"
TOKEN = "scrape-secret-0123456789"


@pytest.fixture
def token(settings):
    settings.PROMETHEUS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def queue():
    """The Celery default queue in this test run's Redis database, emptied before and after."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete("celery")
    yield client
    client.delete("celery")
    client.close()


def _scrape(client, **headers):
    response = client.get(URL, headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert response.status_code == 200, response.content
    return response


def _samples(text: str) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` of an exposition."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def _labels(**labels) -> tuple:
    return tuple(sorted(labels.items()))


@pytest.fixture
def fleet(db):
    region = RegionFactory(slug="eu-west")
    online = HostFactory(
        name="gpu-01",
        region=region,
        cpu_percent=37.5,
        memory_used=128 * GIB,
        disk_used=1000 * GIB,
    )
    HostFactory(name="gpu-02", region=None, status=HostStatus.OFFLINE, connected=False)
    HostFactory(
        name="gpu-03",
        region=region,
        status=HostStatus.PENDING,
        connected=False,
        last_seen_at=None,
    )
    hot = GPUFactory(
        host=online,
        index=0,
        uuid="GPU-aaaa",
        model="NVIDIA H100 80GB HBM3",
        utilization=93.0,
        memory_used=70 * GIB,
        memory_total=80 * GIB,
        temperature=88.0,
        power_draw=650.5,
        power_limit=700.0,
        ecc_errors=3,
    )
    # Its driver gives memory but no utilisation, temperature, power or ECC (all NULL).
    GPUFactory(
        host=online, index=1, uuid="GPU-bbbb", model="NVIDIA H100 80GB HBM3", memory_used=GIB
    )
    GPUFactory(host=online, index=2, uuid="GPU-cccc", model="NVIDIA H100 80GB HBM3", health="lost")
    rule = AlertRule.objects.create(
        name="GPU too hot", metric=AlertMetric.GPU_TEMPERATURE, threshold=85
    )
    now = timezone.now()
    Alert.objects.create(
        rule=rule,
        host=online,
        gpu=hot,
        status=AlertStatus.FIRING,
        severity=Severity.CRITICAL,
        since=now,
    )
    disk_rule = AlertRule.objects.create(name="Disk", metric=AlertMetric.DISK_PERCENT)
    Alert.objects.create(
        rule=disk_rule,
        host=online,
        status=AlertStatus.RESOLVED,
        severity=Severity.WARNING,
        since=now,
    )
    return online


# Access ------------------------------------------------------------------------------------


def test_metrics_do_not_exist_without_a_token_configured(client, fleet, settings):
    settings.PROMETHEUS_TOKEN = ""
    assert client.get(URL).status_code == 404
    assert client.get(URL, headers={"Authorization": "Bearer "}).status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [None, "", f"Basic {TOKEN}", "Bearer", "Bearer wrong", f"Bearer {TOKEN}x", TOKEN],
)
def test_metrics_refuse_a_missing_or_wrong_token(client, fleet, token, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get(URL, headers=headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"gpu-01" not in response.content


def test_metrics_accept_the_token_and_nothing_but_get(client, fleet, token):
    response = _scrape(client)
    assert response["Content-Type"].startswith("text/plain")
    assert response["Cache-Control"].startswith("max-age=0")
    assert client.post(URL, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


def test_an_operator_session_is_not_a_token(client, fleet, token, operator):
    client.force_login(operator)
    assert client.get(URL).status_code == 401


# Content -----------------------------------------------------------------------------------


def test_metrics_report_hosts_gpus_alerts_and_queues(client, fleet, token, queue):
    queue.rpush("celery", "task-1", "task-2", "task-3")

    samples = _samples(_scrape(client).content.decode())

    assert samples["remotegpu_hosts"] == {
        _labels(status="pending"): 1,
        _labels(status="online"): 1,
        _labels(status="offline"): 1,
        _labels(status="maintenance"): 0,
        _labels(status="draining"): 0,
        _labels(status="retired"): 0,
    }
    assert samples["remotegpu_agent_connections"] == {(): 1}
    gpu01 = _labels(host="gpu-01", region="eu-west")
    gpu03 = _labels(host="gpu-03", region="eu-west")
    assert samples["remotegpu_host_connected"] == {
        gpu01: 1,
        _labels(host="gpu-02", region=""): 0,
        gpu03: 0,
    }
    assert samples["remotegpu_host_cpu_percent"] == {gpu01: 37.5}
    assert samples["remotegpu_host_memory_used_bytes"] == {gpu01: 128 * GIB}
    assert samples["remotegpu_host_memory_total_bytes"][gpu01] == 512 * GIB
    assert samples["remotegpu_host_disk_used_bytes"] == {gpu01: 1000 * GIB}
    assert samples["remotegpu_host_last_seen_timestamp_seconds"][gpu01] == pytest.approx(
        fleet.last_seen_at.timestamp()
    )
    assert gpu03 not in samples["remotegpu_host_last_seen_timestamp_seconds"]  # never seen

    assert samples["remotegpu_gpus"] == {
        _labels(model="NVIDIA H100 80GB HBM3", health=GPUHealth.OK): 2,
        _labels(model="NVIDIA H100 80GB HBM3", health=GPUHealth.LOST): 1,
    }
    hot = _labels(host="gpu-01", gpu="0", uuid="GPU-aaaa", model="NVIDIA H100 80GB HBM3")
    quiet = _labels(host="gpu-01", gpu="1", uuid="GPU-bbbb", model="NVIDIA H100 80GB HBM3")
    # The quiet GPU's unknown figures are left out, neither 0 nor "None".
    assert samples["remotegpu_gpu_utilization_percent"] == {hot: 93.0}
    assert samples["remotegpu_gpu_memory_used_bytes"] == {hot: 70 * GIB, quiet: GIB}
    assert samples["remotegpu_gpu_temperature_celsius"] == {hot: 88.0}
    assert samples["remotegpu_gpu_power_draw_watts"] == {hot: 650.5}
    assert samples["remotegpu_gpu_power_limit_watts"] == {hot: 700.0}
    assert samples["remotegpu_gpu_memory_total_bytes"] == {hot: 80 * GIB, quiet: 80 * GIB}
    # Lost GPUs are counted, but their stale figures are not exported.
    assert samples["remotegpu_gpu_ecc_errors_total"] == {hot: 3}

    assert samples["remotegpu_alerts_open"] == {
        _labels(severity="info"): 0,
        _labels(severity="warning"): 0,  # the resolved one is not open
        _labels(severity="critical"): 1,
    }
    assert samples["remotegpu_celery_broker_up"] == {(): 1}
    assert samples["remotegpu_celery_queue_length"] == {_labels(queue="celery"): 3}
    (duration,) = samples["remotegpu_scrape_duration_seconds"].values()
    assert 0 < duration < 10


def test_metrics_are_read_per_scrape(client, fleet, token):
    before = _samples(_scrape(client).content.decode())
    HostFactory(name="gpu-04", status=HostStatus.MAINTENANCE)
    after = _samples(_scrape(client).content.decode())
    assert before["remotegpu_hosts"][_labels(status="maintenance")] == 0
    assert after["remotegpu_hosts"][_labels(status="maintenance")] == 1
    assert after["remotegpu_agent_connections"] == {(): 2}


def test_metrics_survive_an_unreachable_redis(client, fleet, token, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    samples = _samples(_scrape(client).content.decode())
    assert samples["remotegpu_celery_broker_up"] == {(): 0}
    assert "remotegpu_celery_queue_length" not in samples
    assert samples["remotegpu_hosts"][_labels(status="online")] == 1


def test_metrics_speak_openmetrics_when_asked(client, fleet, token):
    response = _scrape(client, Accept="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


def test_metrics_cost_the_same_queries_whatever_the_fleet_size(
    db, client, token, django_assert_max_num_queries
):
    def build(count: int) -> None:
        for _ in range(count):
            GPUFactory(utilization=50.0, temperature=60.0, memory_used=GIB, power_draw=300.0)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            _scrape(client)
        return len(captured)

    build(5)
    small = queries()
    build(5)
    with django_assert_max_num_queries(small):
        samples = _samples(_scrape(client).content.decode())
    assert len(samples["remotegpu_gpu_temperature_celsius"]) == 10
    assert small <= 3  # hosts, GPUs, open alerts


def test_metrics_pass_promtool(client, fleet, token, queue, tmp_path):
    promtool = require_executable("promtool", "apt-get install prometheus")
    queue.rpush("celery", "task-1")
    exposition = _scrape(client).content
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not (result.stdout + result.stderr).strip(), "promtool reported lint problems"
