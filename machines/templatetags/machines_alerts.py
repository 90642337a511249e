"""Template helpers of the alert pages: the firing count of the operator navigation, and a
rule's condition in words."""

from django import template

from .. import selectors
from ..services.alerts import (
    alert_condition_text,
    alert_message_text,
    alert_target_text,
    format_value,
)

register = template.Library()


@register.simple_tag
def alert_firing_count() -> int:
    return selectors.alert_firing_count()


@register.filter
def alert_condition(rule) -> str:
    return alert_condition_text(rule)


@register.filter
def alert_target(alert) -> str:
    return alert_target_text(alert)


@register.filter
def alert_value(alert) -> str:
    return format_value(alert.rule.metric, alert.value)


@register.filter
def alert_message(alert) -> str:
    return alert_message_text(alert)
