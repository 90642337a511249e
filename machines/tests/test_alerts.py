"""Alerts: rule evaluation and its transitions, notifications (in-app, e-mail, signed webhooks
to a real HTTP server), operator actions, and the alert pages and API."""

from __future__ import annotations

import importlib
import json
import time
from datetime import timedelta

import pytest
from django.apps import apps
from django.core import mail
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from accounts.choices import NotificationLevel
from accounts.models import AuditEvent, Notification
from accounts.tests.factories import OperatorFactory
from machines.choices import AlertMetric, AlertStatus, Comparison, GPUHealth, HostStatus, Severity
from machines.models import DEFAULT_ALERT_RULE_LABELS, GPU, Alert, AlertRule, Host
from machines.services import alerts as alert_services
from machines.services.alerts import (
    EVENT_FIRING,
    EVENT_RESOLVED,
    WebhookDeliveryError,
    alert_acknowledge,
    alert_rule_create,
    alert_rule_set_enabled,
    alert_rule_update,
    alert_webhook_deliver,
    alerts_evaluate,
)
from machines.tasks import alert_evaluate_task, alert_webhook_task
from remotegpu.core.errors import Conflict, PermissionDenied, ValidationError

from .factories import GIB, GPUFactory, HostFactory
from .webhook_receiver import WebhookReceiver

SECRET = "s3cret-webhook-key-0123456789"


@pytest.fixture(autouse=True)
def no_default_rules(db):
    """The data migration's default rules would alert on these tests' figures too."""
    AlertRule.objects.all().delete()


@pytest.fixture
def operators(operator):
    """Two active operators (told), one disabled operator and one customer (not told)."""
    second = OperatorFactory()
    OperatorFactory(is_active=False)
    HostFactory()  # a host does not make anyone an operator
    return [operator, second]


@pytest.fixture
def evaluate(django_capture_on_commit_callbacks):
    """``evaluate(now)``: one pass, with what it defers to commit (e-mail, webhooks) run.
    Hosts that have reported keep reporting up to ``now`` unless ``reporting=False``: a
    silent host's figures count for nothing."""

    def run(now=None, reporting=True):
        if reporting:
            Host.objects.filter(last_seen_at__isnull=False).update(
                last_seen_at=now or timezone.now()
            )
        with django_capture_on_commit_callbacks(execute=True):
            return alerts_evaluate(now)

    return run


@pytest.fixture
def hot_gpu(db):
    host = HostFactory(name="gpu-hot-01")
    return GPUFactory(host=host, index=3, temperature=92.0, memory_used=10 * GIB)


def _rule(**fields) -> AlertRule:
    defaults = {
        "name": "GPU too hot",
        "metric": AlertMetric.GPU_TEMPERATURE,
        "comparison": Comparison.GT,
        "threshold": 85,
        "for_duration": 0,
        "severity": Severity.CRITICAL,
        "notify_email": False,
    }
    return AlertRule.objects.create(**(defaults | fields))


def _alert(**filters) -> Alert:
    return Alert.objects.get(**filters)


# The default rules -------------------------------------------------------------------------


def test_default_rules_are_created_once_and_never_overwritten():
    migration = importlib.import_module("machines.migrations.0004_default_alert_rules")
    migration.create_default_alert_rules(apps, None)
    rules = {rule.name: rule for rule in AlertRule.objects.all()}
    assert len(rules) == 4
    hot = rules["GPU temperature above 85 °C"]
    assert (hot.metric, hot.comparison, hot.threshold, hot.for_duration, hot.severity) == (
        "gpu_temperature",
        "gt",
        85,
        300,
        "critical",
    )
    memory = rules["GPU memory above 95 %"]
    assert (memory.metric, memory.threshold, memory.for_duration, memory.severity) == (
        "gpu_memory_percent",
        95,
        600,
        "warning",
    )
    disk = rules["Disk above 90 %"]
    assert (disk.metric, disk.threshold, disk.for_duration, disk.severity) == (
        "disk_percent",
        90,
        0,
        "warning",
    )
    offline = rules["Host offline"]
    assert (offline.metric, offline.severity) == ("host_offline", "critical")

    AlertRule.objects.filter(pk=hot.pk).update(threshold=80)
    migration.create_default_alert_rules(apps, None)
    assert AlertRule.objects.count() == 4
    assert AlertRule.objects.get(pk=hot.pk).threshold == 80


def test_default_rules_are_shown_in_the_readers_language_until_renamed(operator_client):
    migration = importlib.import_module("machines.migrations.0004_default_alert_rules")
    migration.create_default_alert_rules(apps, None)
    seeded = {rule["name"] for rule in migration.DEFAULT_ALERT_RULES}
    assert set(DEFAULT_ALERT_RULE_LABELS) == seeded
    AlertRule.objects.filter(name="Disk above 90 %").update(name="Disk nearly full")

    page = operator_client.get(
        reverse("machines:alert_rule_list"), HTTP_ACCEPT_LANGUAGE="zh-hans"
    ).content.decode()
    assert "GPU 温度高于 85 °C" in page
    assert "主机离线" in page
    assert "GPU temperature above 85 °C" not in page
    assert "Disk nearly full" in page  # an operator's own name is shown as written
    english = operator_client.get(reverse("machines:alert_rule_list"), HTTP_ACCEPT_LANGUAGE="en")
    assert "GPU temperature above 85 °C" in english.content.decode()


# Transitions -------------------------------------------------------------------------------


