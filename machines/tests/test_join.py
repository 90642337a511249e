"""Two-step trust: join tokens are traded once for a host credential (ARCHITECTURE.md §3)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from accounts.services.tokens import token_create
from machines.choices import HostStatus
from machines.models import Host, HostCredential, JoinToken
from machines.services.join import (
    CREDENTIAL_PREFIX,
    JOIN_TOKEN_PREFIX,
    credential_authenticate,
    credential_revoke,
    credential_rotate,
    host_join,
    join_token_create,
    join_token_revoke,
)
from remotegpu.core import secrets
from remotegpu.core.errors import PermissionDenied, ValidationError

from .factories import RegionFactory, host_joined, join_token_issue

JOIN_URL = "/api/v1/agent/join/"
TOKENS_URL = "/api/v1/join-tokens/"


def _row_text(table: str, pk) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT row_to_json(t)::text FROM {table} t WHERE id = %s", [pk])  # noqa: S608
        (row,) = cursor.fetchone()
    return row


def _field_error(excinfo, field: str) -> str:
    assert set(excinfo.value.fields) == {field}, excinfo.value.fields
    return excinfo.value.fields[field][0]


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["message"]
    return body["error"]


# join_token_create ------------------------------------------------------------------------


def test_join_token_create_returns_plaintext_once_and_stores_a_digest(operator):
    region = RegionFactory()
    issued = join_token_create(
        operator=operator, name="  rack 7  ", region=region, labels="gpu=a100, zone=b", max_uses=3
    )

    assert issued.plaintext.startswith(JOIN_TOKEN_PREFIX)
    key, secret = secrets.parse(issued.plaintext, JOIN_TOKEN_PREFIX)
    token = JoinToken.objects.get(pk=issued.join_token.pk)
    assert (token.name, token.key, token.region, token.max_uses, token.uses) == (
        "rack 7",
        key,
        region,
        3,
        0,
    )
    assert token.labels == {"gpu": "a100", "zone": "b"}
    assert token.digest == secrets.digest(secret)
    assert token.created_by == operator
    assert token.is_usable
    row = _row_text("machines_jointoken", token.pk)
    assert secret not in row
    assert issued.plaintext not in row
    event = AuditEvent.objects.get(action=AuditAction.JOIN_TOKEN_CREATED)
    assert event.actor == operator
    assert event.target_id == str(token.pk)
    assert issued.plaintext not in str(event.details)
    # A day by default.
    assert timedelta(hours=23) < token.expires_at - timezone.now() <= timedelta(days=1)


def test_join_token_create_is_for_operators_only(owner):
    with pytest.raises(PermissionDenied):
        join_token_create(operator=owner, name="sneaky")
    assert not JoinToken.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "   "}, "name"),
        ({"expires_at": timezone.now() - timedelta(seconds=1)}, "expires_at"),
        ({"expires_at": timezone.now() + timedelta(days=400)}, "expires_at"),
        ({"max_uses": 0}, "max_uses"),
        ({"labels": "gpu"}, "labels"),
        ({"labels": {"bad key!": "x"}}, "labels"),
        ({"labels": {"gpu": "x" * 101}}, "labels"),
    ],
)
def test_join_token_create_validates(operator, kwargs, field):
    with pytest.raises(ValidationError) as excinfo:
        join_token_create(operator=operator, **{"name": "rack", **kwargs})
    assert _field_error(excinfo, field)
    assert not JoinToken.objects.exists()


def test_join_token_revoke_is_for_operators_and_recorded_once(operator, owner):
    issued = join_token_issue(operator)
    with pytest.raises(PermissionDenied):
        join_token_revoke(operator=owner, join_token=issued.join_token)
    issued.join_token.refresh_from_db()
    assert issued.join_token.revoked_at is None

    join_token_revoke(operator=operator, join_token=issued.join_token)
    join_token_revoke(operator=operator, join_token=issued.join_token)
    issued.join_token.refresh_from_db()
    assert issued.join_token.revoked_at is not None
    assert not issued.join_token.is_usable
    assert AuditEvent.objects.filter(action=AuditAction.JOIN_TOKEN_REVOKED).count() == 1


# host_join --------------------------------------------------------------------------------


def test_host_join_creates_a_pending_host_with_a_credential(operator):
    region = RegionFactory()
    issued = join_token_issue(operator, region=region, labels={"gpu": "a100"}, max_uses=2)

    joined = host_join(token=issued.plaintext, name=" gpu-01 ", facts={"hostname": "gpu-01.lan"})

    host = Host.objects.get(pk=joined.host.pk)
    assert (host.name, host.hostname, host.status) == ("gpu-01", "gpu-01.lan", HostStatus.PENDING)
    assert host.region == region
    assert host.labels == {"gpu": "a100"}
    assert joined.credential.startswith(CREDENTIAL_PREFIX)
    key, secret = secrets.parse(joined.credential, CREDENTIAL_PREFIX)
    credential = HostCredential.objects.get(host=host)
    assert credential.key == key
    assert credential.digest == secrets.digest(secret)
    assert credential.join_token == issued.join_token
    assert secret not in _row_text("machines_hostcredential", credential.pk)
    issued.join_token.refresh_from_db()
    assert issued.join_token.uses == 1
    assert issued.join_token.is_usable  # one use left
    event = AuditEvent.objects.get(action=AuditAction.HOST_JOINED)
    assert event.target_id == str(host.pk)
    assert event.actor is None
    assert event.actor_email == "agent:gpu-01"


def test_labels_of_the_token_are_copied_not_shared(operator):
    issued = join_token_issue(operator, labels={"gpu": "a100"}, max_uses=2)
    joined = host_join(token=issued.plaintext, name="a")
    joined.host.labels["zone"] = "b"
    joined.host.save()
    issued.join_token.refresh_from_db()
    assert issued.join_token.labels == {"gpu": "a100"}


def test_token_uses_are_counted_up_to_max_uses(operator):
    issued = join_token_issue(operator, max_uses=2)
    host_join(token=issued.plaintext, name="a")
    host_join(token=issued.plaintext, name="b")
    with pytest.raises(ValidationError) as excinfo:
        host_join(token=issued.plaintext, name="c")
    assert _field_error(excinfo, "token")
    issued.join_token.refresh_from_db()
    assert issued.join_token.uses == 2
    assert set(Host.objects.values_list("name", flat=True)) == {"a", "b"}


def _expired(issued):
    JoinToken.objects.filter(pk=issued.join_token.pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    return issued.plaintext


def _revoked(issued):
    JoinToken.objects.filter(pk=issued.join_token.pk).update(revoked_at=timezone.now())
    return issued.plaintext


def _used_up(issued):
    host_join(token=issued.plaintext, name="first")
    return issued.plaintext


def _wrong_secret(issued):
    key, secret = secrets.parse(issued.plaintext, JOIN_TOKEN_PREFIX)
    return f"{JOIN_TOKEN_PREFIX}{key}_{'x' * len(secret)}"


def _api_token(issued):
    return token_create(user=issued.join_token.created_by, name="api").plaintext


def _host_credential(issued):
    return host_joined("someone-else").credential


@pytest.mark.parametrize(
    "make_token",
    [
        _expired,
        _revoked,
        _used_up,
        _wrong_secret,
        _api_token,
        _host_credential,
        lambda issued: "",
        lambda issued: "garbage",
        lambda issued: JOIN_TOKEN_PREFIX + "short_secret",
        lambda issued: issued.plaintext + "x",
    ],
    ids=[
        "expired",
        "revoked",
        "used-up",
        "wrong-secret",
        "api-token",
        "host-credential",
        "empty",
        "garbage",
        "malformed",
        "too-long",
    ],
)
def test_unusable_tokens_are_refused_on_the_token_field(operator, make_token):
    issued = join_token_issue(operator)
    token = make_token(issued)
    hosts_before = set(Host.objects.values_list("pk", flat=True))
    uses_before = JoinToken.objects.get(pk=issued.join_token.pk).uses

    with pytest.raises(ValidationError) as excinfo:
        host_join(token=token, name="intruder")

    assert _field_error(excinfo, "token")
    assert set(Host.objects.values_list("pk", flat=True)) == hosts_before
    assert JoinToken.objects.get(pk=issued.join_token.pk).uses == uses_before


def test_duplicate_host_name_is_a_name_error_and_uses_nothing(operator):
    issued = join_token_issue(operator, max_uses=5)
    host_join(token=issued.plaintext, name="gpu-01")

    with pytest.raises(ValidationError) as excinfo:
        host_join(token=issued.plaintext, name="gpu-01")

    assert "gpu-01" in _field_error(excinfo, "name")
    issued.join_token.refresh_from_db()
    assert issued.join_token.uses == 1
    assert HostCredential.objects.count() == 1


def test_blank_host_name_is_a_name_error(operator):
    issued = join_token_issue(operator)
    with pytest.raises(ValidationError) as excinfo:
        host_join(token=issued.plaintext, name="   ")
    assert _field_error(excinfo, "name")
    assert not Host.objects.exists()


# credential_authenticate / rotate / revoke --------------------------------------------------


def test_credential_authenticates_its_host_and_records_use(db):
    joined = host_joined()
    credential = credential_authenticate(f"  {joined.credential} ")
    assert credential is not None
    assert credential.host == joined.host
    credential.refresh_from_db()
    assert credential.last_used_at is not None


def test_revoked_credential_or_retired_host_does_not_authenticate(operator):
    revoked = host_joined("revoked")
    retired = host_joined("retired")
    HostCredential.objects.filter(host=revoked.host).update(revoked_at=timezone.now())
    Host.objects.filter(pk=retired.host.pk).update(status=HostStatus.RETIRED)

    assert credential_authenticate(revoked.credential) is None
    assert credential_authenticate(retired.credential) is None


def test_other_secrets_never_authenticate_as_a_host(operator):
    joined = host_joined()
    key, secret = secrets.parse(joined.credential, CREDENTIAL_PREFIX)
    issued = join_token_issue(operator)
    api_token = token_create(user=operator, name="api").plaintext
    # Same key and secret under the other prefixes.
    for raw in (
        api_token,
        issued.plaintext,
        f"rgpu_{key}_{secret}",
        f"{JOIN_TOKEN_PREFIX}{key}_{secret}",
        f"{CREDENTIAL_PREFIX}{key}_{'a' * len(secret)}",
        "",
        "Bearer " + joined.credential,
    ):
        assert credential_authenticate(raw) is None, raw


def test_host_credential_is_no_api_token(db):
    joined = host_joined()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {joined.credential}")
    response = client.get("/api/v1/me/")
    assert _error(response, 401)
    assert client.get("/api/v1/hosts/").status_code == 401


def test_credential_rotate_replaces_the_credential(operator, owner):
    joined = host_joined()
    with pytest.raises(PermissionDenied):
        credential_rotate(operator=owner, host=joined.host)
    assert credential_authenticate(joined.credential) is not None

    new = credential_rotate(operator=operator, host=joined.host)

    assert new.startswith(CREDENTIAL_PREFIX)
    assert new != joined.credential
    assert credential_authenticate(joined.credential) is None
    assert credential_authenticate(new).host == joined.host
    assert HostCredential.objects.filter(host=joined.host, revoked_at__isnull=True).count() == 1
    event = AuditEvent.objects.get(action=AuditAction.HOST_CREDENTIAL_ROTATED)
    assert event.actor == operator
    assert new not in str(event.details)


def test_credential_revoke_revokes_every_credential_of_the_host(operator, owner):
    joined = host_joined()
    other = host_joined("other")
    second = credential_rotate(operator=operator, host=joined.host)
    with pytest.raises(PermissionDenied):
        credential_revoke(operator=owner, host=joined.host)
    assert credential_authenticate(second) is not None

    assert credential_revoke(operator=operator, host=joined.host) == 1

    assert credential_authenticate(second) is None
    assert credential_authenticate(other.credential) is not None
    assert AuditEvent.objects.filter(action=AuditAction.HOST_CREDENTIAL_REVOKED).count() == 1


def _live_credentials(host: Host) -> int:
    return HostCredential.objects.filter(host=host, revoked_at__isnull=True).count()


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("second", ["rotate", "revoke"])
def test_concurrent_rotations_and_revocations_take_turns(monkeypatch, second):
    """The first rotation is held inside its transaction, its new credential written but not
    committed, while the second runs: the second waits for the host row and then revokes the
    first's credential instead of missing it."""
    from accounts.tests.factories import OperatorFactory

    operator = OperatorFactory()
    host = host_joined().host
    paused, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def disconnect(host_id, *args):
        if threading.current_thread().name == "first":
            paused.set()
            assert release.wait(10)

    monkeypatch.setattr("machines.services.join.disconnect_agent", disconnect)

    def run(action):
        try:
            action(operator=operator, host=Host.objects.get(pk=host.pk))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    first = threading.Thread(target=run, args=(credential_rotate,), name="first")
    action = credential_rotate if second == "rotate" else credential_revoke
    other = threading.Thread(target=run, args=(action,), name="second")
    first.start()
    try:
        assert paused.wait(10)
        other.start()
        deadline = time.monotonic() + 10
        while other.is_alive() and not _waiting_on_a_lock() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        release.set()
        first.join(10)
        if other.ident is not None:
            other.join(10)
    assert not errors, errors
    assert _live_credentials(host) == (1 if second == "rotate" else 0)


