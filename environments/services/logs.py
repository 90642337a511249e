"""An environment's container output, read from its host through the command channel."""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils.translation import gettext as _

from machines.choices import CommandStatus
from machines.models import AgentCommand
from machines.services.commands import command_create
from remotegpu.core.errors import Conflict

from ..choices import CONTAINER_STATES
from ..models import Environment

POLL_INTERVAL = 0.05
MAX_TAIL = 10_000


def environment_logs(environment: Environment, *, tail: int = 200) -> list[str]:
    """The last ``tail`` lines of the container's output (with Docker's time stamps)."""
    if environment.status not in CONTAINER_STATES or environment.host is None:
        raise Conflict(_("This environment has no container, so it has no output to show."))
    if not environment.host.connected:
        raise Conflict(_("Its host is not connected right now; try again later."))
    with transaction.atomic():
        command = command_create(
            host=environment.host,
            kind="environment_logs",
            payload={"environment_id": environment.pk, "tail": max(1, min(tail, MAX_TAIL))},
            timeout=timedelta(seconds=settings.ENVIRONMENT_LOGS_TIMEOUT),
        )
    deadline = time.monotonic() + settings.ENVIRONMENT_LOGS_TIMEOUT
    while time.monotonic() < deadline:
        finished = (
            AgentCommand.objects.filter(pk=command.pk, finished_at__isnull=False)
            .values("status", "result", "error")
            .first()
        )
        if finished is not None:
            if finished["status"] != CommandStatus.SUCCEEDED:
                raise Conflict(_("The host could not read the logs: %(error)s") % finished)
            return list(finished["result"].get("lines", []))
        time.sleep(POLL_INTERVAL)
    raise Conflict(_("The host did not answer in time; try again."))