def test_fires_only_after_the_condition_held_for_its_duration(hot_gpu, operators, evaluate):
    rule = _rule(for_duration=300)
    start = timezone.now()

    evaluate(start)
    alert = _alert(rule=rule)
    assert (alert.status, alert.host, alert.gpu) == (AlertStatus.PENDING, hot_gpu.host, hot_gpu)
    assert alert.since == start
    assert alert.value == 92
    assert alert.severity == Severity.CRITICAL
    assert not Notification.objects.exists()

    evaluate(start + timedelta(seconds=299))
    assert _alert(pk=alert.pk).status == AlertStatus.PENDING
    assert not Notification.objects.exists()

    evaluate(start + timedelta(seconds=300))
    alert = _alert(pk=alert.pk)
    assert alert.status == AlertStatus.FIRING
    assert alert.fired_at == start + timedelta(seconds=300)
    assert alert.since == start
    assert "92 °C" in alert.message

    notifications = Notification.objects.order_by("user_id")
    assert {n.user for n in notifications} == set(operators)
    for notification in notifications:
        assert notification.level == NotificationLevel.ERROR
        assert notification.url == f"/operator/alerts/{alert.pk}/"
        assert "GPU too hot" in notification.title
        assert "gpu-hot-01 GPU 3" in notification.title
        assert "92 °C" in notification.body


def test_a_pending_alert_whose_condition_clears_is_discarded_silently(hot_gpu, evaluate):
    rule = _rule(for_duration=60)
    start = timezone.now()
    evaluate(start)
    assert _alert(rule=rule).status == AlertStatus.PENDING

    hot_gpu.temperature = 70
    hot_gpu.save()
    result = evaluate(start + timedelta(seconds=30))
    assert result.discarded == 1
    assert not Alert.objects.exists()
    assert not Notification.objects.exists()

    # The next breach starts the clock again.
    hot_gpu.temperature = 90
    hot_gpu.save()
    evaluate(start + timedelta(seconds=61))
    assert _alert(rule=rule).since == start + timedelta(seconds=61)
    evaluate(start + timedelta(seconds=100))
    assert _alert(rule=rule).status == AlertStatus.PENDING


def test_acknowledged_then_resolved_when_the_value_comes_back(hot_gpu, operators, evaluate):
    rule = _rule()
    evaluate()
    alert = _alert(rule=rule, status=AlertStatus.FIRING)

    alert = alert_acknowledge(operator=operators[1], alert=alert)
    assert alert.status == AlertStatus.ACKNOWLEDGED
    assert alert.acknowledged_by == operators[1]
    assert alert.acknowledged_at is not None
    event = AuditEvent.objects.get(action="alert.acknowledged")
    assert (event.actor, event.target_id) == (operators[1], str(alert.pk))

    evaluate()  # still hot: nothing changes
    assert _alert(pk=alert.pk).status == AlertStatus.ACKNOWLEDGED
    Notification.objects.all().delete()

    hot_gpu.temperature = 60
    hot_gpu.save()
    now = timezone.now()
    result = evaluate(now)
    assert result.resolved == 1
    alert = _alert(pk=alert.pk)
    assert alert.status == AlertStatus.RESOLVED
    assert alert.resolved_at == now
    assert alert.value == 60
    notifications = list(Notification.objects.all())
    assert {n.user for n in notifications} == set(operators)
    assert all(n.level == NotificationLevel.SUCCESS for n in notifications)
    assert all(n.title.startswith("Resolved: GPU too hot") for n in notifications)
    assert all("60 °C" in n.body for n in notifications)

    # A new breach opens a new alert; the resolved one stays as history.
    hot_gpu.temperature = 95
    hot_gpu.save()
    evaluate()
    assert Alert.objects.filter(rule=rule).count() == 2
    assert Alert.objects.filter(rule=rule, status=AlertStatus.FIRING).count() == 1


def test_only_a_firing_alert_can_be_acknowledged_and_only_by_an_operator(
    hot_gpu, operator, member, evaluate
):
    _rule(for_duration=60)
    evaluate()
    pending = Alert.objects.get()
    with pytest.raises(Conflict):
        alert_acknowledge(operator=operator, alert=pending)
    Alert.objects.filter(pk=pending.pk).update(status=AlertStatus.FIRING)
    with pytest.raises(PermissionDenied):
        alert_acknowledge(operator=member, alert=pending)
    alert_acknowledge(operator=operator, alert=pending)
    with pytest.raises(Conflict):
        alert_acknowledge(operator=operator, alert=pending)


def test_repeated_evaluation_keeps_one_open_alert_per_target(hot_gpu, operators, evaluate):
    rule = _rule()
    GPUFactory(host=hot_gpu.host, index=4, temperature=99)
    for _ in range(4):
        evaluate()
    assert Alert.objects.filter(rule=rule).count() == 2
    assert Alert.objects.filter(status=AlertStatus.FIRING).count() == 2
    # Each alert fired once: one notification per alert and operator.
    assert Notification.objects.count() == 2 * len(operators)


def test_concurrent_passes_cannot_open_twice_or_fire_twice(hot_gpu, operators, monkeypatch):
    """Two passes that read the same state: the unique index and the conditional updates let
    one of them win each step."""
    rule = _rule(for_duration=60)
    start = timezone.now()
    alerts_evaluate(start)
    first = _alert(rule=rule)

    # A pass that has not seen the first one's alert yet tries to open it again.
    real_open_alerts = alert_services._open_alerts
    calls = []

    def stale_then_real(rule):
        calls.append(rule)
        return {} if len(calls) == 1 else real_open_alerts(rule)

    monkeypatch.setattr(alert_services, "_open_alerts", stale_then_real)
    alerts_evaluate(start + timedelta(seconds=1))
    monkeypatch.undo()
    assert list(Alert.objects.values_list("pk", flat=True)) == [first.pk]

    # Both passes saw it pending; each tries to fire it.
    later = start + timedelta(seconds=61)
    assert alert_services._fire(first, rule, 92.0, later) is True
    assert alert_services._fire(first, rule, 92.0, later) is False
    assert Notification.objects.count() == len(operators)
    # The same for resolving.
    assert alert_services._resolve(first, rule, 50.0, later) is True
    assert alert_services._resolve(first, rule, 50.0, later) is False
    assert Notification.objects.count() == 2 * len(operators)


