"""The fleet's REST API: operators only, except regions (read by anyone signed in)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from machines.choices import CommandStatus, GPUHealth, HostStatus
from machines.models import AgentCommand, GPUSample, Host, HostCredential, HostSample, Region
from machines.services.join import credential_authenticate

from .factories import (
    GIB,
    AgentCommandFactory,
    GPUFactory,
    HostFactory,
    RegionFactory,
    host_joined,
)


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert body["error"]["message"]
    return body["error"]


@pytest.fixture
def operator_api(token_client_for, operator):
    return token_client_for(operator)


@pytest.fixture
def host(db):
    host = HostFactory(name="gpu-01", labels={"gpu": "a100"})
    GPUFactory(host=host, index=0, uuid="GPU-0")
    GPUFactory(host=host, index=1, uuid="GPU-1")
    GPUFactory(host=host, index=2, uuid="GPU-lost", health=GPUHealth.LOST)
    return host


def _host_url(host, action: str = "") -> str:
    return f"/api/v1/hosts/{host.pk}/" + (f"{action}/" if action else "")


# Who may call what ------------------------------------------------------------------------


def _operator_calls(host, command, region):
    """(method, url, body) of every operator-only operation."""
    return [
        ("get", "/api/v1/hosts/", None),
        ("get", _host_url(host), None),
        ("get", _host_url(host, "metrics"), None),
        ("post", _host_url(host, "labels"), {"labels": {"a": "b"}}),
        ("post", _host_url(host, "maintenance"), {}),
        ("post", _host_url(host, "drain"), {}),
        ("post", _host_url(host, "resume"), {}),
        ("post", _host_url(host, "retire"), {}),
        ("post", _host_url(host, "revoke-credential"), None),
        ("post", _host_url(host, "rotate-credential"), None),
        ("post", _host_url(host, "commands"), {"kind": "ping"}),
        ("get", "/api/v1/gpus/", None),
        ("get", f"/api/v1/gpus/{host.gpus.first().pk}/", None),
        ("get", "/api/v1/host-commands/", None),
        ("get", f"/api/v1/host-commands/{command.pk}/", None),
        ("get", "/api/v1/join-tokens/", None),
        ("post", "/api/v1/join-tokens/", {"name": "mine"}),
        ("get", "/api/v1/fleet/metrics/", None),
        ("post", "/api/v1/regions/", {"name": "Mine", "slug": "mine"}),
        ("patch", f"/api/v1/regions/{region.pk}/", {"name": "Renamed"}),
    ]


def _fleet_state():
    return (
        list(Host.objects.order_by("pk").values()),
        list(HostCredential.objects.order_by("pk").values()),
        list(AgentCommand.objects.order_by("pk").values()),
        list(Region.objects.order_by("pk").values()),
    )


@pytest.mark.parametrize("who", ["owner", "member", "outsider"])
@pytest.mark.parametrize("how", ["token", "session"])
def test_customers_are_refused_every_operator_operation(request, token_client_for, host, who, how):
    user = request.getfixturevalue(who)
    if how == "token":
        client = token_client_for(user)
    else:
        client = APIClient()
        client.force_login(user)
    command = AgentCommandFactory(host=host)
    region = host.region
    before = _fleet_state()

    for method, url, body in _operator_calls(host, command, region):
        response = getattr(client, method)(url, body, format="json")
        error = _error(response, 403)
        assert error["code"] == "permission_denied", (method, url)
        assert host.name not in response.content.decode()

    assert _fleet_state() == before


def test_anonymous_is_refused_with_401(api_client, host):
    command = AgentCommandFactory(host=host)
    for method, url, body in [
        *_operator_calls(host, command, host.region),
        ("get", "/api/v1/regions/", None),
    ]:
        assert _error(getattr(api_client, method)(url, body, format="json"), 401)


def test_a_read_only_operator_token_cannot_write(token_client_for, operator, host):
    client = token_client_for(operator, write=False)
    assert client.get("/api/v1/hosts/").status_code == 200
    assert _error(client.post(_host_url(host, "maintenance"), {}, format="json"), 403)
    assert Host.objects.get(pk=host.pk).status == HostStatus.ONLINE


# Regions ----------------------------------------------------------------------------------


def test_any_signed_in_user_reads_regions(token_client_for, member, host):
    RegionFactory(name="Empty", slug="empty")
    client = token_client_for(member)
    body = client.get("/api/v1/regions/").json()
    rows = {row["slug"]: row for row in body["results"]}
    assert rows["empty"]["host_count"] == 0
    assert rows[host.region.slug]["host_count"] == 1
    assert set(rows["empty"]) == {
        "id",
        "name",
        "slug",
        "location",
        "description",
        "host_count",
        "created_at",
    }
    detail = client.get(f"/api/v1/regions/{host.region.pk}/")
    assert detail.status_code == 200
    assert detail.json()["slug"] == host.region.slug


def test_operators_manage_regions(operator_api):
    response = operator_api.post(
        "/api/v1/regions/",
        {"name": "Frankfurt", "slug": "fra-1", "location": "DE", "host_count": 99},
        format="json",
    )
    assert response.status_code == 201, response.content
    region = Region.objects.get(slug="fra-1")
    assert response.json()["host_count"] == 0
    response = operator_api.patch(
        f"/api/v1/regions/{region.pk}/", {"description": "Rack row 4"}, format="json"
    )
    assert response.status_code == 200
    region.refresh_from_db()
    assert (region.name, region.description) == ("Frankfurt", "Rack row 4")
    assert _error(operator_api.put(f"/api/v1/regions/{region.pk}/", {}, format="json"), 405)
    assert _error(operator_api.delete(f"/api/v1/regions/{region.pk}/"), 405)
    error = _error(
        operator_api.post("/api/v1/regions/", {"name": "Frankfurt", "slug": "x"}, format="json"),
        400,
    )
    assert set(error["fields"]) == {"name"}


# Hosts ------------------------------------------------------------------------------------


def test_host_list_and_detail(operator_api, host):
    HostFactory(name="gpu-02", status=HostStatus.MAINTENANCE)
    body = operator_api.get("/api/v1/hosts/").json()
    assert body["count"] == 2
    first = body["results"][0]
    assert (first["name"], first["region"], first["gpu_count"]) == ("gpu-01", host.region.slug, 2)
    assert first["labels"] == {"gpu": "a100"}
    assert "gpus" not in first
    assert "containers" not in first

    detail = operator_api.get(_host_url(host)).json()
    assert [gpu["uuid"] for gpu in detail["gpus"]] == ["GPU-0", "GPU-1", "GPU-lost"]
    assert detail["gpus"][0]["host"] == "gpu-01"
    assert detail["memory_total"] == host.memory_total
    assert detail["containers"] == []


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("status=maintenance", ["gpu-02"]),
        ("connected=false", ["gpu-02"]),
        ("region__slug=eu-west", ["gpu-02"]),
        ("search=gpu-0", ["gpu-01", "gpu-02"]),
        ("search=10.9.9.9", ["gpu-02"]),
        ("ordering=-name", ["gpu-02", "gpu-01"]),
    ],
)
def test_host_list_filters(operator_api, host, query, names):
    HostFactory(
        name="gpu-02",
        address="10.9.9.9",
        status=HostStatus.MAINTENANCE,
        connected=False,
        region=RegionFactory(slug="eu-west"),
    )
    body = operator_api.get(f"/api/v1/hosts/?{query}").json()
    assert [row["name"] for row in body["results"]] == names


def test_host_list_bad_filter_is_a_400(operator_api, host):
    error = _error(operator_api.get("/api/v1/hosts/?status=exploded"), 400)
    assert set(error["fields"]) == {"status"}


def test_unknown_host_is_a_404(operator_api, db):
    assert _error(operator_api.get("/api/v1/hosts/999999/"), 404)["code"] == "not_found"
    assert _error(operator_api.post("/api/v1/hosts/999999/maintenance/", {}, format="json"), 404)


def test_labels(operator_api, host):
    response = operator_api.post(
        _host_url(host, "labels"), {"labels": {"gpu": "h100", "zone": "b"}}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["labels"] == {"gpu": "h100", "zone": "b"}
    assert Host.objects.get(pk=host.pk).labels == {"gpu": "h100", "zone": "b"}

    for body in ({"labels": {"bad key": "x"}}, {"labels": "gpu=a100"}, {}):
        error = _error(operator_api.post(_host_url(host, "labels"), body, format="json"), 400)
        assert set(error["fields"]) == {"labels"}
    assert Host.objects.get(pk=host.pk).labels == {"gpu": "h100", "zone": "b"}


def test_status_actions(operator_api, host):
    response = operator_api.post(
        _host_url(host, "maintenance"), {"reason": "fan swap"}, format="json"
    )
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["status_reason"]) == (
        "maintenance",
        "fan swap",
    )
    assert operator_api.post(_host_url(host, "drain"), {}, format="json").json()["status"] == (
        "draining"
    )
    assert operator_api.post(_host_url(host, "resume"), format="json").json()["status"] == (
        "online"
    )
    error = _error(operator_api.post(_host_url(host, "resume"), {}, format="json"), 400)
    assert set(error["fields"]) == {"status"}
    assert operator_api.post(_host_url(host, "retire"), {}, format="json").json()["status"] == (
        "retired"
    )
    for action in ("maintenance", "drain", "resume", "retire"):
        error = _error(operator_api.post(_host_url(host, action), {}, format="json"), 400)
        assert set(error["fields"]) == {"status"}
    assert Host.objects.get(pk=host.pk).status == HostStatus.RETIRED
    assert AuditEvent.objects.filter(action=AuditAction.HOST_STATUS_CHANGED).count() == 4
    error = _error(
        operator_api.post(_host_url(host, "maintenance"), {"reason": "r" * 201}, format="json"),
        400,
    )
    assert set(error["fields"]) == {"reason"}


def test_credential_actions(operator_api, db):
    joined = host_joined("gpu-cred")
    response = operator_api.post(_host_url(joined.host, "rotate-credential"))
    assert response.status_code == 200
    new = response.json()["credential"]
    assert set(response.json()) == {"credential"}
    assert credential_authenticate(joined.credential) is None
    assert credential_authenticate(new).host == joined.host

    assert operator_api.post(_host_url(joined.host, "revoke-credential")).status_code == 204
    assert credential_authenticate(new) is None
    # Nothing lists credentials back.
    assert new not in operator_api.get(_host_url(joined.host)).content.decode()


def test_commands(operator_api, operator, host):
    response = operator_api.post(_host_url(host, "commands"), {"kind": "ping"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    command = AgentCommand.objects.get(pk=body["id"])
    assert (command.host, command.kind, command.status, command.requested_by) == (
        host,
        "ping",
        CommandStatus.PENDING,
        operator,
    )
    assert (body["host"], body["status"]) == ("gpu-01", "pending")

    error = _error(
        operator_api.post(_host_url(host, "commands"), {"kind": "rm"}, format="json"), 400
    )
    assert set(error["fields"]) == {"kind"}

    other = AgentCommandFactory(status=CommandStatus.SUCCEEDED)
    listed = operator_api.get("/api/v1/host-commands/").json()
    assert {row["id"] for row in listed["results"]} == {str(command.pk), str(other.pk)}
    only = operator_api.get(f"/api/v1/host-commands/?host={host.pk}").json()
    assert [row["id"] for row in only["results"]] == [str(command.pk)]
    detail = operator_api.get(f"/api/v1/host-commands/{command.pk}/").json()
    assert detail["kind"] == "ping"
    assert _error(operator_api.get("/api/v1/host-commands/not-a-uuid/"), 404)


def test_gpus(operator_api, host):
    other = GPUFactory(model="NVIDIA L4")
    body = operator_api.get("/api/v1/gpus/").json()
    assert body["count"] == 4
    lost = operator_api.get("/api/v1/gpus/?health=lost").json()
    assert [row["uuid"] for row in lost["results"]] == ["GPU-lost"]
    mine = operator_api.get(f"/api/v1/gpus/?host={host.pk}").json()
    assert {row["host"] for row in mine["results"]} == {"gpu-01"}
    detail = operator_api.get(f"/api/v1/gpus/{other.pk}/").json()
    assert (detail["model"], detail["memory_total"]) == ("NVIDIA L4", other.memory_total)
    assert _error(operator_api.get("/api/v1/gpus/?host=999999"), 400)


def test_gpu_figures_a_driver_cannot_give_are_null(operator_api, host):
    """Unknown is null in the API, and the schema says the field may be null."""
    blind = GPUFactory(host=host, index=7, memory_used=GIB)
    detail = operator_api.get(f"/api/v1/gpus/{blind.pk}/").json()
    figures = ("utilization", "temperature", "power_draw", "power_limit", "ecc_errors")
    assert [detail[name] for name in figures] == [None] * 5
    assert detail["memory_used"] == GIB
    schema = SchemaGenerator().get_schema(request=None, public=True)
    properties = schema["components"]["schemas"]["GPU"]["properties"]
    assert all(properties[name]["nullable"] for name in figures)


def test_metrics(operator_api, host):
    now = timezone.now()
    gpu = host.gpus.get(index=0)
    for minutes in (1, 2):
        HostSample.objects.create(
            host=host,
            time=now - timedelta(minutes=minutes),
            cpu_percent=50,
            memory_used=128 * GIB,
            memory_total=512 * GIB,
            disk_used=0,
            disk_total=1,
        )
        GPUSample.objects.create(
            gpu=gpu,
            time=now - timedelta(minutes=minutes),
            utilization=80,
            memory_used=GIB,
            temperature=60,
            power_draw=200,
        )
    HostSample.objects.create(
        host=host,
        time=now - timedelta(hours=2),
        cpu_percent=1,
        memory_used=0,
        memory_total=1,
        disk_used=0,
        disk_total=1,
    )

    body = operator_api.get(_host_url(host, "metrics") + "?range=1h").json()
    assert (body["range"], body["step"]) == ("1h", 30)
    assert body["host"]["cpu"] == [50, 50]
    assert body["host"]["memory"] == [25, 25]
    assert [g["uuid"] for g in body["gpus"]] == ["GPU-0", "GPU-1"]
    assert body["gpus"][0]["utilization"] == [80, 80]
    assert body["gpus"][1]["t"] == []

    fleet = operator_api.get("/api/v1/fleet/metrics/?range=6h").json()
    assert fleet["range"] == "6h"
    assert sum(fleet["gpus"]) >= 1
    assert set(fleet["utilization"]) == {80}

    error = _error(operator_api.get(_host_url(host, "metrics") + "?range=1y"), 400)
    assert set(error["fields"]) == {"range"}


# Query counts -----------------------------------------------------------------------------


def _hosts_with_gpus(count: int) -> None:
    for _ in range(count):
        host = HostFactory(region=RegionFactory())
        GPUFactory.create_batch(2, host=host)


@pytest.mark.parametrize("count", [3, 6])
def test_host_list_takes_a_constant_number_of_queries(
    operator_api, django_assert_num_queries, count
):
    _hosts_with_gpus(count)
    # Token lookup, its last-used stamp, count, page.
    with django_assert_num_queries(4):
        response = operator_api.get("/api/v1/hosts/")
    assert response.json()["count"] == count
    assert all(row["gpu_count"] == 2 for row in response.json()["results"])


@pytest.mark.parametrize("count", [3, 6])
@pytest.mark.parametrize("url", ["/api/v1/gpus/", "/api/v1/host-commands/"])
def test_gpu_and_command_lists_take_a_constant_number_of_queries(
    operator_api, django_assert_num_queries, url, count
):
    _hosts_with_gpus(count)
    for host in Host.objects.all():
        AgentCommandFactory(host=host)
    with django_assert_num_queries(4):
        response = operator_api.get(url)
    assert response.json()["count"] == (2 * count if "gpus" in url else count)
