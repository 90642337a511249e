"""What the host's answers to environment commands mean for the environment.

Registered with the fleet's command service (``command_result_handler``): each runs once, when
its command finishes, fails or passes its deadline, inside the transaction that records that.
An outcome of any command but the environment's latest changes nothing: a slow result of an
old start must not undo a later stop.
"""

from __future__ import annotations

from django.core.cache import cache
from django.utils import timezone
from django.utils.translation import gettext as _

from machines.choices import CommandStatus
from machines.models import AgentCommand
from machines.services.commands import command_progress_handler, command_result_handler

from ..choices import EnvironmentStatus as S
from ..choices import StatusReason
from ..models import Environment
from .images import PREPULL_TIMEOUT_SECONDS, prepull_progress_key
from .lifecycle import (
    environment_event,
    environment_release_gpus,
    environment_release_ports,
    environment_transition,
)
from .realtime import environment_notify


def _environment(command: AgentCommand) -> Environment | None:
    environment_id = command.payload.get("environment_id")
    if not isinstance(environment_id, int):
        return None
    environment = (
        Environment.objects.select_related("organization", "host", "spec")
        .filter(pk=environment_id, host_id=command.host_id)
        .first()
    )
    if environment is None or environment.last_command_id != command.pk:
        return None
    return environment


def _wipe_secrets(command: AgentCommand) -> None:
    """The registry password travelled in the payload; it is not kept once the command ends."""
    if command.payload.get("registry_auth"):
        payload = {**command.payload, "registry_auth": {}}
        AgentCommand.objects.filter(pk=command.pk).update(payload=payload)


def _failure_reason(command: AgentCommand) -> str:
    if command.result.get("exception") == "PullError":
        return StatusReason.IMAGE_PULL_FAILED
    if command.status == CommandStatus.FAILED and not command.result:
        return StatusReason.PROVISION_TIMEOUT  # no answer before the deadline
    return StatusReason.PROVISION_FAILED


def _agent_time(command: AgentCommand) -> float | None:
    value = command.result.get("time")
    return float(value) if isinstance(value, int | float) else None


@command_result_handler("environment_run")
def environment_run_finished(command: AgentCommand) -> None:
    _wipe_secrets(command)
    environment = _environment(command)
    if environment is None:
        return
    if command.status == CommandStatus.SUCCEEDED:
        environment_transition(
            environment,
            source={S.PROVISIONING, S.STARTING},
            target=S.RUNNING,
            message=_("Running."),
            container_id=str(command.result.get("container_id", ""))[:64],
            container_state="running",
            container_state_since=timezone.now(),
            agent_ran_at=_agent_time(command),
            started_at=timezone.now(),
            deadline=None,
            progress={},
        )
        return
    reason = _failure_reason(command)
    message = _("Failed: %(error)s") % {"error": command.error or reason}
    if environment.status == S.PROVISIONING:
        if environment_transition(
            environment,
            source=S.PROVISIONING,
            target=S.FAILED,
            reason=reason,
            message=message,
            deadline=None,
        ):
            environment_release_gpus(environment)
            environment_release_ports(environment)
    elif environment_transition(
        environment,
        source=S.STARTING,
        target=S.STOPPED,
        reason=reason,
        message=message,
        deadline=None,
        stopped_at=timezone.now(),
    ):
        environment_release_gpus(environment)


@command_progress_handler("environment_run")
def environment_run_progress(command: AgentCommand, progress: dict) -> None:
    environment = _environment(command)
    if environment is None or environment.status not in (S.PROVISIONING, S.STARTING):
        return
    phase = progress.get("phase")
    first_report = environment.progress.get("phase") != phase
    Environment.objects.filter(pk=environment.pk).update(progress=progress)
    environment.progress = progress
    if first_report and phase == "pulling":
        environment_event(
            environment, _("Pulling %(image)s.") % {"image": environment.image_reference}
        )
    elif first_report and phase == "pulled":
        environment_event(environment, _("Image pulled."), **progress)
    else:
        environment_notify(environment)


@command_result_handler("environment_stop")
def environment_stop_finished(command: AgentCommand) -> None:
    environment = _environment(command)
    if environment is None:
        return
    if command.status == CommandStatus.SUCCEEDED:
        if environment_transition(
            environment,
            source=S.STOPPING,
            target=S.STOPPED,
            reason=environment.status_reason,
            message=_("Stopped; /workspace is kept."),
            stopped_at=timezone.now(),
            container_id="",
            container_state="",
        ):
            environment_release_gpus(environment)
        return
    environment_transition(
        environment,
        source=S.STOPPING,
        target=S.RUNNING,
        message=_("Could not stop: %(error)s") % {"error": command.error},
    )


@command_result_handler("environment_restart")
def environment_restart_finished(command: AgentCommand) -> None:
    environment = _environment(command)
    if environment is None:
        return
    ok = command.status == CommandStatus.SUCCEEDED
    environment_transition(
        environment,
        source=S.STARTING,
        target=S.RUNNING,
        message=_("Restarted.")
        if ok
        else _("Could not restart: %(error)s") % {"error": command.error},
        agent_ran_at=_agent_time(command) if ok else environment.agent_ran_at,
        deadline=None,
    )


@command_result_handler("environment_delete")
def environment_delete_finished(command: AgentCommand) -> None:
    environment = _environment(command)
    if environment is None:
        return
    if command.status != CommandStatus.SUCCEEDED:
        environment_event(
            environment,
            _("The host could not delete it yet: %(error)s") % {"error": command.error},
        )
        return
    if environment_transition(
        environment,
        source=S.DELETING,
        target=S.DELETED,
        reason=environment.status_reason,
        message=_("Deleted: its container and volume are gone."),
        deleted_at=timezone.now(),
        container_id="",
        container_state="",
    ):
        environment_release_gpus(environment)
        environment_release_ports(environment)


@command_progress_handler("image_pull")
def image_pull_progress(command: AgentCommand, progress: dict) -> None:
    """A pre-pull's layers and bytes so far, for the operators' pre-pull page."""
    cache.set(prepull_progress_key(command.pk), progress, PREPULL_TIMEOUT_SECONDS)


@command_result_handler("image_pull")
def image_pull_finished(command: AgentCommand) -> None:
    _wipe_secrets(command)