# Every metric ------------------------------------------------------------------------------


def _breaching_and_clear(metric):
    """A target whose figure breaches the rule below, and one whose figure does not."""
    if metric == AlertMetric.GPU_MEMORY_PERCENT:
        hot = GPUFactory(memory_total=80 * GIB, memory_used=78 * GIB)  # 97.5 %
        GPUFactory(memory_total=80 * GIB, memory_used=40 * GIB)
        return (hot.host_id, hot.pk), 97.5, 95
    if metric == AlertMetric.GPU_UTILIZATION:
        hot = GPUFactory(utilization=99)
        GPUFactory(utilization=20)
        return (hot.host_id, hot.pk), 99, 98
    if metric == AlertMetric.GPU_ECC_ERRORS:
        hot = GPUFactory(ecc_errors=3)
        GPUFactory(ecc_errors=0)
        return (hot.host_id, hot.pk), 3, 0
    if metric == AlertMetric.CPU_PERCENT:
        hot = HostFactory(cpu_percent=97)
        HostFactory(cpu_percent=3)
        return (hot.pk, None), 97, 90
    if metric == AlertMetric.MEMORY_PERCENT:
        hot = HostFactory(memory_total=100 * GIB, memory_used=96 * GIB)
        HostFactory(memory_total=100 * GIB, memory_used=10 * GIB)
        return (hot.pk, None), 96, 90
    if metric == AlertMetric.DISK_PERCENT:
        hot = HostFactory(disk_total=1000 * GIB, disk_used=955 * GIB)
        HostFactory(disk_total=1000 * GIB, disk_used=100 * GIB)
        return (hot.pk, None), 95.5, 90
    hot = HostFactory(status=HostStatus.OFFLINE, connected=False)
    HostFactory(status=HostStatus.ONLINE)
    return (hot.pk, None), 1, 0


@pytest.mark.parametrize(
    "metric", [metric for metric in AlertMetric.values if metric != "gpu_temperature"]
)
def test_each_metric_alerts_on_the_breaching_target_only(metric, operators, evaluate):
    (host_id, gpu_id), value, threshold = _breaching_and_clear(metric)
    rule = _rule(name=metric, metric=metric, threshold=threshold)
    evaluate()
    alert = _alert(rule=rule)
    assert (alert.host_id, alert.gpu_id) == (host_id, gpu_id)
    assert alert.status == AlertStatus.FIRING
    assert alert.value == pytest.approx(value)


def test_lower_than_comparisons(evaluate):
    cold = GPUFactory(utilization=2)
    GPUFactory(utilization=50)
    rule = _rule(metric=AlertMetric.GPU_UTILIZATION, comparison=Comparison.LTE, threshold=2)
    evaluate()
    assert _alert(rule=rule).gpu == cold


def test_what_is_watched_and_what_is_not(evaluate):
    """GPU and host figures of hosts whose agent reports; GPUs not lost; no retired hosts."""
    watched = GPUFactory(temperature=90, host=HostFactory(status=HostStatus.DRAINING))
    GPUFactory(temperature=90, host=HostFactory(status=HostStatus.OFFLINE))
    GPUFactory(temperature=90, host=HostFactory(status=HostStatus.RETIRED))
    GPUFactory(temperature=90, health=GPUHealth.LOST)
    GPUFactory(temperature=None)  # no heartbeat yet
    offline = HostFactory(status=HostStatus.OFFLINE)
    HostFactory(status=HostStatus.RETIRED)
    HostFactory(status=HostStatus.PENDING)
    hot = _rule()
    gone = _rule(name="offline", metric=AlertMetric.HOST_OFFLINE)
    evaluate()
    assert [alert.gpu for alert in Alert.objects.filter(rule=hot)] == [watched]
    # Offline hosts were made above for the GPU case too.
    assert set(Alert.objects.filter(rule=gone).values_list("host__status", flat=True)) == {
        HostStatus.OFFLINE
    }
    assert Alert.objects.filter(rule=gone, host=offline).exists()


def test_without_data_a_firing_alert_keeps_its_state_until_the_target_leaves(
    hot_gpu, operators, evaluate
):
    rule = _rule()
    evaluate()
    alert = _alert(rule=rule, status=AlertStatus.FIRING)
    Notification.objects.all().delete()

    hot_gpu.host.status = HostStatus.OFFLINE
    hot_gpu.host.save()
    evaluate()
    assert _alert(pk=alert.pk).status == AlertStatus.FIRING
    assert not Notification.objects.exists()

    hot_gpu.host.status = HostStatus.RETIRED
    hot_gpu.host.save()
    evaluate()
    alert = _alert(pk=alert.pk)
    assert alert.status == AlertStatus.RESOLVED
    assert alert.value is None
    assert all("no longer monitored" in n.body for n in Notification.objects.all())
    assert Notification.objects.count() == len(operators)


@pytest.mark.parametrize(
    ("metric", "figure"),
    [
        (AlertMetric.GPU_TEMPERATURE, "temperature"),
        (AlertMetric.GPU_UTILIZATION, "utilization"),
        (AlertMetric.GPU_ECC_ERRORS, "ecc_errors"),
    ],
)
def test_a_figure_the_gpu_cannot_give_neither_fires_nor_resolves(
    metric, figure, operators, evaluate
):
    """Unknown is not 0: a "below" rule does not fire on a GPU that cannot measure, and a
    firing alert whose GPU stops giving the figure keeps its state, as for a silent host."""
    hot = GPUFactory(**{figure: 100})
    GPUFactory(**{figure: None})  # a board without the sensor, from its first heartbeat
    below = _rule(name="below", metric=metric, comparison=Comparison.LT, threshold=1)
    above = _rule(name="above", metric=metric, comparison=Comparison.GT, threshold=50)
    evaluate()
    assert not Alert.objects.filter(rule=below).exists()
    alert = _alert(rule=above)
    assert (alert.gpu, alert.status) == (hot, AlertStatus.FIRING)
    Notification.objects.all().delete()

    GPU.objects.filter(pk=hot.pk).update(**{figure: None})
    evaluate()
    assert _alert(pk=alert.pk).status == AlertStatus.FIRING
    assert not Alert.objects.filter(rule=below).exists()
    assert not Notification.objects.exists()

    GPU.objects.filter(pk=hot.pk).update(**{figure: 10})
    evaluate()
    assert _alert(pk=alert.pk).status == AlertStatus.RESOLVED


