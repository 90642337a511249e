"""Alerts: rules evaluated against the fleet's latest figures, one pass every 15 s (beat).

An alert is one rule's condition on one target (a GPU for the GPU metrics, a host otherwise).
At most one alert per rule and target is open at a time (a partial unique index says so):

    condition holds                       → pending (``since`` = now)
    pending, held for ``for_duration``    → firing: operators are told (in-app, e-mail, webhook)
    firing, an operator acknowledges      → acknowledged
    firing | acknowledged, condition false → resolved: operators are told again
    pending, condition false or no data   → deleted: nobody was told, so there is nothing to
                                            close, and the next breach starts the clock again

Each pass reads set-based (per rule: the targets breaching now, the rule's open alerts) and
writes transitions as conditional updates filtered by the status they leave, so that two
passes running at once cannot both fire or both resolve an alert: the row count says who won,
and only the winner notifies.

No data: figures are fresh only while the agent reports (host online, in maintenance or
draining). Targets of other hosts, and GPUs without the figure (no heartbeat yet, or one the
GPU or its driver cannot give: NULL, unknown, not 0), have no value: their open alerts keep
their state (a hot GPU whose host dropped off is not "resolved"; the host-offline rule
speaks for it). A target taken out of the fleet (host retired, GPU lost) resolves its alerts.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import math
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.mail import send_mass_mail
from django.core.validators import URLValidator
from django.db import IntegrityError, transaction
from django.db.models import Case, F, FloatField, Q, QuerySet, Value, When
from django.db.models.functions import Cast, NullIf
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from accounts.choices import AuditAction, NotificationLevel
from accounts.models import User
from accounts.services.audit import audit_record
from accounts.services.notifications import notification_create
from accounts.services.users import user_require_operator, users_by_language
from remotegpu.core.errors import Conflict, ValidationError

from ..choices import (
    GPU_METRICS,
    OPEN_ALERT_STATES,
    AlertMetric,
    AlertStatus,
    Comparison,
    GPUHealth,
    HostStatus,
    Severity,
)
from ..models import GPU, Alert, AlertRule, Host
from .hosts import host_silent

logger = logging.getLogger(__name__)

# Hosts whose agent reports, so whose latest figures are fresh.
REPORTING_STATES = (HostStatus.ONLINE, HostStatus.MAINTENANCE, HostStatus.DRAINING)

EVENT_FIRING = "alert.firing"
EVENT_RESOLVED = "alert.resolved"
SIGNATURE_HEADER = "X-RemoteGPU-Signature"
EVENT_HEADER = "X-RemoteGPU-Event"
WEBHOOK_TIMEOUT = 5  # seconds

# Audit actions of alerts and rules.
AUDIT_RULE_CREATED = AuditAction.ALERT_RULE_CREATED
AUDIT_RULE_UPDATED = AuditAction.ALERT_RULE_UPDATED
AUDIT_RULE_DELETED = AuditAction.ALERT_RULE_DELETED
AUDIT_ALERT_ACKNOWLEDGED = AuditAction.ALERT_ACKNOWLEDGED

MAX_FOR_DURATION = 7 * 24 * 3600
MIN_SECRET_LENGTH = 16
PERCENT_METRICS = frozenset(
    {
        AlertMetric.GPU_MEMORY_PERCENT,
        AlertMetric.GPU_UTILIZATION,
        AlertMetric.CPU_PERCENT,
        AlertMetric.MEMORY_PERCENT,
        AlertMetric.DISK_PERCENT,
    }
)
SEVERITY_LEVELS = {
    Severity.INFO: NotificationLevel.INFO,
    Severity.WARNING: NotificationLevel.WARNING,
    Severity.CRITICAL: NotificationLevel.ERROR,
}


# Values ------------------------------------------------------------------------------------


def _percent(used: str, total: str):
    return (
        Cast(F(used), FloatField())
        * Value(100.0)
        / NullIf(Cast(F(total), FloatField()), Value(0.0))
    )


def _value_expression(metric: str, now: datetime):
    """The metric's current value of one target, in SQL; NULL where there is none. A host is
    offline when offline detection said so, or when it drains and has fallen silent (it keeps
    its operator state, but the workloads on it are unwatched)."""
    return {
        AlertMetric.GPU_TEMPERATURE: lambda: F("temperature"),
        AlertMetric.GPU_MEMORY_PERCENT: lambda: _percent("memory_used", "memory_total"),
        AlertMetric.GPU_UTILIZATION: lambda: F("utilization"),
        AlertMetric.GPU_ECC_ERRORS: lambda: Cast(F("ecc_errors"), FloatField()),
        AlertMetric.CPU_PERCENT: lambda: F("cpu_percent"),
        AlertMetric.MEMORY_PERCENT: lambda: _percent("memory_used", "memory_total"),
        AlertMetric.DISK_PERCENT: lambda: _percent("disk_used", "disk_total"),
        AlertMetric.HOST_OFFLINE: lambda: Case(
            When(status=HostStatus.OFFLINE, then=Value(1.0)),
            When(Q(status=HostStatus.DRAINING) & host_silent(now), then=Value(1.0)),
            default=Value(0.0),
            output_field=FloatField(),
        ),
    }[metric]()


Target = tuple[int, int | None]  # (host id, GPU id or None)


def _targets(rule: AlertRule, now: datetime) -> QuerySet:
    """Every target of ``rule`` that has a value now, annotated with it as ``value``: GPUs for
    the GPU metrics, hosts otherwise. A silent host's figures are old, so it has none."""
    value = _value_expression(rule.metric, now)
    if rule.metric in GPU_METRICS:
        reporting = Host.objects.filter(status__in=REPORTING_STATES).exclude(host_silent(now))
        targets = GPU.objects.filter(host__in=reporting).exclude(health=GPUHealth.LOST)
    elif rule.metric == AlertMetric.HOST_OFFLINE:
        targets = Host.objects.exclude(status=HostStatus.RETIRED)
    else:
        targets = Host.objects.filter(status__in=REPORTING_STATES).exclude(host_silent(now))
    return targets.annotate(value=value).filter(value__isnull=False)


