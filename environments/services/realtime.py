"""Status, events and pull progress pushed to the pages that show an environment."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


def environment_group(environment_id: int) -> str:
    return f"environment.{environment_id}"


def organization_environments_group(organization_id: int) -> str:
    return f"environments.org.{organization_id}"


def operator_environments_group() -> str:
    return "environments.all"


def environment_notify(environment, **extra) -> None:
    """After commit, tell every page showing ``environment`` (its own, its organisation's list,
    the operators' list) what it is now. ``extra``: an event line or pull progress."""
    layer = get_channel_layer()
    if layer is None:
        return
    event = {
        "type": "environment.update",
        "environment": {
            "id": environment.pk,
            "status": environment.status,
            "status_display": str(environment.get_status_display()),
            "reason": environment.status_reason,
            "message": environment.status_message,
            "progress": environment.progress,
            **extra,
        },
    }
    groups = [
        environment_group(environment.pk),
        organization_environments_group(environment.organization_id),
        operator_environments_group(),
    ]

    async def send_all():
        for group in groups:
            await layer.group_send(group, event)

    # One hop into the event loop for the three groups (each hop costs milliseconds).
    transaction.on_commit(async_to_sync(send_all))