def test_a_lost_gpu_resolves_its_alert(hot_gpu, evaluate):
    rule = _rule()
    evaluate()
    GPU.objects.filter(pk=hot_gpu.pk).update(health=GPUHealth.LOST)
    evaluate()
    assert _alert(rule=rule).status == AlertStatus.RESOLVED


def test_host_offline_fires_and_resolves_when_the_host_is_back(operators, evaluate):
    host = HostFactory(name="gpu-gone-01", status=HostStatus.OFFLINE, connected=False)
    rule = _rule(name="Host offline", metric=AlertMetric.HOST_OFFLINE, threshold=0)
    evaluate()
    alert = _alert(rule=rule)
    assert (alert.status, alert.host, alert.gpu) == (AlertStatus.FIRING, host, None)
    assert "gpu-gone-01" in Notification.objects.first().title
    host.status = HostStatus.ONLINE
    host.save()
    evaluate()
    assert _alert(pk=alert.pk).status == AlertStatus.RESOLVED
    assert Notification.objects.filter(level=NotificationLevel.SUCCESS).count() == len(operators)


def test_a_draining_host_that_falls_silent_is_offline_for_alerts(operators, evaluate):
    """Draining keeps its operator state (offline detection leaves it), but a dead agent under
    running workloads must still page someone; maintenance is expected to be quiet."""
    now = timezone.now()
    quiet = now - timedelta(minutes=5)
    draining = HostFactory(name="gpu-drain-01", status=HostStatus.DRAINING, last_seen_at=quiet)
    HostFactory(name="gpu-maint-01", status=HostStatus.MAINTENANCE, last_seen_at=quiet)
    HostFactory(name="gpu-drain-02", status=HostStatus.DRAINING, last_seen_at=now)
    rule = _rule(name="Host offline", metric=AlertMetric.HOST_OFFLINE, threshold=0)

    evaluate(now, reporting=False)

    (alert,) = Alert.objects.filter(rule=rule)
    assert (alert.host, alert.status) == (draining, AlertStatus.FIRING)
    assert Host.objects.get(pk=draining.pk).status == HostStatus.DRAINING

    evaluate(now + timedelta(seconds=1))  # it reports again
    assert _alert(pk=alert.pk).status == AlertStatus.RESOLVED


def test_a_silent_hosts_frozen_figures_open_no_alert_and_close_none(hot_gpu, evaluate):
    """The last figures of a host whose agent died stay in its row; they are no data."""
    now = timezone.now()
    rule = _rule()
    Host.objects.filter(pk=hot_gpu.host_id).update(last_seen_at=now - timedelta(minutes=5))
    evaluate(now, reporting=False)
    assert not Alert.objects.filter(rule=rule).exists()

    evaluate(now)  # reporting again, still hot
    assert _alert(rule=rule).status == AlertStatus.FIRING
    GPU.objects.filter(pk=hot_gpu.pk).update(temperature=40.0)
    evaluate(now + timedelta(minutes=5), reporting=False)  # cool, but silent: no news
    assert _alert(rule=rule).status == AlertStatus.FIRING


def test_each_operator_is_told_in_their_own_language(hot_gpu, evaluate, mailoutbox):
    english = OperatorFactory(email="en@example.com", language="en")
    chinese = OperatorFactory(email="zh@example.com", language="zh-hans")
    _rule(name="GPU too hot", notify_email=True)

    evaluate()

    notes = {n.user_id: n for n in Notification.objects.all()}
    assert notes[english.pk].title.startswith("Critical: GPU too hot on gpu-hot-01 GPU 3")
    assert "92 °C" in notes[english.pk].body
    assert notes[chinese.pk].title.startswith("严重")
    assert "92 °C" in notes[chinese.pk].body
    assert "rule" not in notes[chinese.pk].body
    mails = {message.to[0]: message for message in mailoutbox}
    assert mails["zh@example.com"].subject == notes[chinese.pk].title
    assert mails["en@example.com"].subject == notes[english.pk].title


def test_disabled_rules_are_not_evaluated_and_disabling_closes_alerts(hot_gpu, operator, evaluate):
    rule = _rule()
    other = _rule(name="pending one", for_duration=600)
    evaluate()
    assert _alert(rule=rule).status == AlertStatus.FIRING
    alert_rule_set_enabled(operator=operator, rule=rule, enabled=False)
    alert_rule_set_enabled(operator=operator, rule=other, enabled=False)
    assert _alert(rule=rule).status == AlertStatus.RESOLVED
    assert not Alert.objects.filter(rule=other).exists()  # a pending alert is dropped
    Notification.objects.all().delete()
    evaluate()
    assert Alert.objects.count() == 1
    assert not Notification.objects.exists()


def test_the_task_evaluates_and_counts_changes(hot_gpu):
    _rule()
    assert alert_evaluate_task.delay().get() == 2  # opened and fired in one pass
    assert alert_evaluate_task.delay().get() == 0


# E-mail ------------------------------------------------------------------------------------


