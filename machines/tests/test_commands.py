"""Durable commands: a row first, then a message; ``pending -> sent -> acked -> finished``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from machines.choices import CommandStatus
from machines.models import AgentCommand
from machines.services.commands import (
    MAX_RESULT_BYTES,
    command_acknowledge,
    command_create,
    command_expire_overdue,
    command_finish,
    command_list_to_send,
    command_mark_sent,
    command_push_event,
)
from remotegpu.core.errors import PermissionDenied, ValidationError

from .factories import AgentCommandFactory, HostFactory


def test_command_create_stores_a_pending_row(operator, django_capture_on_commit_callbacks):
    host = HostFactory()
    with django_capture_on_commit_callbacks() as callbacks:
        command = command_create(
            host=host,
            kind="collect_diagnostics",
            payload={"verbose": True},
            requested_by=operator,
            timeout=timedelta(minutes=2),
        )
    command = AgentCommand.objects.get(pk=command.pk)
    assert (command.host, command.kind, command.payload, command.status) == (
        host,
        "collect_diagnostics",
        {"verbose": True},
        CommandStatus.PENDING,
    )
    assert (command.requested_by, command.attempts, command.sent_at) == (operator, 0, None)
    assert timedelta(seconds=110) < command.deadline - timezone.now() <= timedelta(minutes=2)
    assert len(callbacks) == 1  # the push to the agent waits for the commit


def test_the_push_carries_the_command_but_never_a_registry_password(db):
    command = AgentCommandFactory(kind="environment_run", payload={"image": "x:1"})
    event = command_push_event(command)
    assert event["command_id"] == str(command.pk)
    assert event["command"] == {
        "kind": "environment_run",
        "payload": {"image": "x:1"},
        "deadline": command.deadline.timestamp(),
    }
    secret = AgentCommandFactory(
        kind="environment_run", payload={"registry_auth": {"password": "s3cret"}}
    )
    assert "command" not in command_push_event(secret)  # the connection reads it from the row


def test_mark_sent_counts_attempts_and_keeps_an_acknowledgement(db):
    pending = AgentCommandFactory()
    acked = AgentCommandFactory(host=pending.host, status=CommandStatus.ACKED)
    other_host = AgentCommandFactory()
    assert command_mark_sent(pending.host_id, [pending.pk, acked.pk, other_host.pk]) == 2
    pending.refresh_from_db()
    acked.refresh_from_db()
    other_host.refresh_from_db()
    assert (pending.status, pending.attempts) == (CommandStatus.SENT, 1)
    assert pending.sent_at is not None
    assert (acked.status, acked.attempts) == (CommandStatus.ACKED, 1)
    assert (other_host.status, other_host.attempts) == (CommandStatus.PENDING, 0)
    first_sent = pending.sent_at
    command_mark_sent(pending.host_id, [pending.pk])
    pending.refresh_from_db()
    assert (pending.sent_at, pending.attempts) == (first_sent, 2)


def test_command_create_without_a_requester_is_the_system(db):
    command = command_create(host=HostFactory(), kind="ping")
    assert command.requested_by is None


def test_command_create_is_for_operators_only(member):
    with pytest.raises(PermissionDenied):
        command_create(host=HostFactory(), kind="ping", requested_by=member)
    assert not AgentCommand.objects.exists()


@pytest.mark.parametrize("kind", ["rm_rf", "", "PING"])
def test_command_create_refuses_unknown_kinds(operator, kind):
    with pytest.raises(ValidationError) as excinfo:
        command_create(host=HostFactory(), kind=kind, requested_by=operator)
    assert set(excinfo.value.fields) == {"kind"}
    assert not AgentCommand.objects.exists()


def test_list_to_send_returns_open_commands_oldest_first_and_marks_them_sent(db):
    host = HostFactory()
    now = timezone.now()
    older = AgentCommandFactory(host=host)
    AgentCommand.objects.filter(pk=older.pk).update(created_at=now - timedelta(minutes=1))
    newer = AgentCommandFactory(host=host)
    acked = AgentCommandFactory(host=host, status=CommandStatus.ACKED, attempts=1)
    AgentCommand.objects.filter(pk=acked.pk).update(created_at=now + timedelta(seconds=1))
    AgentCommandFactory(host=host, status=CommandStatus.SUCCEEDED)
    AgentCommandFactory(host=host, status=CommandStatus.FAILED)
    AgentCommandFactory(host=host, deadline=now - timedelta(seconds=1))
    AgentCommandFactory()  # another host's

    sent = command_list_to_send(host.pk)

    assert [c.pk for c in sent] == [older.pk, newer.pk, acked.pk]
    rows = {c.pk: c for c in AgentCommand.objects.filter(pk__in=[c.pk for c in sent])}
    assert rows[older.pk].status == rows[newer.pk].status == CommandStatus.SENT
    assert rows[older.pk].sent_at is not None
    # Acknowledged commands are resent (the agent de-duplicates) but stay acknowledged.
    assert rows[acked.pk].status == CommandStatus.ACKED
    assert [rows[pk].attempts for pk in (older.pk, newer.pk, acked.pk)] == [1, 1, 2]

    # A reconnect: resent, attempts counted again.
    command_list_to_send(host.pk)
    assert AgentCommand.objects.get(pk=older.pk).attempts == 2


def test_list_to_send_one_command(db):
    host = HostFactory()
    wanted, other = AgentCommandFactory(host=host), AgentCommandFactory(host=host)
    assert [c.pk for c in command_list_to_send(host.pk, str(wanted.pk))] == [wanted.pk]
    assert AgentCommand.objects.get(pk=other.pk).status == CommandStatus.PENDING
    # Another host's command is never sent to this one.
    stranger = AgentCommandFactory()
    assert command_list_to_send(host.pk, str(stranger.pk)) == []
    assert AgentCommand.objects.get(pk=stranger.pk).status == CommandStatus.PENDING


def test_acknowledge_is_idempotent_and_host_bound(db):
    command = AgentCommandFactory(status=CommandStatus.SENT)
    assert command_acknowledge(command.host_id + 1000, str(command.pk)) is False
    assert AgentCommand.objects.get(pk=command.pk).status == CommandStatus.SENT

    assert command_acknowledge(command.host_id, str(command.pk)) is True
    first = AgentCommand.objects.get(pk=command.pk)
    assert command_acknowledge(command.host_id, str(command.pk)) is False
    second = AgentCommand.objects.get(pk=command.pk)
    assert first.status == second.status == CommandStatus.ACKED
    assert first.acked_at == second.acked_at


def test_finish_records_the_first_result_only(db):
    command = AgentCommandFactory(status=CommandStatus.ACKED)
    assert command_finish(command.host_id, str(command.pk), ok=True, result={"pong": 1}, error="")
    assert not command_finish(
        command.host_id, str(command.pk), ok=False, result={"late": 1}, error="boom"
    )
    command.refresh_from_db()
    assert (command.status, command.result, command.error) == (
        CommandStatus.SUCCEEDED,
        {"pong": 1},
        "",
    )
    assert command.finished_at is not None


def test_finish_of_another_hosts_command_changes_nothing(db):
    command = AgentCommandFactory(status=CommandStatus.SENT)
    other_host = HostFactory()
    assert not command_finish(other_host.pk, str(command.pk), ok=True, result={}, error="")
    assert AgentCommand.objects.get(pk=command.pk).status == CommandStatus.SENT


def test_a_failure_and_an_oversized_result(db):
    failed = AgentCommandFactory()
    command_finish(failed.host_id, str(failed.pk), ok=False, result={}, error="e" * 20_000)
    failed.refresh_from_db()
    assert failed.status == CommandStatus.FAILED
    assert failed.error == "e" * 10_000

    big = AgentCommandFactory()
    command_finish(
        big.host_id, str(big.pk), ok=True, result={"x": "y" * MAX_RESULT_BYTES}, error=""
    )
    big.refresh_from_db()
    assert big.status == CommandStatus.SUCCEEDED
    assert big.result == {"truncated": True}
    assert big.error == "result too large"


@pytest.mark.parametrize("command_id", ["nope", "", "1234"])
def test_garbage_command_ids_are_no_commands(db, command_id):
    command = AgentCommandFactory(status=CommandStatus.SENT)
    assert command_acknowledge(command.host_id, command_id) is False
    assert command_finish(command.host_id, command_id, ok=True, result={}, error="") is False
    assert AgentCommand.objects.get(pk=command.pk).status == CommandStatus.SENT


def test_expire_overdue_fails_open_commands_past_their_deadline(db):
    past = timezone.now() - timedelta(seconds=1)
    overdue = [
        AgentCommandFactory(status=status, deadline=past)
        for status in (CommandStatus.PENDING, CommandStatus.SENT, CommandStatus.ACKED)
    ]
    finished = AgentCommandFactory(status=CommandStatus.SUCCEEDED, deadline=past)
    current = AgentCommandFactory()

    assert command_expire_overdue() == 3
    assert command_expire_overdue() == 0

    for command in overdue:
        command.refresh_from_db()
        assert command.status == CommandStatus.FAILED
        assert command.error
        assert command.finished_at is not None
    assert AgentCommand.objects.get(pk=finished.pk).status == CommandStatus.SUCCEEDED
    assert AgentCommand.objects.get(pk=current.pk).status == CommandStatus.PENDING
    # A late result after the deadline changes nothing.
    command = overdue[0]
    assert not command_finish(command.host_id, str(command.pk), ok=True, result={}, error="")


def test_finished_commands_are_pruned_after_their_retention(db):
    from machines.services.commands import command_prune

    now = timezone.now()
    host = HostFactory()

    def command(kind, status, age):
        return AgentCommandFactory(
            host=host, kind=kind, status=status, finished_at=now - age if status else None
        )

    old_logs = command("environment_logs", CommandStatus.SUCCEEDED, timedelta(hours=2))
    fresh_logs = command("environment_logs", CommandStatus.SUCCEEDED, timedelta(minutes=5))
    old_run = command("environment_run", CommandStatus.FAILED, timedelta(days=31))
    recent_run = command("environment_run", CommandStatus.SUCCEEDED, timedelta(days=2))
    open_one = AgentCommandFactory(host=host, kind="environment_run", status=CommandStatus.SENT)

    assert command_prune(now) == 2
    left = set(AgentCommand.objects.values_list("pk", flat=True))
    assert left == {fresh_logs.pk, recent_run.pk, open_one.pk}
    assert old_logs.pk not in left
    assert old_run.pk not in left
