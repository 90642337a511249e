"""Messages to a host's agent connection, wherever (whichever daphne process) it is."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

# Close codes the agent understands (docs/agent-protocol.md).
CLOSE_CREDENTIAL_INVALID = 4401
CLOSE_CREDENTIAL_REVOKED = 4403


def agent_group(host_id: int) -> str:
    return f"agent.host.{host_id}"


def fleet_group() -> str:
    """Operator pages listening for host changes."""
    return "fleet"


def send_to_agent(host_id: int, event: dict) -> None:
    """Send after commit, so the consumer reads what this transaction wrote."""
    layer = get_channel_layer()
    if layer is None:
        return
    transaction.on_commit(lambda: async_to_sync(layer.group_send)(agent_group(host_id), event))


def disconnect_agent(host_id: int, code: int = CLOSE_CREDENTIAL_REVOKED) -> None:
    send_to_agent(host_id, {"type": "agent.disconnect", "code": code})