def test_operators_are_e_mailed_when_the_rule_says_so(hot_gpu, operators, evaluate):
    _rule(notify_email=True)
    _rule(name="quiet", threshold=80, notify_email=False)
    evaluate()
    alert = Alert.objects.get(rule__name="GPU too hot")
    assert sorted(message.to[0] for message in mail.outbox) == sorted(o.email for o in operators)
    assert all(len(message.to) == 1 for message in mail.outbox)  # no operator sees the others
    message = mail.outbox[0]
    assert "GPU too hot" in message.subject
    assert f"http://localhost:8000/operator/alerts/{alert.pk}/" in message.body

    mail.outbox.clear()
    hot_gpu.temperature = 30
    hot_gpu.save()
    evaluate()
    assert len(mail.outbox) == len(operators)
    assert mail.outbox[0].subject.startswith("Resolved: GPU too hot")


def test_a_mail_server_that_is_down_does_not_stop_evaluation(
    hot_gpu, operators, evaluate, settings, caplog
):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # discard port: refused
    _rule(notify_email=True)
    _rule(name="second", threshold=80)
    evaluate()
    assert Alert.objects.filter(status=AlertStatus.FIRING).count() == 2
    assert "alert e-mail not sent" in caplog.text


# Webhooks ----------------------------------------------------------------------------------


def test_webhook_receives_signed_firing_and_resolved_payloads(hot_gpu, operators, evaluate):
    with WebhookReceiver(SECRET) as receiver:
        rule = _rule(webhook_url=receiver.url, webhook_secret=SECRET)
        evaluate()
        alert = _alert(rule=rule)
        assert receiver.events() == [EVENT_FIRING]
        request = receiver.received[0]
        assert request.signature_valid
        assert request.path == "/hooks/alerts"
        assert request.headers["content-type"] == "application/json"
        payload = request.payload
        assert payload["event"] == "alert.firing"
        assert payload["alert"]["id"] == alert.pk
        assert payload["alert"]["status"] == "firing"
        assert payload["alert"]["severity"] == "critical"
        assert payload["alert"]["value"] == 92
        assert payload["alert"]["url"].endswith(f"/operator/alerts/{alert.pk}/")
        assert payload["rule"] == {
            "id": rule.pk,
            "name": "GPU too hot",
            "metric": "gpu_temperature",
            "comparison": "gt",
            "threshold": 85,
            "for_duration": 0,
            "severity": "critical",
        }
        assert payload["host"] == {
            "id": hot_gpu.host.pk,
            "name": "gpu-hot-01",
            "address": hot_gpu.host.address,
        }
        assert payload["gpu"] == {
            "id": hot_gpu.pk,
            "uuid": hot_gpu.uuid,
            "index": 3,
            "model": hot_gpu.model,
        }
        assert payload["sent_at"]

        hot_gpu.temperature = 50
        hot_gpu.save()
        evaluate()
        assert receiver.events() == [EVENT_FIRING, EVENT_RESOLVED]
        resolved = receiver.received[1]
        assert resolved.signature_valid
        assert resolved.payload["alert"]["status"] == "resolved"
        assert resolved.payload["alert"]["value"] == 50
        assert resolved.payload["alert"]["resolved_at"]


def test_host_webhook_payload_has_no_gpu(operators, evaluate):
    host = HostFactory(status=HostStatus.OFFLINE)
    with WebhookReceiver(SECRET) as receiver:
        _rule(metric=AlertMetric.HOST_OFFLINE, webhook_url=receiver.url, webhook_secret=SECRET)
        evaluate()
        payload = receiver.received[0].payload
    assert payload["gpu"] is None
    assert payload["host"]["id"] == host.pk


def test_a_wrong_secret_is_detected_by_the_receiver(hot_gpu, evaluate):
    with WebhookReceiver("the-receivers-own-secret-000") as receiver:
        _rule(webhook_url=receiver.url, webhook_secret=SECRET)
        evaluate()
    assert len(receiver.received) == 1
    assert not receiver.received[0].signature_valid


@pytest.fixture
def celery_retries_in_process():
    """Eager tasks that handle their retries as a worker would (instead of raising ``Retry``):
    each retry runs at once, in this process."""
    from remotegpu.celery import app

    previous = app.conf.task_eager_propagates
    app.conf.task_eager_propagates = False
    yield
    app.conf.task_eager_propagates = previous


def test_a_failing_webhook_is_retried_until_it_is_delivered(
    hot_gpu, evaluate, celery_retries_in_process
):
    with WebhookReceiver(SECRET, statuses=[503, 502]) as receiver:
        _rule(webhook_url=receiver.url, webhook_secret=SECRET)
        evaluate()
    assert receiver.events() == [EVENT_FIRING] * 3
    assert all(request.signature_valid for request in receiver.received)
    assert len({request.payload["alert"]["id"] for request in receiver.received}) == 1


def test_a_webhook_that_keeps_failing_gives_up_and_evaluation_goes_on(
    hot_gpu, operators, evaluate, celery_retries_in_process
):
    with WebhookReceiver(SECRET, statuses=[503] * 20) as receiver:
        _rule(webhook_url=receiver.url, webhook_secret=SECRET)
        _rule(name="second rule", threshold=80)
        evaluate()
    assert len(receiver.received) == alert_webhook_task.max_retries + 1
    assert Alert.objects.filter(status=AlertStatus.FIRING).count() == 2
    assert Notification.objects.count() == 2 * len(operators)


def test_a_refused_webhook_is_not_retried(hot_gpu, evaluate, caplog):
    with WebhookReceiver(SECRET, statuses=[400]) as receiver:
        _rule(webhook_url=receiver.url, webhook_secret=SECRET)
        evaluate()
    assert len(receiver.received) == 1
    assert "refused alert.firing: HTTP 400" in caplog.text


