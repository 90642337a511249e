"""A real Celery worker runs the tasks this process enqueues through the Redis broker."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from accounts.choices import InvitationStatus
from accounts.models import Invitation, User
from accounts.services.users import user_set_active
from accounts.tasks import invitation_expire_task
from accounts.tests.factories import OperatorFactory, OrganizationFactory, UserFactory

from .conftest import wait_until

pytestmark = pytest.mark.integration

TASK_TIMEOUT = 30


def _session_keys_of(user: User) -> set[str]:
    return {
        session.session_key
        for session in Session.objects.all()
        if str(session.get_decoded().get("_auth_user_id")) == str(user.pk)
    }


def _signed_in(user: User) -> str:
    client = Client()
    client.force_login(user)
    return client.session.session_key


def test_disabling_a_user_ends_their_sessions_in_the_worker(
    transactional_db, celery_worker, celery_through_broker
):
    operator = OperatorFactory()
    user = UserFactory()
    user_session = _signed_in(user)
    operator_session = _signed_in(operator)
    assert _session_keys_of(user) == {user_session}

    # Commits, then enqueues user_end_sessions_task on commit; this process never runs it.
    user_set_active(operator=operator, user=user, active=False)

    wait_until(
        lambda: not _session_keys_of(user),
        timeout=TASK_TIMEOUT,
        what="the worker to end the disabled user's session",
        process=celery_worker,
    )
    assert "accounts.tasks.user_end_sessions_task" in celery_worker.output()
    assert _session_keys_of(operator) == {operator_session}
    user.refresh_from_db()
    assert user.is_active is False


def test_task_result_comes_back_from_the_worker(
    transactional_db, celery_worker, celery_through_broker
):
    organization = OrganizationFactory()
    due = Invitation.objects.create(
        organization=organization,
        email="late@example.com",
        key_digest=hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
        expires_at=timezone.now() - timedelta(minutes=1),
    )
    current = Invitation.objects.create(
        organization=organization,
        email="early@example.com",
        key_digest=hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
        expires_at=timezone.now() + timedelta(days=1),
    )

    result = invitation_expire_task.delay()

    assert result.get(timeout=TASK_TIMEOUT) == 1
    assert result.successful()
    due.refresh_from_db()
    current.refresh_from_db()
    assert due.status == InvitationStatus.EXPIRED
    assert current.status == InvitationStatus.PENDING
    assert f"Task accounts.tasks.invitation_expire_task[{result.id}] succeeded" in (
        celery_worker.output()
    )
