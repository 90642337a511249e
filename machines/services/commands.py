"""Durable commands: a row first (``pending``), then a message; ``sent -> acked ->
succeeded|failed``. On reconnect every open command is resent; the agent de-duplicates by id.
A command past its deadline fails visibly."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import timedelta

from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import User
from remotegpu.core.errors import PermissionDenied, ValidationError

from ..choices import EPHEMERAL_COMMAND_KINDS, OPEN_COMMAND_STATES, CommandKind, CommandStatus
from ..models import AgentCommand, Host
from .realtime import send_to_agent

DEFAULT_TIMEOUT = timedelta(minutes=5)
MAX_RESULT_BYTES = 200_000


def command_create(
    *,
    host: Host,
    kind: str,
    payload: dict | None = None,
    requested_by: User | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> AgentCommand:
    if requested_by is not None and not requested_by.is_staff:
        raise PermissionDenied(_("Only operators can send commands to hosts."))
    if kind not in CommandKind.values:
        raise ValidationError.for_field("kind", _("Unknown command."))
    command = AgentCommand.objects.create(
        host=host,
        kind=kind,
        payload=payload or {},
        deadline=timezone.now() + timeout,
        requested_by=requested_by,
    )
    send_to_agent(host.pk, command_push_event(command))
    return command


def command_push_event(command: AgentCommand) -> dict:
    """The group event that pushes ``command`` to its host's connection. It carries the whole
    command, so the connection sends it without reading it back first (a database round trip
    on the provisioning path), unless the payload holds a registry password: that one stays
    out of the channel layer and is read from the database."""
    event = {"type": "agent.command", "command_id": str(command.pk)}
    if not command.payload.get("registry_auth"):
        event["command"] = {
            "kind": command.kind,
            "payload": command.payload,
            "deadline": command.deadline.timestamp(),
        }
    return event


def command_list_to_send(
    host_id: int, command_id: str | None = None, *, unsent_only: bool = False
) -> list[AgentCommand]:
    """Open commands to (re)send to the agent, oldest first, marking them sent.

    ``unsent_only``: just the ones never sent (their push was lost, e.g. while Redis
    restarted); the periodic resync of a live connection asks for those."""
    now = timezone.now()
    states = [CommandStatus.PENDING] if unsent_only else OPEN_COMMAND_STATES
    queryset = AgentCommand.objects.filter(host_id=host_id, status__in=states, deadline__gt=now)
    if command_id is not None:
        queryset = queryset.filter(pk=command_id)
    commands = list(queryset.order_by("created_at"))
    command_mark_sent(host_id, [command.pk for command in commands], now=now)
    return commands


def command_mark_sent(host_id: int, command_ids: list, *, now=None) -> int:
    """Record that these commands went to the agent (once more): a pending one becomes sent;
    one the agent acknowledged meanwhile keeps its state."""
    if not command_ids:
        return 0
    now = now or timezone.now()
    pending = Q(status=CommandStatus.PENDING)
    return AgentCommand.objects.filter(host_id=host_id, pk__in=command_ids).update(
        status=Case(When(pending, then=Value(CommandStatus.SENT)), default=F("status")),
        sent_at=Coalesce(F("sent_at"), Value(now)),
        attempts=F("attempts") + 1,
    )


def _command_uuid(command_id: str) -> uuid.UUID | None:
    """The agent says which command it means; anything but a UUID means none of ours."""
    try:
        return uuid.UUID(command_id)
    except (TypeError, ValueError):
        return None


def command_acknowledge(host_id: int, command_id: str) -> bool:
    """The agent has the command; an ack for another host's or an unknown command is a no-op."""
    pk = _command_uuid(command_id)
    if pk is None:
        return False
    return bool(
        AgentCommand.objects.filter(
            host_id=host_id, pk=pk, status__in=[CommandStatus.PENDING, CommandStatus.SENT]
        ).update(status=CommandStatus.ACKED, acked_at=timezone.now())
    )


# Apps above this one (environments) act on their commands' outcomes and progress without this
# app importing them: a handler per command kind, registered when the app is ready.
_result_handlers: dict[str, Callable[[AgentCommand], None]] = {}
_progress_handlers: dict[str, Callable[[AgentCommand, dict], None]] = {}


def command_result_handler(kind: str):
    """Register ``function(command)``, called once when a command of ``kind`` finishes
    (succeeded, failed, or past its deadline), inside the transaction that records it."""

    def register(function):
        _result_handlers[kind] = function
        return function

    return register


def command_progress_handler(kind: str):
    """Register ``function(command, progress)`` for a running command's progress reports."""

    def register(function):
        _progress_handlers[kind] = function
        return function

    return register


def _finished(command: AgentCommand) -> None:
    handler = _result_handlers.get(command.kind)
    if handler is not None:
        handler(command)


@transaction.atomic
def command_finish(host_id: int, command_id: str, *, ok: bool, result: dict, error: str) -> bool:
    """Record the outcome once; a resent result for a finished command changes nothing."""
    pk = _command_uuid(command_id)
    if pk is None:
        return False
    if len(json.dumps(result)) > MAX_RESULT_BYTES:
        result = {"truncated": True}
        error = error or "result too large"
    updated = AgentCommand.objects.filter(
        host_id=host_id, pk=pk, status__in=OPEN_COMMAND_STATES
    ).update(
        status=CommandStatus.SUCCEEDED if ok else CommandStatus.FAILED,
        result=result,
        error=error[:10_000],
        finished_at=timezone.now(),
    )
    if updated:
        _finished(AgentCommand.objects.get(pk=pk))
    return bool(updated)


def command_progress(host_id: int, command_id: str, progress: dict) -> bool:
    """A running command's progress, handed to its kind's handler; nothing is stored here."""
    pk = _command_uuid(command_id)
    if pk is None:
        return False
    command = AgentCommand.objects.filter(
        host_id=host_id, pk=pk, status__in=OPEN_COMMAND_STATES
    ).first()
    handler = _progress_handlers.get(command.kind) if command is not None else None
    if handler is None:
        return False
    handler(command, progress)
    return True


def command_expire_overdue() -> int:
    """Open commands past their deadline fail with a reason (beat)."""
    now = timezone.now()
    expired = 0
    overdue = AgentCommand.objects.filter(status__in=OPEN_COMMAND_STATES, deadline__lte=now)
    for pk in overdue.values_list("pk", flat=True):
        with transaction.atomic():
            if AgentCommand.objects.filter(pk=pk, status__in=OPEN_COMMAND_STATES).update(
                status=CommandStatus.FAILED,
                error=_("No result before the deadline."),
                finished_at=now,
            ):
                expired += 1
                _finished(AgentCommand.objects.get(pk=pk))
    return expired


COMMAND_RETENTION = timedelta(days=30)
EPHEMERAL_COMMAND_RETENTION = timedelta(hours=1)


def command_prune(now=None) -> int:
    """Finished commands past their retention go (beat, hourly): reads such as log tails after
    an hour, the rest after 30 days. Open commands stay whatever their age."""
    now = now or timezone.now()
    finished = AgentCommand.objects.exclude(status__in=OPEN_COMMAND_STATES)
    deleted, _counts = (
        finished.filter(
            kind__in=EPHEMERAL_COMMAND_KINDS, finished_at__lt=now - EPHEMERAL_COMMAND_RETENTION
        )
        | finished.filter(finished_at__lt=now - COMMAND_RETENTION)
    ).delete()
    return deleted