def test_an_unreachable_webhook_does_not_block_evaluation(hot_gpu, operators, evaluate, caplog):
    with WebhookReceiver(SECRET) as receiver:
        url = receiver.url  # a port that was just free: nothing listens there now
    _rule(webhook_url=url, webhook_secret=SECRET)
    _rule(name="second rule", threshold=80)
    started = time.monotonic()
    evaluate()
    assert time.monotonic() - started < 10
    assert Alert.objects.filter(status=AlertStatus.FIRING).count() == 2
    assert Notification.objects.count() == 2 * len(operators)
    # Eager tasks raise the first failure into the pass, which logs it and goes on; with a
    # broker the pass only enqueues (next test).
    assert "not queued" in caplog.text


def test_webhook_delivery_is_queued_not_awaited(hot_gpu, evaluate, celery_app_not_eager):
    """With a real broker the pass only enqueues: a receiver that hangs costs it nothing."""
    celery_app_not_eager.control.purge()
    with WebhookReceiver(SECRET, delay=30) as receiver:
        _rule(webhook_url=receiver.url, webhook_secret=SECRET)
        started = time.monotonic()
        evaluate()
        assert time.monotonic() - started < 2
        assert Alert.objects.get().status == AlertStatus.FIRING
        assert celery_app_not_eager.control.purge() == 1  # the delivery, waiting for a worker
        assert receiver.received == []


@pytest.fixture
def celery_app_not_eager():
    from remotegpu.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    yield app
    app.conf.task_always_eager = previous


def test_delivery_errors_that_may_pass_are_retryable(hot_gpu, evaluate):
    with WebhookReceiver(SECRET) as receiver:
        url = receiver.url
    rule = _rule(webhook_url=url, webhook_secret=SECRET)
    with pytest.raises(WebhookDeliveryError):
        alert_webhook_deliver(rule.pk, {"event": EVENT_FIRING})
    assert WebhookDeliveryError in alert_webhook_task.autoretry_for
    assert alert_webhook_task.max_retries >= 3
    with WebhookReceiver(SECRET, statuses=[500]) as receiver:
        AlertRule.objects.filter(pk=rule.pk).update(webhook_url=receiver.url)
        with pytest.raises(WebhookDeliveryError):
            alert_webhook_deliver(rule.pk, {"event": EVENT_FIRING})
        assert alert_webhook_deliver(rule.pk, {"event": EVENT_FIRING}) == 204
    # A rule deleted (or its webhook removed) since: nothing to deliver.
    AlertRule.objects.filter(pk=rule.pk).update(webhook_url="")
    assert alert_webhook_deliver(rule.pk, {"event": EVENT_FIRING}) is None
    rule.delete()
    assert alert_webhook_deliver(rule.pk, {"event": EVENT_FIRING}) is None


# Rules -------------------------------------------------------------------------------------


def _rule_fields(**overrides):
    return {
        "name": "Hot",
        "metric": AlertMetric.GPU_TEMPERATURE,
        "comparison": Comparison.GT,
        "threshold": 85.0,
        "for_duration": 300,
        "severity": Severity.CRITICAL,
        "enabled": True,
        "notify_email": True,
        "webhook_url": "",
        "webhook_secret": "",
    } | overrides


def test_rule_create_checks_every_field(operator, member):
    _rule(name="Taken")
    with pytest.raises(ValidationError) as caught:
        alert_rule_create(
            operator=operator,
            **_rule_fields(
                name="taken",
                metric=AlertMetric.DISK_PERCENT,
                threshold=150,
                for_duration=10**7,
                webhook_url="ftp://example.com/hook",
            ),
        )
    assert set(caught.value.fields) == {
        "name",
        "threshold",
        "for_duration",
        "webhook_url",
        "webhook_secret",
    }
    with pytest.raises(ValidationError) as caught:
        alert_rule_create(
            operator=operator,
            **_rule_fields(webhook_url="https://hooks.example.com/x", webhook_secret="short"),
        )
    assert set(caught.value.fields) == {"webhook_secret"}
    with pytest.raises(ValidationError) as caught:
        alert_rule_create(operator=operator, **_rule_fields(threshold=float("inf")))
    assert set(caught.value.fields) == {"threshold"}
    with pytest.raises(PermissionDenied):
        alert_rule_create(operator=member, **_rule_fields())
    assert AlertRule.objects.count() == 1


def test_rule_create_and_update_are_audited_without_the_secret(operator):
    rule = alert_rule_create(
        operator=operator,
        **_rule_fields(webhook_url="https://hooks.example.com/x", webhook_secret=SECRET),
    )
    created = AuditEvent.objects.get(action="alert_rule.created")
    assert created.details["name"] == "Hot"
    assert created.details["webhook_secret_set"] is True
    assert SECRET not in json.dumps(created.details)

    rule = alert_rule_update(operator=operator, rule=rule, threshold=90, webhook_secret="")
    assert rule.threshold == 90
    assert rule.webhook_secret == SECRET  # blank keeps the secret
    updated = AuditEvent.objects.get(action="alert_rule.updated")
    assert updated.details == {"threshold": [85.0, 90.0]}

    rule = alert_rule_update(operator=operator, rule=rule, webhook_secret="a-new-secret-0123456789")
    assert AlertRule.objects.get(pk=rule.pk).webhook_secret == "a-new-secret-0123456789"
    assert "a-new-secret" not in json.dumps(list(AuditEvent.objects.values_list("details")))

    rule = alert_rule_update(operator=operator, rule=rule, webhook_url="")
    assert rule.webhook_secret == ""  # no webhook, no secret kept


def test_host_offline_rules_ignore_comparison_and_threshold(operator):
    rule = alert_rule_create(
        operator=operator,
        **_rule_fields(metric=AlertMetric.HOST_OFFLINE, comparison=Comparison.LT, threshold=7),
    )
    assert (rule.comparison, rule.threshold) == (Comparison.GT, 0)