# API: the agent's join --------------------------------------------------------------------


def test_agent_join_api_needs_no_account_and_returns_the_credential(operator, api_client):
    issued = join_token_issue(operator)
    response = api_client.post(
        JOIN_URL,
        {"token": issued.plaintext, "name": "gpu-01", "facts": {"hostname": "gpu-01.lan"}},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {
        "host_id",
        "host_name",
        "credential",
        "websocket_url",
        "heartbeat_interval",
    }
    host = Host.objects.get(pk=body["host_id"])
    assert (host.name, host.hostname) == ("gpu-01", "gpu-01.lan")
    assert body["host_name"] == "gpu-01"
    assert body["heartbeat_interval"] == host.heartbeat_interval
    assert body["websocket_url"].startswith(("ws://", "wss://"))
    assert body["websocket_url"].endswith("/agent/ws/")
    assert credential_authenticate(body["credential"]).host == host


def test_agent_join_api_ignores_a_session_or_api_token(operator, owner):
    """Authentication is the join token in the body; a signed-in caller gains nothing."""
    client = APIClient()
    client.force_login(owner)
    response = client.post(JOIN_URL, {"token": "garbage", "name": "x"}, format="json")
    assert _error(response, 400)["fields"]["token"]


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"token": "rjt_garbage", "name": "gpu-01"}, {"token"}),
        ({}, {"token", "name"}),
        ({"token": "x", "name": "y" * 101}, {"name"}),
        ({"token": "x", "name": "y", "facts": {"cpu_cores": -1}}, {"facts"}),
    ],
)
def test_agent_join_api_errors(api_client, db, body, fields):
    error = _error(api_client.post(JOIN_URL, body, format="json"), 400)
    assert error["code"] == "invalid"
    assert set(error["fields"]) == fields
    assert not Host.objects.exists()