def _values(rule: AlertRule, targets: QuerySet) -> dict[Target, float]:
    if rule.metric in GPU_METRICS:
        rows = targets.values_list("host_id", "pk", "value")
        return {(host_id, gpu_id): value for host_id, gpu_id, value in rows}
    return {(host_id, None): value for host_id, value in targets.values_list("pk", "value")}


def _condition(rule: AlertRule) -> dict[str, float]:
    if rule.metric == AlertMetric.HOST_OFFLINE:
        return {"value__gt": 0}  # whatever a rule edited in the admin says
    return {f"value__{rule.comparison}": rule.threshold}


def format_value(metric: str, value: float | None) -> str:
    if value is None:
        return "—"
    if metric == AlertMetric.HOST_OFFLINE:
        return _("offline") if value else _("online")
    if metric == AlertMetric.GPU_TEMPERATURE:
        return f"{value:.0f} °C"
    if metric == AlertMetric.GPU_ECC_ERRORS:
        return f"{value:.0f}"
    return f"{value:.1f} %"


def alert_condition_text(rule: AlertRule) -> str:
    """``GPU temperature (°C) > 85 °C for 5 min``, as the pages show a rule."""
    if rule.metric == AlertMetric.HOST_OFFLINE:
        text = AlertMetric(rule.metric).label
    else:
        text = " ".join(
            [
                str(AlertMetric(rule.metric).label),
                Comparison(rule.comparison).label,
                format_value(rule.metric, rule.threshold),
            ]
        )
    if rule.for_duration:
        text = _("%(condition)s for %(duration)s") % {
            "condition": text,
            "duration": _duration_text(rule.for_duration),
        }
    return text


