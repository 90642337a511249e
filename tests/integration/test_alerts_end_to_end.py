"""An alert end to end: a real agent (fake GPUs steered by its control file) reports through a
real daphne server; the GPU gets hot, the alert fires, an operator acknowledges it, the GPU
cools down, the alert resolves, and a real HTTP receiver got both events, correctly signed."""

from __future__ import annotations

import json

import pytest

from accounts.models import Notification
from accounts.tests.factories import OperatorFactory
from machines.choices import AlertMetric, AlertStatus, Comparison, Severity
from machines.models import GPU, Alert, AlertRule, Host
from machines.services.alerts import (
    EVENT_FIRING,
    EVENT_RESOLVED,
    alert_acknowledge,
    alert_rule_create,
    alerts_evaluate,
)
from machines.tests.webhook_receiver import WebhookReceiver

from .conftest import START_TIMEOUT, join_agent, start_agent, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SECRET = "integration-webhook-secret-42"


def _evaluate_until(condition, *, timeout, what, process):
    """Run evaluation passes (as beat would, only faster) until ``condition()`` holds."""

    def check():
        alerts_evaluate()
        return condition()

    return wait_until(check, timeout=timeout, what=what, process=process, interval=0.5)


def test_gpu_temperature_alert_fires_is_acknowledged_and_resolves(daphne_server, tmp_path):
    operator = OperatorFactory()
    state, control = tmp_path / "state", tmp_path / "fake-gpus.json"
    control.write_text(json.dumps({"temperature": 40}))
    join_agent(daphne_server, state, "it-alert-host")
    agent = start_agent(state, control, tmp_path)
    with WebhookReceiver(SECRET) as receiver:
        try:
            host = wait_until(
                lambda: Host.objects.filter(name="it-alert-host", connected=True).first(),
                timeout=START_TIMEOUT,
                what="the host to connect",
                process=agent,
            )
            wait_until(
                lambda: GPU.objects.filter(host=host, temperature__lt=50).count() == 2,
                timeout=15,
                what="two cool GPUs",
                process=agent,
            )
            rule = alert_rule_create(
                operator=operator,
                name="GPU temperature above 85 °C for 2 s",
                metric=AlertMetric.GPU_TEMPERATURE,
                comparison=Comparison.GT,
                threshold=85,
                for_duration=2,
                severity=Severity.CRITICAL,
                notify_email=False,
                webhook_url=receiver.url,
                webhook_secret=SECRET,
            )
            # Only this rule: the data migration's defaults are not part of this story.
            AlertRule.objects.exclude(pk=rule.pk).delete()
            alerts_evaluate()
            assert not Alert.objects.exists()

            # Only GPU 0 gets hot.
            control.write_text(json.dumps({"gpus": {"0": {"temperature": 92}}}))
            firing = _evaluate_until(
                lambda: Alert.objects.filter(rule=rule, status=AlertStatus.FIRING).first(),
                timeout=30,
                what="the alert to fire",
                process=agent,
            )
            assert firing.gpu.index == 0
            assert firing.value >= 90
            assert (firing.fired_at - firing.since).total_seconds() >= 2
            assert Alert.objects.filter(rule=rule).count() == 1
            assert Notification.objects.filter(user=operator, url__contains=str(firing.pk))

            alert_acknowledge(operator=operator, alert=firing)
            alerts_evaluate()
            assert Alert.objects.get(pk=firing.pk).status == AlertStatus.ACKNOWLEDGED

            control.write_text(json.dumps({"temperature": 40}))
            resolved = _evaluate_until(
                lambda: Alert.objects.filter(pk=firing.pk, status=AlertStatus.RESOLVED).first(),
                timeout=30,
                what="the alert to resolve",
                process=agent,
            )
            assert resolved.value < 85
            assert resolved.acknowledged_by == operator
        finally:
            agent.stop()

    assert receiver.events() == [EVENT_FIRING, EVENT_RESOLVED]
    assert all(request.signature_valid for request in receiver.received)
    fired, cleared = (request.payload for request in receiver.received)
    assert fired["alert"]["id"] == cleared["alert"]["id"] == firing.pk
    assert fired["gpu"]["uuid"] == firing.gpu.uuid
    assert fired["host"]["name"] == "it-alert-host"
    assert fired["rule"]["name"] == "GPU temperature above 85 °C for 2 s"
    assert cleared["alert"]["status"] == "resolved"
    assert cleared["alert"]["acknowledged_at"]