def test_agent_join_api_duplicate_name(operator, api_client):
    issued = join_token_issue(operator, max_uses=2)
    assert (
        api_client.post(
            JOIN_URL, {"token": issued.plaintext, "name": "dup"}, format="json"
        ).status_code
        == 201
    )
    error = _error(
        api_client.post(JOIN_URL, {"token": issued.plaintext, "name": "dup"}, format="json"), 400
    )
    assert set(error["fields"]) == {"name"}


# API: join tokens -------------------------------------------------------------------------


def test_join_token_api_create_shows_the_token_once(operator, token_client_for):
    client = token_client_for(operator)
    region = RegionFactory(slug="eu-1")
    response = client.post(
        TOKENS_URL,
        {"name": "rack 7", "region": "eu-1", "labels": {"gpu": "h100"}, "max_uses": 4},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    token = body["token"]
    assert token.startswith(JOIN_TOKEN_PREFIX)
    assert f"--token {token}" in body["join_command"]
    assert body["join_command"].startswith("remotegpu-agent join --server ")
    assert (body["region"], body["labels"], body["max_uses"], body["uses"]) == (
        "eu-1",
        {"gpu": "h100"},
        4,
        0,
    )
    assert body["is_usable"] is True
    stored = JoinToken.objects.get(pk=body["id"])
    assert stored.region == region

    listed = client.get(TOKENS_URL)
    detail = client.get(f"{TOKENS_URL}{body['id']}/")
    for response in (listed, detail):
        assert response.status_code == 200
        assert token not in response.content.decode()
        assert "join_command" not in response.content.decode()
    (row,) = listed.json()["results"]
    assert "token" not in row
    assert row["id"] == body["id"]

    assert host_join(token=token, name="via-api").host.region == region


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "region": "nowhere"}, "region"),
        ({"name": "x", "max_uses": 0}, "max_uses"),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "labels": {"bad key": "v"}}, "labels"),
        ({"name": ""}, "name"),
    ],
)
def test_join_token_api_create_errors(operator, token_client_for, body, field):
    error = _error(token_client_for(operator).post(TOKENS_URL, body, format="json"), 400)
    assert set(error["fields"]) == {field}
    assert not JoinToken.objects.exists()