def _duration_text(seconds: int) -> str:
    if seconds % 3600 == 0:
        return _("%(n)d h") % {"n": seconds // 3600}
    if seconds % 60 == 0:
        return _("%(n)d min") % {"n": seconds // 60}
    return _("%(n)d s") % {"n": seconds}


def _message(rule: AlertRule, value: float | None) -> str:
    return (
        _("%(metric)s is %(value)s (rule: %(condition)s)")
        % {
            "metric": AlertMetric(rule.metric).label,
            "value": format_value(rule.metric, value),
            "condition": alert_condition_text(rule),
        }
    )[:300]


def alert_message_text(alert: Alert, rule: AlertRule | None = None) -> str:
    """The alert's message in the current language (``Alert.message`` keeps the words of the
    moment it was stored, in the server's language, for the API and webhooks)."""
    return _message(rule or alert.rule, alert.value)


def alert_target_text(alert: Alert) -> str:
    if alert.gpu_id is None:
        return alert.host.name
    return _("%(host)s GPU %(index)d") % {"host": alert.host.name, "index": alert.gpu.index}


# Evaluation --------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    opened: int = 0  # new pending alerts
    fired: int = 0
    resolved: int = 0
    discarded: int = 0  # pending alerts whose condition went away before they fired

    @property
    def changes(self) -> int:
        return self.opened + self.fired + self.resolved + self.discarded


def _key(alert: Alert) -> Target:
    return (alert.host_id, alert.gpu_id)


def _open_alerts(rule: AlertRule) -> dict[Target, Alert]:
    alerts = Alert.objects.filter(rule=rule, status__in=OPEN_ALERT_STATES).select_related(
        "host", "gpu"
    )
    return {_key(alert): alert for alert in alerts}


def alerts_evaluate(now: datetime | None = None) -> EvaluationResult:
    """One pass over the enabled rules: open, fire, resolve or discard alerts. Safe to run
    concurrently and to re-run; ``now`` is for tests."""
    now = now or timezone.now()
    result = EvaluationResult()
    for rule in AlertRule.objects.filter(enabled=True).order_by("pk"):
        _evaluate_rule(rule, now, result)
    return result


def _evaluate_rule(rule: AlertRule, now: datetime, result: EvaluationResult) -> None:
    breaching = _values(rule, _targets(rule, now).filter(**_condition(rule)))
    open_alerts = _open_alerts(rule)
    new = breaching.keys() - open_alerts.keys()
    if new:
        # A concurrent pass may have opened some of them: the unique index skips those.
        Alert.objects.bulk_create(
            [
                Alert(
                    rule=rule,
                    host_id=host_id,
                    gpu_id=gpu_id,
                    severity=rule.severity,
                    value=breaching[(host_id, gpu_id)],
                    message=_message(rule, breaching[(host_id, gpu_id)]),
                    since=now,
                )
                for host_id, gpu_id in new
            ],
            ignore_conflicts=True,
        )
        result.opened += len(new)
        open_alerts = _open_alerts(rule)

    fire_before = now - timedelta(seconds=rule.for_duration)
    undecided = []
    for key, alert in open_alerts.items():
        if key not in breaching:
            undecided.append(alert)
        elif alert.status == AlertStatus.PENDING and alert.since <= fire_before:
            result.fired += _fire(alert, rule, breaching[key], now)
    if undecided:
        _settle(rule, undecided, now, result)


def _settle(rule: AlertRule, alerts: list[Alert], now: datetime, result: EvaluationResult):
    """Open alerts whose target does not breach now: condition false, no data, or gone."""
    # Values of those targets that do not breach (a target breaching again since the first
    # query is left for the next pass).
    targets = _targets(rule, now).exclude(**_condition(rule))
    if rule.metric in GPU_METRICS:
        targets = targets.filter(pk__in=[alert.gpu_id for alert in alerts])
    else:
        targets = targets.filter(pk__in=[alert.host_id for alert in alerts])
    healthy = _values(rule, targets)
    for alert in alerts:
        key = _key(alert)
        gone = alert.host.status == HostStatus.RETIRED or (
            alert.gpu is not None and alert.gpu.health == GPUHealth.LOST
        )
        if alert.status == AlertStatus.PENDING:
            result.discarded += Alert.objects.filter(
                pk=alert.pk, status=AlertStatus.PENDING
            ).delete()[0]
        elif key in healthy:
            result.resolved += _resolve(alert, rule, healthy[key], now)
        elif gone:
            result.resolved += _resolve(alert, rule, None, now)
        # Otherwise no data: the alert keeps its state until the target reports again.


@transaction.atomic
def _fire(alert: Alert, rule: AlertRule, value: float, now: datetime) -> bool:
    message = _message(rule, value)
    won = Alert.objects.filter(pk=alert.pk, status=AlertStatus.PENDING).update(
        status=AlertStatus.FIRING, fired_at=now, value=value, message=message, updated_at=now
    )
    if won:
        alert.status, alert.fired_at, alert.value, alert.message = (
            AlertStatus.FIRING,
            now,
            value,
            message,
        )
        _notify(alert, rule, EVENT_FIRING)
    return bool(won)


@transaction.atomic
def _resolve(alert: Alert, rule: AlertRule, value: float | None, now: datetime) -> bool:
    won = Alert.objects.filter(
        pk=alert.pk, status__in=[AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED]
    ).update(status=AlertStatus.RESOLVED, resolved_at=now, value=value, updated_at=now)
    if won:
        alert.status, alert.resolved_at, alert.value = AlertStatus.RESOLVED, now, value
        _notify(alert, rule, EVENT_RESOLVED)
    return bool(won)


# Notifications -----------------------------------------------------------------------------


def alert_url(alert: Alert) -> str:
    return reverse("machines:alert_detail", args=[alert.pk])


def _notification_text(alert: Alert, rule: AlertRule, event: str) -> tuple[str, str, str]:
    """Title, body and notification level of ``event``."""
    target = alert_target_text(alert)
    if event == EVENT_FIRING:
        title = _("%(severity)s: %(rule)s on %(target)s") % {
            "severity": Severity(alert.severity).label,
            "rule": rule.label,
            "target": target,
        }
        body = _("%(message)s, since %(since)s.") % {
            "message": alert_message_text(alert, rule),  # in the reader's language
            "since": timezone.localtime(alert.since).strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        return title, body, SEVERITY_LEVELS[alert.severity]
    title = _("Resolved: %(rule)s on %(target)s") % {"rule": rule.label, "target": target}
    if alert.value is None:
        body = _("%(target)s is no longer monitored.") % {"target": target}
    else:
        body = _("%(metric)s is back to %(value)s.") % {
            "metric": AlertMetric(rule.metric).label,
            "value": format_value(rule.metric, alert.value),
        }
    return title, body, NotificationLevel.SUCCESS


def _notify(alert: Alert, rule: AlertRule, event: str) -> None:
    """In-app notifications now; e-mail and the webhook once the transition has committed."""
    url = alert_url(alert)
    operators = get_user_model().objects.filter(is_staff=True, is_active=True)
    messages = []
    # Each operator reads it in their own language: the texts are made once per language.
    for language, readers in users_by_language(operators).items():
        with translation.override(language):
            title, body, level = _notification_text(alert, rule, event)
        text = f"{body}\n\n{settings.SITE_URL.rstrip('/')}{url}\n"
        for operator in readers:
            notification_create(operator, title, body=body, level=level, url=url)
            if rule.notify_email and operator.email:
                messages.append((title, text, settings.DEFAULT_FROM_EMAIL, [operator.email]))
    if messages:
        transaction.on_commit(partial(_send_mail, messages))
    if rule.webhook_url:
        transaction.on_commit(partial(_enqueue_webhook, rule.pk, alert_payload(alert, rule, event)))


def _send_mail(messages: list[tuple]) -> None:
    # A mail server that is down must not stop the evaluation of the other rules.
    try:
        send_mass_mail(messages)
    except OSError:
        logger.exception("alert e-mail not sent")


def _enqueue_webhook(rule_id: int, payload: dict) -> None:
    from ..tasks import alert_webhook_task  # the tasks module imports this one

    # Delivery never holds up evaluation: a broker that is down (or, with eager tasks, a
    # receiver that fails) is logged and this delivery dropped; the alert itself stands, on
    # its page and in the operators' notifications.
    try:
        alert_webhook_task.delay(rule_id, payload)
    except Exception:
        logger.exception("alert webhook for rule %s not queued", rule_id)


def _isoformat(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def alert_payload(alert: Alert, rule: AlertRule, event: str) -> dict[str, Any]:
    """What the webhook receives (``sent_at`` is added at each delivery attempt)."""
    gpu = alert.gpu
    return {
        "event": event,
        "alert": {
            "id": alert.pk,
            "status": alert.status,
            "severity": alert.severity,
            "value": alert.value,
            "message": alert.message,
            "since": _isoformat(alert.since),
            "fired_at": _isoformat(alert.fired_at),
            "acknowledged_at": _isoformat(alert.acknowledged_at),
            "resolved_at": _isoformat(alert.resolved_at),
            "url": settings.SITE_URL.rstrip("/") + alert_url(alert),
        },
        "rule": {
            "id": rule.pk,
            "name": rule.name,
            "metric": rule.metric,
            "comparison": rule.comparison,
            "threshold": rule.threshold,
            "for_duration": rule.for_duration,
            "severity": rule.severity,
        },
        "host": {"id": alert.host.pk, "name": alert.host.name, "address": alert.host.address},
        "gpu": (
            {"id": gpu.pk, "uuid": gpu.uuid, "index": gpu.index, "model": gpu.model}
            if gpu is not None
            else None
        ),
    }


# Webhook delivery --------------------------------------------------------------------------


class WebhookDeliveryError(Exception):
    """A delivery that may succeed later (network error, timeout, 5xx, 408, 429): retried."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # A redirected POST would arrive as a GET without its body: report the 3xx instead.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def webhook_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the raw body>``, the value of ``X-RemoteGPU-Signature``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def alert_webhook_deliver(rule_id: int, payload: dict) -> int | None:
    """POST ``payload`` to the rule's webhook, signed with its secret; the answer's status.

    Raises ``WebhookDeliveryError`` for what a later attempt may fix; other refusals (4xx,
    redirects) are logged and not retried. ``None`` when the rule or its webhook is gone."""
    rule = AlertRule.objects.filter(pk=rule_id).first()
    if rule is None or not rule.webhook_url:
        return None
    body = json.dumps(
        {**payload, "sent_at": timezone.now().isoformat()}, separators=(",", ":")
    ).encode()
    request = urllib.request.Request(  # noqa: S310 (the rule's URL is validated as http(s))
        rule.webhook_url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "RemoteGPU-Alerts",
            SIGNATURE_HEADER: webhook_signature(rule.webhook_secret, body),
            EVENT_HEADER: payload["event"],
        },
    )
    try:
        with _opener.open(request, timeout=WEBHOOK_TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        if error.code >= 500 or error.code in (408, 429):
            raise WebhookDeliveryError(f"{rule.webhook_url} answered {error.code}") from error
        logger.warning(
            "webhook of alert rule %s refused %s: HTTP %s", rule.pk, payload["event"], error.code
        )
        return error.code
    except (OSError, http.client.HTTPException) as error:  # URLError and timeouts are OSErrors
        raise WebhookDeliveryError(f"{rule.webhook_url}: {error}") from error


# Operator actions --------------------------------------------------------------------------


def alert_acknowledge(*, operator: User, alert: Alert) -> Alert:
    """Someone is on it: a firing alert stops nagging until it resolves."""
    user_require_operator(operator)
    now = timezone.now()
    with transaction.atomic():
        won = Alert.objects.filter(pk=alert.pk, status=AlertStatus.FIRING).update(
            status=AlertStatus.ACKNOWLEDGED,
            acknowledged_at=now,
            acknowledged_by=operator,
            updated_at=now,
        )
        if not won:
            raise Conflict(_("Only a firing alert can be acknowledged."), code="not_firing")
        audit_record(AUDIT_ALERT_ACKNOWLEDGED, actor=operator, target=alert)
    alert.refresh_from_db()
    return alert


RULE_FIELDS = (
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
)


def _rule_validate(rule: AlertRule) -> None:
    """Every field of ``rule`` checked at once: one ``ValidationError`` listing them all."""
    errors: dict[str, list[str]] = {}

    def error(field, message):
        errors.setdefault(field, []).append(str(message))

    rule.name = (rule.name or "").strip()
    if not rule.name:
        error("name", _("Give the rule a name."))
    elif len(rule.name) > 100:
        error("name", _("At most 100 characters."))
    elif AlertRule.objects.filter(name__iexact=rule.name).exclude(pk=rule.pk).exists():
        error("name", _("Another rule has this name."))
    if rule.metric not in AlertMetric.values:
        error("metric", _("Choose a metric."))
    if rule.comparison not in Comparison.values:
        error("comparison", _("Choose a comparison."))
    if rule.severity not in Severity.values:
        error("severity", _("Choose a severity."))
    try:
        rule.threshold = float(rule.threshold)
    except (TypeError, ValueError):
        error("threshold", _("Enter a number."))
    else:
        if not math.isfinite(rule.threshold):
            error("threshold", _("Enter a number."))
        elif rule.metric in PERCENT_METRICS and not 0 <= rule.threshold <= 100:
            error("threshold", _("A percentage is between 0 and 100."))
        elif rule.metric == AlertMetric.GPU_ECC_ERRORS and rule.threshold < 0:
            error("threshold", _("An error count is not negative."))
    if rule.metric == AlertMetric.HOST_OFFLINE:
        # The condition is the host's status; comparison and threshold mean nothing here.
        rule.comparison, rule.threshold = Comparison.GT, 0.0
    if (
        isinstance(rule.for_duration, bool)
        or not isinstance(rule.for_duration, int)
        or not 0 <= rule.for_duration <= MAX_FOR_DURATION
    ):
        error("for_duration", _("Between 0 and 604800 seconds (7 days)."))
    rule.webhook_url = (rule.webhook_url or "").strip()
    rule.webhook_secret = rule.webhook_secret or ""
    if rule.webhook_url:
        if not rule.webhook_url.lower().startswith(("http://", "https://")):
            error("webhook_url", _("Enter an http:// or https:// URL."))
        elif len(rule.webhook_url) > 200:
            error("webhook_url", _("At most 200 characters."))
        else:
            try:
                URLValidator(schemes=["http", "https"])(rule.webhook_url)
            except DjangoValidationError:
                error("webhook_url", _("Enter an http:// or https:// URL."))
        if len(rule.webhook_secret) < MIN_SECRET_LENGTH:
            error(
                "webhook_secret",
                _("A webhook needs a secret of at least %(n)d characters to sign its payloads.")
                % {"n": MIN_SECRET_LENGTH},
            )
        elif len(rule.webhook_secret) > 200:
            error("webhook_secret", _("At most 200 characters."))
    else:
        rule.webhook_secret = ""
    if errors:
        raise ValidationError(fields=errors)


def _rule_save(rule: AlertRule) -> None:
    try:
        with transaction.atomic():
            rule.save()
    except IntegrityError as error:  # the same name, saved by someone else just now
        raise ValidationError.for_field("name", _("Another rule has this name.")) from error


def _audit_fields(rule: AlertRule) -> dict[str, Any]:
    details = {field: getattr(rule, field) for field in RULE_FIELDS if field != "webhook_secret"}
    details["webhook_secret_set"] = bool(rule.webhook_secret)
    return details


@transaction.atomic
def alert_rule_create(*, operator: User, **fields) -> AlertRule:
    """A new rule; every field is checked, errors come back by field."""
    user_require_operator(operator)
    unknown = set(fields) - set(RULE_FIELDS)
    if unknown:
        raise TypeError(f"unknown alert rule fields: {sorted(unknown)}")
    rule = AlertRule(**fields)
    _rule_validate(rule)
    _rule_save(rule)
    audit_record(AUDIT_RULE_CREATED, actor=operator, target=rule, details=_audit_fields(rule))
    return rule


@transaction.atomic
def alert_rule_update(*, operator: User, rule: AlertRule, **changes) -> AlertRule:
    """Change some fields of a rule. A blank ``webhook_secret`` keeps the current one.

    When the metric changes, or the rule is disabled, its open alerts are closed without
    notifications: they no longer describe what the rule watches."""
    user_require_operator(operator)
    unknown = set(changes) - set(RULE_FIELDS)
    if unknown:
        raise TypeError(f"unknown alert rule fields: {sorted(unknown)}")
    rule = AlertRule.objects.select_for_update().get(pk=rule.pk)
    before = _audit_fields(rule)
    if not changes.get("webhook_secret"):
        changes.pop("webhook_secret", None)
    for field, value in changes.items():
        setattr(rule, field, value)
    _rule_validate(rule)
    _rule_save(rule)
    after = _audit_fields(rule)
    if after["metric"] != before["metric"] or not rule.enabled:
        _close_open_alerts(rule)
    changed = {
        field: [before[field], after[field]] for field in after if before[field] != after[field]
    }
    if "webhook_secret" in changes:
        changed["webhook_secret"] = ["…", "…"]  # that it changed, never what it is
    if changed:
        audit_record(AUDIT_RULE_UPDATED, actor=operator, target=rule, details=changed)
    return rule


def alert_rule_set_enabled(*, operator: User, rule: AlertRule, enabled: bool) -> AlertRule:
    """Enable or disable a rule; disabling closes its open alerts quietly."""
    return alert_rule_update(operator=operator, rule=rule, enabled=enabled)


@transaction.atomic
def alert_rule_delete(*, operator: User, rule: AlertRule) -> None:
    """Delete a rule and its alerts (disable it instead to keep their history)."""
    user_require_operator(operator)
    audit_record(AUDIT_RULE_DELETED, actor=operator, target=rule, details=_audit_fields(rule))
    rule.delete()


def _close_open_alerts(rule: AlertRule) -> None:
    now = timezone.now()
    Alert.objects.filter(rule=rule, status=AlertStatus.PENDING).delete()
    Alert.objects.filter(
        rule=rule, status__in=[AlertStatus.FIRING, AlertStatus.ACKNOWLEDGED]
    ).update(status=AlertStatus.RESOLVED, resolved_at=now, updated_at=now)