def test_changing_the_metric_closes_open_alerts(hot_gpu, operator, evaluate):
    rule = _rule()
    evaluate()
    alert_rule_update(
        operator=operator, rule=rule, metric=AlertMetric.GPU_UTILIZATION, threshold=50
    )
    assert _alert(rule=rule).status == AlertStatus.RESOLVED


# Pages -------------------------------------------------------------------------------------


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def firing_alert(hot_gpu, evaluate):
    _rule()
    evaluate()
    return Alert.objects.get(status=AlertStatus.FIRING)


def test_alert_pages_are_operators_only(client, member, firing_alert):
    client.force_login(member)
    rule = firing_alert.rule
    for url in (
        reverse("machines:alert_list"),
        reverse("machines:alert_detail", args=[firing_alert.pk]),
        reverse("machines:alert_rule_list"),
        reverse("machines:alert_rule_create"),
        reverse("machines:alert_rule_edit", args=[rule.pk]),
    ):
        assert client.get(url).status_code == 404, url
    for url in (
        reverse("machines:alert_acknowledge", args=[firing_alert.pk]),
        reverse("machines:alert_rule_enabled", args=[rule.pk]),
    ):
        assert client.post(url, {"enabled": "0"}).status_code == 404, url
    assert _alert(pk=firing_alert.pk).status == AlertStatus.FIRING
    assert AlertRule.objects.get(pk=rule.pk).enabled


def test_alert_list_filters_and_acknowledges(operator_client, firing_alert):
    other_host = HostFactory(name="quiet-host", status=HostStatus.OFFLINE)
    offline_rule = _rule(name="Offline", metric=AlertMetric.HOST_OFFLINE, severity="warning")
    alerts_evaluate()
    url = reverse("machines:alert_list")

    page = operator_client.get(url)
    assert page.status_code == 200
    body = page.content.decode()
    assert "gpu-hot-01 GPU 3" in body
    assert "quiet-host" in body
    assert 'data-testid="firing-alert-count"' in body  # the navigation counts firing alerts

    for query, shown, hidden in (
        ({"severity": "warning"}, "quiet-host", "gpu-hot-01"),
        ({"rule": firing_alert.rule_id}, "gpu-hot-01", "quiet-host"),
        ({"host": "quiet"}, "quiet-host", "gpu-hot-01"),
        ({"status": "resolved"}, "No alerts match", "gpu-hot-01"),
    ):
        body = operator_client.get(url, query).content.decode()
        assert shown in body, query
        assert hidden not in body.split('data-testid="alert-table"')[1], query

    filtered = f"{url}?rule={offline_rule.pk}"
    alert = Alert.objects.get(host=other_host)
    response = operator_client.post(
        reverse("machines:alert_acknowledge", args=[alert.pk]), {"next": filtered}
    )
    assert response.status_code == 302
    assert response["Location"] == filtered
    assert _alert(pk=alert.pk).status == AlertStatus.ACKNOWLEDGED
    # A second acknowledgement is refused with a message, not an error page.
    response = operator_client.post(
        reverse("machines:alert_acknowledge", args=[alert.pk]),
        {"next": "https://evil.example.com/"},
        follow=True,
    )
    assert response.redirect_chain[0][0] == f"/operator/alerts/{alert.pk}/"
    assert "Only a firing alert can be acknowledged." in response.content.decode()


def test_alert_list_paginates(operator_client, hot_gpu):
    rule = _rule()
    now = timezone.now()
    Alert.objects.bulk_create(
        Alert(
            rule=rule,
            host=hot_gpu.host,
            gpu=hot_gpu,
            status=AlertStatus.RESOLVED,
            severity="critical",
            since=now,
            resolved_at=now,
        )
        for _ in range(60)
    )
    body = operator_client.get(reverse("machines:alert_list")).content.decode()
    assert body.count('data-testid="alert-row"') == 50
    assert "Page 1 of 2" in body
    second = operator_client.get(reverse("machines:alert_list"), {"page": 2}).content.decode()
    assert second.count('data-testid="alert-row"') == 10


def test_alert_detail_page(operator_client, firing_alert):
    page = operator_client.get(reverse("machines:alert_detail", args=[firing_alert.pk]))
    assert page.status_code == 200
    body = page.content.decode()
    assert "GPU too hot" in body
    assert "92 °C" in body
    assert firing_alert.gpu.uuid in body
    assert 'data-testid="acknowledge"' in body


def test_rule_pages_create_edit_enable(operator_client, operator):
    page = operator_client.get(reverse("machines:alert_rule_list"))
    assert page.status_code == 200
    assert operator_client.get(reverse("machines:alert_rule_create")).status_code == 200

    form = {
        "name": "Disk nearly full",
        "metric": "disk_percent",
        "comparison": "gte",
        "threshold": "150",
        "for_duration": "0",
        "severity": "warning",
        "enabled": "on",
        "webhook_url": "https://hooks.example.com/a",
        "webhook_secret": "",
    }
    response = operator_client.post(reverse("machines:alert_rule_create"), form)
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-testid="error-threshold"' in body
    assert 'data-testid="error-webhook_secret"' in body
    assert not AlertRule.objects.exists()

    form |= {"threshold": "93", "webhook_secret": SECRET}
    response = operator_client.post(reverse("machines:alert_rule_create"), form)
    assert response.status_code == 302
    rule = AlertRule.objects.get()
    assert (rule.metric, rule.comparison, rule.threshold, rule.enabled, rule.notify_email) == (
        "disk_percent",
        "gte",
        93,
        True,
        False,
    )
    assert rule.webhook_secret == SECRET

    listing = operator_client.get(reverse("machines:alert_rule_list")).content.decode()
    assert "Disk nearly full" in listing
    assert "Disk used (%) ≥ 93.0 %" in listing

    edit = reverse("machines:alert_rule_edit", args=[rule.pk])
    page = operator_client.get(edit).content.decode()
    assert SECRET not in page
    assert 'value="Disk nearly full"' in page
    response = operator_client.post(
        edit, form | {"threshold": "95", "for_duration": "120", "webhook_secret": ""}
    )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.threshold, rule.for_duration, rule.webhook_secret) == (95, 120, SECRET)

    toggle = reverse("machines:alert_rule_enabled", args=[rule.pk])
    assert operator_client.post(toggle, {"enabled": "0"}).status_code == 302
    assert not AlertRule.objects.get(pk=rule.pk).enabled
    assert operator_client.post(toggle, {"enabled": "1"}).status_code == 302
    assert AlertRule.objects.get(pk=rule.pk).enabled
    assert operator_client.get(toggle).status_code == 405