def test_join_token_api_delete_revokes(operator, token_client_for):
    issued = join_token_issue(operator)
    client = token_client_for(operator)
    assert client.delete(f"{TOKENS_URL}{issued.join_token.pk}/").status_code == 204
    issued.join_token.refresh_from_db()
    assert issued.join_token.revoked_at is not None
    assert client.get(f"{TOKENS_URL}{issued.join_token.pk}/").json()["is_usable"] is False
    with pytest.raises(ValidationError):
        host_join(token=issued.plaintext, name="late")


@pytest.mark.parametrize("who", ["owner", "member"])
def test_join_token_api_is_for_operators_only(request, operator, token_client_for, who):
    issued = join_token_issue(operator)
    client = token_client_for(request.getfixturevalue(who))
    for response in (
        client.get(TOKENS_URL),
        client.get(f"{TOKENS_URL}{issued.join_token.pk}/"),
        client.post(TOKENS_URL, {"name": "mine"}, format="json"),
        client.delete(f"{TOKENS_URL}{issued.join_token.pk}/"),
    ):
        assert _error(response, 403)
    assert JoinToken.objects.count() == 1
    issued.join_token.refresh_from_db()
    assert issued.join_token.revoked_at is None


def test_join_token_api_anonymous_is_401(api_client, db):
    assert _error(api_client.get(TOKENS_URL), 401)
    assert _error(api_client.post(TOKENS_URL, {"name": "x"}, format="json"), 401)
