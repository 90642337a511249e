"""``/api/v1/allocations/``: members read their organisation's allocations (another
organisation's are 404), operators read all, allocate and reclaim; bad input names its field."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from machines.choices import AllocationStatus, CommandKind
from machines.models import Allocation

from .factories import AllocationFactory, GPUFactory, RuntimeHostFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/allocations/"


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}
    return error


@pytest.fixture
def allocation(organization):
    allocation = AllocationFactory(
        organization=organization, host__address="gpu-9.example.net", host__ssh_port=2222
    )
    GPUFactory(host=allocation.host, index=0)
    GPUFactory(host=allocation.host, index=1)
    return allocation


def test_members_read_their_organisations_allocations_with_how_to_connect(
    token_client_for, member, allocation
):
    AllocationFactory()  # another organisation's
    client = token_client_for(member, write=False)
    body = client.get(URL).json()
    assert [row["id"] for row in body["results"]] == [allocation.pk]
    row = client.get(f"{URL}{allocation.pk}/").json()
    assert row["host"]["name"] == allocation.host.name
    assert row["organization"] == allocation.organization.slug
    assert row["status"] == AllocationStatus.ACTIVE
    assert [gpu["index"] for gpu in row["gpus"]] == [0, 1]
    assert row["connection"] == {
        "available": True,
        "user": allocation.tenant_user,
        "address": "gpu-9.example.net",
        "port": 2222,
        "host_key_fingerprint": allocation.host.ssh_host_key_fingerprint,
        "ssh_command": f"ssh -p 2222 {allocation.tenant_user}@gpu-9.example.net",
        "ssh_config": (
            f"Host {allocation.host.name}\n  HostName gpu-9.example.net\n  Port 2222\n"
            f"  User {allocation.tenant_user}\n"
        ),
    }


def test_another_organisations_allocation_is_not_found(token_client_for, outsider, allocation):
    client = token_client_for(outsider)
    assert client.get(URL).json()["results"] == []
    _error(client.get(f"{URL}{allocation.pk}/"), 404)
    _error(client.post(f"{URL}{allocation.pk}/reclaim/", {"reason": "x"}, format="json"), 403)
    allocation.refresh_from_db()
    assert allocation.status == AllocationStatus.ACTIVE


def test_members_cannot_allocate_or_reclaim(token_client_for, owner, allocation):
    client = token_client_for(owner)
    body = {
        "host": RuntimeHostFactory().pk,
        "organization": allocation.organization.slug,
        "starts_at": timezone.now().isoformat(),
        "ends_at": (timezone.now() + timedelta(days=1)).isoformat(),
    }
    _error(client.post(URL, body, format="json"), 403)
    _error(client.post(f"{URL}{allocation.pk}/reclaim/", {"reason": "x"}, format="json"), 403)
    assert Allocation.objects.count() == 1


def test_operators_allocate_and_reclaim(token_client_for, operator, organization):
    client = token_client_for(operator)
    host = RuntimeHostFactory()
    GPUFactory(host=host)
    now = timezone.now()
    response = client.post(
        URL,
        {
            "host": host.pk,
            "organization": organization.slug,
            "starts_at": now.isoformat(),
            "ends_at": (now + timedelta(days=1)).isoformat(),
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    row = response.json()
    assert row["status"] == AllocationStatus.PROVISIONING
    assert row["tenant_user"] == f"rgt{row['id']}"
    assert row["connection"]["available"] is False  # not active yet
    response = client.post(f"{URL}{row['id']}/reclaim/", {"reason": "done"}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == AllocationStatus.RECLAIMING
    allocation = Allocation.objects.get(pk=row["id"])
    assert allocation.last_command.kind == CommandKind.TENANT_RECLAIM
    assert client.get(URL).json()["count"] == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"host": 0}, "host"),
        ({"organization": "no-such-org"}, "organization"),
        ({"starts_at": "tomorrow"}, "starts_at"),
        ({"ends_at": None}, "ends_at"),
        ({"ends_at": "START"}, "ends_at"),  # ends when it starts
        ({"starts_at": "PAST"}, "starts_at"),
        ({"host": "RETIRED"}, "host"),
        ({"host": "TAKEN"}, "host"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    token_client_for, operator, organization, change, field
):
    now = timezone.now()
    host = RuntimeHostFactory()
    body = {
        "host": host.pk,
        "organization": organization.slug,
        "starts_at": now.isoformat(),
        "ends_at": (now + timedelta(days=1)).isoformat(),
    }
    for key, value in change.items():
        if value == "START":
            value = body["starts_at"]
        elif value == "PAST":
            value = (now - timedelta(days=1)).isoformat()
        elif value == "RETIRED":
            value = RuntimeHostFactory(status="retired").pk
        elif value == "TAKEN":
            value = AllocationFactory().host_id
        body[key] = value
    error = _error(token_client_for(operator).post(URL, body, format="json"), 400)
    assert field in error["fields"]
    assert Allocation.objects.filter(organization=organization).count() == 0


def test_reclaim_wants_a_reason(token_client_for, operator, allocation):
    client = token_client_for(operator)
    error = _error(client.post(f"{URL}{allocation.pk}/reclaim/", {}, format="json"), 400)
    assert "reason" in error["fields"]
    client.post(f"{URL}{allocation.pk}/reclaim/", {"reason": "end"}, format="json")
    _error(client.post(f"{URL}{allocation.pk}/reclaim/", {"reason": "again"}, format="json"), 409)


def test_read_only_tokens_read_only(token_client_for, operator, allocation):
    client = token_client_for(operator, write=False)
    assert client.get(f"{URL}{allocation.pk}/").status_code == 200
    _error(client.post(f"{URL}{allocation.pk}/reclaim/", {"reason": "x"}, format="json"), 403)


def test_the_list_takes_a_fixed_number_of_queries(token_client_for, operator):
    client = token_client_for(operator)
    AllocationFactory()
    client.get(URL)  # the token's first use is recorded once
    with CaptureQueriesContext(connection) as few:
        client.get(URL)
    for _ in range(5):
        GPUFactory(host=AllocationFactory().host)
    with CaptureQueriesContext(connection) as many:
        assert client.get(URL).json()["count"] == 6
    assert len(many) == len(few)


def test_the_schema_documents_allocations():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    paths = schema["paths"]
    assert set(paths["/api/v1/allocations/"]) == {"get", "post"}
    assert set(paths["/api/v1/allocations/{id}/"]) == {"get"}
    assert set(paths["/api/v1/allocations/{id}/reclaim/"]) == {"post"}