# API ---------------------------------------------------------------------------------------


@pytest.fixture
def operator_api(token_client_for, operator):
    return token_client_for(operator)


def test_alert_api_lists_filters_and_acknowledges(operator_api, firing_alert, operator):
    HostFactory(status=HostStatus.OFFLINE)
    _rule(name="Offline", metric=AlertMetric.HOST_OFFLINE, severity="warning")
    alerts_evaluate()

    listing = operator_api.get("/api/v1/alerts/")
    assert listing.status_code == 200
    assert listing.json()["count"] == 2
    hot = operator_api.get("/api/v1/alerts/", {"severity": "critical"}).json()["results"]
    assert [row["id"] for row in hot] == [firing_alert.pk]
    row = hot[0]
    assert row["rule_name"] == "GPU too hot"
    assert row["metric"] == "gpu_temperature"
    assert row["host_name"] == "gpu-hot-01"
    assert row["gpu_uuid"] == firing_alert.gpu.uuid
    assert row["status"] == "firing"
    by_host = operator_api.get("/api/v1/alerts/", {"host": firing_alert.host_id}).json()
    assert [row["id"] for row in by_host["results"]] == [firing_alert.pk]

    detail = operator_api.get(f"/api/v1/alerts/{firing_alert.pk}/")
    assert detail.json()["value"] == 92

    acknowledged = operator_api.post(f"/api/v1/alerts/{firing_alert.pk}/acknowledge/")
    assert acknowledged.status_code == 200, acknowledged.content
    assert acknowledged.json()["status"] == "acknowledged"
    assert acknowledged.json()["acknowledged_by"] == operator.email
    again = operator_api.post(f"/api/v1/alerts/{firing_alert.pk}/acknowledge/")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "not_firing"


def test_alert_rule_api_crud(operator_api):
    body = _rule_fields(webhook_url="https://hooks.example.com/a", webhook_secret=SECRET)
    created = operator_api.post("/api/v1/alert-rules/", body, format="json")
    assert created.status_code == 201, created.content
    rule = created.json()
    assert "webhook_secret" not in rule
    assert rule["webhook_secret_set"] is True
    assert rule["open_alert_count"] == 0
    assert AlertRule.objects.get(pk=rule["id"]).webhook_secret == SECRET

    duplicate = operator_api.post(
        "/api/v1/alert-rules/", body | {"name": "HOT", "threshold": 1000}, format="json"
    )
    assert duplicate.status_code == 400
    assert set(duplicate.json()["error"]["fields"]) == {"name"}
    bad = operator_api.post(
        "/api/v1/alert-rules/",
        body | {"name": "x", "metric": "cpu_percent", "threshold": 101, "webhook_secret": ""},
        format="json",
    )
    assert bad.status_code == 400
    assert set(bad.json()["error"]["fields"]) == {"threshold", "webhook_secret"}

    url = f"/api/v1/alert-rules/{rule['id']}/"
    patched = operator_api.patch(url, {"threshold": 88, "enabled": False}, format="json")
    assert patched.status_code == 200, patched.content
    assert (patched.json()["threshold"], patched.json()["enabled"]) == (88, False)
    assert AlertRule.objects.get(pk=rule["id"]).webhook_secret == SECRET
    assert operator_api.get("/api/v1/alert-rules/", {"enabled": "false"}).json()["count"] == 1

    assert operator_api.delete(url).status_code == 204
    assert not AlertRule.objects.filter(pk=rule["id"]).exists()
    assert AuditEvent.objects.filter(action="alert_rule.deleted").count() == 1


def test_alert_api_is_operators_only(token_client_for, member, firing_alert):
    client = token_client_for(member)
    for method, url in (
        ("get", "/api/v1/alerts/"),
        ("get", f"/api/v1/alerts/{firing_alert.pk}/"),
        ("post", f"/api/v1/alerts/{firing_alert.pk}/acknowledge/"),
        ("get", "/api/v1/alert-rules/"),
        ("post", "/api/v1/alert-rules/"),
        ("patch", f"/api/v1/alert-rules/{firing_alert.rule_id}/"),
        ("delete", f"/api/v1/alert-rules/{firing_alert.rule_id}/"),
    ):
        response = getattr(client, method)(url, {}, format="json")
        assert response.status_code == 403, (method, url)
    assert _alert(pk=firing_alert.pk).status == AlertStatus.FIRING
    assert AlertRule.objects.filter(pk=firing_alert.rule_id).exists()


def test_read_only_token_cannot_acknowledge(token_client_for, operator, firing_alert):
    client = token_client_for(operator, write=False)
    assert client.get("/api/v1/alerts/").status_code == 200
    assert client.post(f"/api/v1/alerts/{firing_alert.pk}/acknowledge/").status_code == 403


def test_alert_routes_are_in_the_schema():
    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    assert {"get"} <= set(paths["/api/v1/alerts/"])
    assert {"post"} <= set(paths["/api/v1/alerts/{id}/acknowledge/"])
    assert {"get", "post"} <= set(paths["/api/v1/alert-rules/"])
    assert {"get", "put", "patch", "delete"} <= set(paths["/api/v1/alert-rules/{id}/"])
