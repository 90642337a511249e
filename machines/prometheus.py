"""Prometheus exposition of the fleet at ``/metrics``, behind a bearer token.

The figures are read from the database (and Redis) at every scrape rather than kept in
process-global counters: several web processes serve the site, and each would otherwise expose
only what it happened to see. A scrape costs the same few queries whatever the fleet's size.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import Counter

import redis
from django.conf import settings
from django.db.models import Count
from django.http import Http404, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from .choices import OPEN_ALERT_STATES, GPUHealth, HostStatus, Severity
from .models import GPU, Alert, Host

logger = logging.getLogger(__name__)

HOST_LABELS = ["host", "region"]
GPU_LABELS = ["host", "gpu", "uuid", "model"]
REDIS_TIMEOUT = 2  # seconds: a slow Redis must not hold the scrape past Prometheus's timeout


def celery_queue_names() -> list[str]:
    """The Celery queues to watch: the default one and any named in the task routes."""
    names = {getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery")}
    routes = getattr(settings, "CELERY_TASK_ROUTES", None) or {}
    if isinstance(routes, dict):
        names.update(
            route["queue"]
            for route in routes.values()
            if isinstance(route, dict) and "queue" in route
        )
    return sorted(names)


def celery_queue_lengths() -> dict[str, int] | None:
    """Messages waiting in each queue (the Redis list named after it); None when Redis fails."""
    names = celery_queue_names()
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    try:
        pipeline = client.pipeline(transaction=False)
        for name in names:
            pipeline.llen(name)
        return dict(zip(names, pipeline.execute(), strict=True))
    except redis.RedisError:
        logger.warning("metrics: cannot read the Celery queue lengths from Redis", exc_info=True)
        return None
    finally:
        client.close()


class FleetCollector:
    """Hosts, GPUs, agent connections, open alerts and Celery queues: three queries and one
    Redis round trip per scrape."""

    def collect(self):
        started = time.perf_counter()
        yield from self._hosts()
        yield from self._gpus()
        yield from self._alerts()
        yield from self._queues()
        duration = GaugeMetricFamily(
            "remotegpu_scrape_duration_seconds", "Time this scrape took to collect its figures."
        )
        duration.add_metric([], time.perf_counter() - started)
        yield duration

    def _hosts(self):
        rows = Host.objects.order_by("name").values_list(
            "name",
            "region__slug",
            "status",
            "connected",
            "last_seen_at",
            "cpu_percent",
            "memory_used",
            "memory_total",
            "disk_used",
            "disk_total",
        )
        by_status = Counter()
        connected = GaugeMetricFamily(
            "remotegpu_host_connected",
            "1 when the host's agent holds its WebSocket open, else 0.",
            labels=HOST_LABELS,
        )
        last_seen = GaugeMetricFamily(
            "remotegpu_host_last_seen_timestamp_seconds",
            "When the host's agent was last heard from (Unix time).",
            labels=HOST_LABELS,
        )
        cpu = GaugeMetricFamily(
            "remotegpu_host_cpu_percent", "CPU in use at the latest heartbeat.", labels=HOST_LABELS
        )
        memory_used = GaugeMetricFamily(
            "remotegpu_host_memory_used_bytes",
            "Memory in use at the latest heartbeat.",
            labels=HOST_LABELS,
        )
        memory_total = GaugeMetricFamily(
            "remotegpu_host_memory_total_bytes", "Memory of the host.", labels=HOST_LABELS
        )
        disk_used = GaugeMetricFamily(
            "remotegpu_host_disk_used_bytes",
            "Disk in use at the latest heartbeat.",
            labels=HOST_LABELS,
        )
        disk_total = GaugeMetricFamily(
            "remotegpu_host_disk_total_bytes", "Disk of the host.", labels=HOST_LABELS
        )
        agents = 0
        for (
            name,
            region,
            status,
            is_connected,
            seen_at,
            cpu_percent,
            mem_used,
            mem_total,
            dsk_used,
            dsk_total,
        ) in rows:
            labels = [name, region or ""]
            by_status[status] += 1
            agents += is_connected
            connected.add_metric(labels, int(is_connected))
            if seen_at is not None:
                last_seen.add_metric(labels, seen_at.timestamp())
            if cpu_percent is not None:
                cpu.add_metric(labels, cpu_percent)
            if mem_used is not None:
                memory_used.add_metric(labels, mem_used)
            if mem_total:
                memory_total.add_metric(labels, mem_total)
            if dsk_used is not None:
                disk_used.add_metric(labels, dsk_used)
            if dsk_total:
                disk_total.add_metric(labels, dsk_total)
        hosts = GaugeMetricFamily("remotegpu_hosts", "Hosts by status.", labels=["status"])
        for status in HostStatus.values:
            hosts.add_metric([status], by_status[status])
        connections = GaugeMetricFamily(
            "remotegpu_agent_connections", "Agents connected to the server now."
        )
        connections.add_metric([], agents)
        yield from (hosts, connections, connected, last_seen, cpu)
        yield from (memory_used, memory_total, disk_used, disk_total)

    def _gpus(self):
        rows = GPU.objects.order_by("host__name", "index").values_list(
            "host__name",
            "index",
            "uuid",
            "model",
            "health",
            "utilization",
            "memory_used",
            "memory_total",
            "temperature",
            "power_draw",
            "power_limit",
            "ecc_errors",
        )
        by_model = Counter()
        families = {
            "utilization": GaugeMetricFamily(
                "remotegpu_gpu_utilization_percent",
                "GPU utilisation at the latest heartbeat.",
                labels=GPU_LABELS,
            ),
            "memory_used": GaugeMetricFamily(
                "remotegpu_gpu_memory_used_bytes",
                "GPU memory in use at the latest heartbeat.",
                labels=GPU_LABELS,
            ),
            "memory_total": GaugeMetricFamily(
                "remotegpu_gpu_memory_total_bytes", "Memory of the GPU.", labels=GPU_LABELS
            ),
            "temperature": GaugeMetricFamily(
                "remotegpu_gpu_temperature_celsius",
                "GPU temperature at the latest heartbeat.",
                labels=GPU_LABELS,
            ),
            "power_draw": GaugeMetricFamily(
                "remotegpu_gpu_power_draw_watts",
                "GPU power draw at the latest heartbeat.",
                labels=GPU_LABELS,
            ),
            "power_limit": GaugeMetricFamily(
                "remotegpu_gpu_power_limit_watts", "GPU power limit.", labels=GPU_LABELS
            ),
        }
        ecc = CounterMetricFamily(
            "remotegpu_gpu_ecc_errors",
            "ECC errors the GPU reported (NVML's aggregate count).",
            labels=GPU_LABELS,
        )
        for row in rows:
            host, index, uuid, model, health, *figures, ecc_errors = row
            by_model[(model, health)] += 1
            if health == GPUHealth.LOST:
                continue  # its last figures are stale: the host no longer reports this GPU
            labels = [host, str(index), uuid, model]
            # None: no heartbeat yet, or a figure the GPU or driver cannot give. No sample
            # at all, rather than an invented 0.
            for family, value in zip(families.values(), figures, strict=True):
                if value is not None:
                    family.add_metric(labels, value)
            if ecc_errors is not None:
                ecc.add_metric(labels, ecc_errors)
        gpus = GaugeMetricFamily(
            "remotegpu_gpus", "GPUs by model and health.", labels=["model", "health"]
        )
        for (model, health), count in sorted(by_model.items()):
            gpus.add_metric([model, health], count)
        yield gpus
        yield from families.values()
        yield ecc

    def _alerts(self):
        counts = dict(
            Alert.objects.filter(status__in=OPEN_ALERT_STATES)
            .values("severity")
            .annotate(count=Count("id"))
            .values_list("severity", "count")
        )
        alerts = GaugeMetricFamily(
            "remotegpu_alerts_open",
            "Alerts pending, firing or acknowledged, by severity.",
            labels=["severity"],
        )
        for severity in Severity.values:
            alerts.add_metric([severity], counts.get(severity, 0))
        yield alerts

    def _queues(self):
        lengths = celery_queue_lengths()
        up = GaugeMetricFamily(
            "remotegpu_celery_broker_up", "1 when the Celery broker (Redis) answered, else 0."
        )
        up.add_metric([], int(lengths is not None))
        yield up
        queues = GaugeMetricFamily(
            "remotegpu_celery_queue_length", "Tasks waiting in each Celery queue.", labels=["queue"]
        )
        for name, length in (lengths or {}).items():
            queues.add_metric([name], length)
        yield queues


def _authorized(request, token: str) -> bool:
    scheme, _, provided = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        provided.strip().encode(), token.encode()
    )


@never_cache
@require_GET
def metrics(request):
    """The exposition Prometheus scrapes: 404 when ``PROMETHEUS_TOKEN`` is unset, 401 without
    the bearer token."""
    token = settings.PROMETHEUS_TOKEN
    if not token:
        raise Http404
    if not _authorized(request, token):
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)
