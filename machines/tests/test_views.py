"""Operator pages and the metrics endpoints: access, real figures, forms that call services,
query counts pinned, and buckets computed by PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from machines import selectors
from machines.choices import CommandKind, CommandStatus, GPUHealth, HostStatus
from machines.models import (
    AgentCommand,
    GPUSample,
    HostCredential,
    HostSample,
    HostSampleRollup,
    JoinToken,
    Region,
)
from machines.services.join import credential_authenticate, host_join
from machines.tests.factories import (
    GIB,
    AgentCommandFactory,
    GPUFactory,
    HostFactory,
    RegionFactory,
    host_joined,
    join_token_issue,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PAGES = [
    ("machines:fleet_overview", False),
    ("machines:host_list", False),
    ("machines:host_detail", True),
    ("machines:join_token_list", False),
    ("machines:region_list", False),
]
ACTIONS = [
    ("machines:host_labels", {"labels": "a=b"}),
    ("machines:host_status", {"status": "maintenance"}),
    ("machines:host_command", {"kind": "ping"}),
    ("machines:host_credential_revoke", {}),
    ("machines:host_credential_rotate", {}),
]


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


def _url(name, host=None):
    return reverse(name, args=[host.pk]) if host is not None else reverse(name)


# Access ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "needs_host"), PAGES)
def test_pages_open_for_operators_only(client, operator, member, name, needs_host):
    host = GPUFactory().host
    url = _url(name, host if needs_host else None)

    anonymous = client.get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("account_login"))

    client.force_login(member)
    assert client.get(url).status_code == 404

    client.force_login(operator)
    response = client.get(url)
    assert response.status_code == 200
    assert 'data-testid="operator-nav"' in response.content.decode()


@pytest.mark.parametrize(("name", "data"), ACTIONS)
def test_actions_are_hidden_from_members_and_change_nothing(client, member, name, data):
    joined = host_joined()
    host = joined.host
    client.force_login(member)
    assert client.post(_url(name, host), data).status_code == 404
    host.refresh_from_db()
    assert host.status == HostStatus.PENDING
    assert host.labels == {}
    assert not AgentCommand.objects.exists()
    assert credential_authenticate(joined.credential) is not None


def test_member_cannot_mint_revoke_or_create_regions(client, member):
    issued = join_token_issue()
    client.force_login(member)
    assert client.post(reverse("machines:join_token_list"), {"name": "x"}).status_code == 404
    assert (
        client.post(reverse("machines:join_token_revoke", args=[issued.join_token.pk])).status_code
        == 404
    )
    assert client.post(reverse("machines:region_list"), {"name": "x"}).status_code == 404
    assert JoinToken.objects.count() == 1
    assert JoinToken.objects.get().revoked_at is None
    assert not Region.objects.filter(name="x").exists()


def test_navigation_shows_operator_entry_to_staff_only(client, operator, owner):
    client.force_login(owner)
    assert 'data-testid="nav-operator"' not in client.get("/").content.decode()
    client.force_login(operator)
    html = client.get("/").content.decode()
    assert 'data-testid="nav-operator"' in html
    assert reverse("machines:fleet_overview") in html
    assert reverse("admin:index") in html


# Fleet overview ----------------------------------------------------------------------------


def test_fleet_overview_shows_real_figures(operator_client):
    online = HostFactory.create_batch(2, status=HostStatus.ONLINE)
    maintenance = HostFactory(status=HostStatus.MAINTENANCE)
    now = timezone.now()
    older = HostFactory(status=HostStatus.OFFLINE, status_changed_at=now - timedelta(hours=2))
    newer = HostFactory(
        status=HostStatus.OFFLINE, status_changed_at=now - timedelta(minutes=5), name="zz-newer"
    )
    HostFactory(status=HostStatus.RETIRED)
    for host in online:
        GPUFactory.create_batch(2, host=host, model="A100")
    GPUFactory(host=online[0], model="H100")
    GPUFactory(host=online[1], model="A100", health=GPUHealth.LOST)
    GPUFactory(host=online[1], model="A100", health=GPUHealth.DEGRADED)
    GPUFactory(host=maintenance, model="H100")  # healthy but not free: host not online
    GPUFactory(host=older, model="A100")

    response = operator_client.get(reverse("machines:fleet_overview"))
    assert response.status_code == 200
    context = response.context
    counts = {row["value"]: row["count"] for row in context["host_statuses"]}
    assert counts == {
        "pending": 0,
        "online": 2,
        "offline": 2,
        "maintenance": 1,
        "draining": 0,
        "retired": 1,
    }
    assert context["host_total"] == 6
    # 4 + 1 H100 + 1 degraded + 1 on maintenance + 1 on offline = 8 not lost.
    assert context["gpus"] == {
        "total": 8,
        "healthy": 7,
        "degraded": 1,
        "lost": 1,
        "allocated": 0,
        "free": 5,
    }
    by_model = {row["model"]: row for row in context["gpu_models"]}
    assert by_model["A100"]["total"] == 6
    assert by_model["A100"]["free"] == 4
    assert by_model["A100"]["lost"] == 1
    assert by_model["H100"]["total"] == 2
    assert by_model["H100"]["free"] == 1
    assert list(context["recently_offline"]) == [newer, older]
    html = response.content.decode()
    assert 'data-testid="gpus-free">5<' in html
    assert 'data-testid="hosts-online">2<' in html
    assert reverse("api:fleet-metrics") in html
    assert "vendor/chartjs/chart.umd.js" in html
    assert "machines/charts.js" in html


@pytest.mark.parametrize(
    ("which", "query", "expected"),
    [
        pytest.param("fleet", "", 15, id="fleet-default"),
        pytest.param("host", "", 30, id="host-heartbeat-interval"),
        pytest.param("host", "?refresh=1", 1, id="asked"),
        pytest.param("fleet", "?refresh=0", 1, id="at-least-1"),
        pytest.param("host", "?refresh=100000", 300, id="at-most-300"),
        pytest.param("host", "?refresh=soon", 30, id="not-a-number"),
    ],
)
def test_charts_refresh_as_often_as_asked_within_bounds(operator_client, which, query, expected):
    """The charts refresh as often as the host reports (the fleet: every 15 s), or as the
    ``refresh`` parameter asks, within bounds."""
    host = HostFactory(heartbeat_interval=30)
    url = (
        reverse("machines:fleet_overview")
        if which == "fleet"
        else reverse("machines:host_detail", args=[host.pk])
    )
    response = operator_client.get(url + query)
    assert response.status_code == 200
    assert f'data-refresh-seconds="{expected}"' in response.content.decode()


# Host list ---------------------------------------------------------------------------------


def _hosts_with_gpus(count):
    for _ in range(count):
        host = HostFactory(memory_used=128 * GIB, cpu_percent=42.0)
        GPUFactory.create_batch(2, host=host, model="NVIDIA H100 80GB HBM3")


def test_host_list_query_count_is_constant(operator_client):
    url = reverse("machines:host_list")
    _hosts_with_gpus(3)
    operator_client.get(url)  # warm: session, site, content types
    with CaptureQueriesContext(connection) as small:
        assert operator_client.get(url).status_code == 200
    _hosts_with_gpus(3)
    with CaptureQueriesContext(connection) as large:
        response = operator_client.get(url)
    assert len(response.context["page_obj"]) == 6
    assert len(large) == len(small), [q["sql"] for q in large.captured_queries]


def test_host_list_columns_and_filters(operator_client):
    region = RegionFactory(name="Shanghai A", slug="sh-a")
    busy = HostFactory(
        name="alpha",
        address="10.9.9.9",
        region=region,
        cpu_percent=73.4,
        memory_used=256 * GIB,
        memory_total=512 * GIB,
    )
    GPUFactory.create_batch(2, host=busy, model="NVIDIA A100-SXM4-80GB")
    GPUFactory(host=busy, model="NVIDIA A100-SXM4-80GB", health=GPUHealth.LOST)
    HostFactory(name="beta", status=HostStatus.MAINTENANCE, connected=False)
    HostFactory(name="gamma", status=HostStatus.OFFLINE, connected=False)
    url = reverse("machines:host_list")

    response = operator_client.get(url)
    rows = {host.name: host for host in response.context["page_obj"]}
    assert set(rows) == {"alpha", "beta", "gamma"}
    assert rows["alpha"].gpu_count == 2
    assert rows["alpha"].gpu_models == ["NVIDIA A100-SXM4-80GB"]
    assert rows["alpha"].memory_percent == pytest.approx(50.0)
    assert rows["beta"].gpu_models == []
    html = response.content.decode()
    assert "2 × NVIDIA A100-SXM4-80GB" in html
    assert "73 %" in html
    assert "50 %" in html

    def names(**query):
        return sorted(h.name for h in operator_client.get(url, query).context["page_obj"])

    assert names(status="maintenance") == ["beta"]
    assert names(region="sh-a") == ["alpha"]
    assert names(q="10.9.9") == ["alpha"]
    assert names(q="GAM") == ["gamma"]
    assert names(status="offline", q="alpha") == []
    bad = operator_client.get(url, {"status": "bogus"})
    assert bad.status_code == 200
    assert bad.context["filterset"].form.errors["status"]


def test_host_list_paginates(operator_client):
    HostFactory.create_batch(51)
    url = reverse("machines:host_list")
    assert len(operator_client.get(url).context["page_obj"]) == 50
    assert len(operator_client.get(url, {"page": 2}).context["page_obj"]) == 1


# Host page ---------------------------------------------------------------------------------


def _cells(html: str, testid: str) -> list[str]:
    return re.findall(rf'data-testid="{testid}">([^<]*)</td>', html)


def test_host_page_shows_unknown_gpu_figures_as_a_dash_not_zero(operator_client):
    """A figure the GPU or its driver cannot give is "—"; a measured 0 is still 0."""
    host = HostFactory()
    GPUFactory(host=host, index=0, memory_used=GIB)  # no utilisation, temperature, power, ECC
    GPUFactory(
        host=host,
        index=1,
        utilization=0.0,
        memory_used=GIB,
        temperature=35.0,
        power_limit=300.0,
        ecc_errors=0,
    )
    html = operator_client.get(reverse("machines:host_detail", args=[host.pk])).content.decode()
    assert _cells(html, "gpu-utilization") == ["—", "0 %"]
    assert _cells(html, "gpu-temperature") == ["—", "35 °C"]
    assert _cells(html, "gpu-power") == ["—", "— / 300 W"]
    assert _cells(html, "gpu-ecc-errors") == ["—", "0"]


def test_host_page_shows_facts_gpus_and_commands(operator_client, operator):
    host = HostFactory(name="node-7", hostname="node-7.lab", docker_version="27.3.1")
    GPUFactory(host=host, index=0, utilization=87.0, temperature=64.0, power_draw=301.0)
    GPUFactory(host=host, index=1, health=GPUHealth.DEGRADED)
    AgentCommandFactory(
        host=host,
        kind=CommandKind.COLLECT_DIAGNOSTICS,
        status=CommandStatus.SUCCEEDED,
        result={"nvidia_smi": "ok", "uptime": 1234},
        requested_by=operator,
    )
    AgentCommandFactory(host=host, status=CommandStatus.FAILED, error="No result before")
    AgentCommandFactory()  # another host's

    response = operator_client.get(reverse("machines:host_detail", args=[host.pk]))
    assert response.status_code == 200
    assert len(response.context["commands"]) == 2
    html = response.content.decode()
    assert "node-7.lab" in html
    assert "27.3.1" in html
    assert "87 %" in html
    assert "64 °C" in html
    assert "<details><summary>" in html
    assert "&quot;nvidia_smi&quot;: &quot;ok&quot;" in html
    assert "No result before" in html
    assert reverse("api:host-metrics", args=[host.pk]) in html
    assert 'data-series="gpu-temperature"' in html
    # Online: maintenance, drain and retire offered; not "return to service".
    statuses = [value for value, _label, _style in response.context["status_actions"]]
    assert statuses == [HostStatus.MAINTENANCE, HostStatus.DRAINING, HostStatus.RETIRED]


def test_unknown_host_is_404(operator_client):
    assert operator_client.get(reverse("machines:host_detail", args=[999999])).status_code == 404


def test_labels_form_calls_the_service(operator_client):
    host = HostFactory(labels={"old": "1"})
    url = reverse("machines:host_labels", args=[host.pk])
    response = operator_client.post(url, {"labels": "gpu=a100, zone=b"})
    assert response.status_code == 302
    host.refresh_from_db()
    assert host.labels == {"gpu": "a100", "zone": "b"}
    assert AuditEvent.objects.filter(action=AuditAction.HOST_LABELS_CHANGED).count() == 1


def test_labels_form_shows_field_error(operator_client):
    host = HostFactory(labels={"old": "1"})
    response = operator_client.post(
        reverse("machines:host_labels", args=[host.pk]), {"labels": "no-equals-sign"}
    )
    assert response.status_code == 200
    assert response.context["labels_form"].errors["labels"]
    assert 'data-testid="error-labels"' in response.content.decode()
    host.refresh_from_db()
    assert host.labels == {"old": "1"}


def test_status_actions_call_the_service(operator_client):
    host = HostFactory(status=HostStatus.ONLINE, connected=True)
    url = reverse("machines:host_status", args=[host.pk])
    operator_client.post(url, {"status": "maintenance", "reason": "new fans"})
    host.refresh_from_db()
    assert host.status == HostStatus.MAINTENANCE
    assert host.status_reason == "new fans"
    page = operator_client.get(reverse("machines:host_detail", args=[host.pk]))
    statuses = [value for value, _label, _style in page.context["status_actions"]]
    assert HostStatus.ONLINE in statuses
    assert HostStatus.MAINTENANCE not in statuses

    operator_client.post(url, {"status": "online"})
    host.refresh_from_db()
    assert host.status == HostStatus.ONLINE
    assert AuditEvent.objects.filter(action=AuditAction.HOST_STATUS_CHANGED).count() == 2


def test_refused_status_change_is_a_message(operator_client):
    host = HostFactory(status=HostStatus.RETIRED)
    response = operator_client.post(
        reverse("machines:host_status", args=[host.pk]), {"status": "draining"}, follow=True
    )
    host.refresh_from_db()
    assert host.status == HostStatus.RETIRED
    messages = [str(message) for message in response.context["messages"]]
    assert any("cannot become" in message for message in messages), messages
    assert response.context["status_actions"] == []
    bogus = operator_client.post(
        reverse("machines:host_status", args=[host.pk]), {"status": "pending"}, follow=True
    )
    assert [str(m) for m in bogus.context["messages"]] == ["Choose a status operators can set."]


def test_command_buttons_queue_commands(operator_client, operator):
    host = HostFactory(connected=False)
    url = reverse("machines:host_command", args=[host.pk])
    response = operator_client.post(url, {"kind": "collect_diagnostics"}, follow=True)
    command = AgentCommand.objects.get()
    assert command.host == host
    assert command.kind == CommandKind.COLLECT_DIAGNOSTICS
    assert command.requested_by == operator
    assert command.status == CommandStatus.PENDING
    assert "receives it when its agent connects" in response.content.decode()
    operator_client.post(url, {"kind": "reboot-everything"})
    assert AgentCommand.objects.count() == 1


def test_rotate_shows_new_credential_once_and_revokes_old(operator_client):
    joined = host_joined(name="rot")
    response = operator_client.post(
        reverse("machines:host_credential_rotate", args=[joined.host.pk])
    )
    assert response.status_code == 200
    new = response.context["credential"]
    assert new.startswith("rhc_")
    assert new in response.content.decode()
    assert credential_authenticate(joined.credential) is None
    assert credential_authenticate(new).host == joined.host
    page = operator_client.get(reverse("machines:host_detail", args=[joined.host.pk]))
    assert new not in page.content.decode()


def test_revoke_credential(operator_client):
    joined = host_joined(name="rev")
    response = operator_client.post(
        reverse("machines:host_credential_revoke", args=[joined.host.pk]), follow=True
    )
    assert "1 credential revoked" in response.content.decode()
    assert credential_authenticate(joined.credential) is None
    assert not HostCredential.objects.filter(revoked_at__isnull=True).exists()
    assert response.context["credentials"].count() == 0


# Join tokens -------------------------------------------------------------------------------


def test_mint_join_token_shows_token_and_command_once(operator_client, operator):
    region = RegionFactory(slug="lab")
    before = timezone.now()
    response = operator_client.post(
        reverse("machines:join_token_list"),
        {
            "name": "rack 9",
            "region": region.pk,
            "labels": "rack=9, tier=gold",
            "expires_in_hours": 48,
            "max_uses": 3,
        },
    )
    assert response.status_code == 200
    plaintext = response.context["plaintext"]
    command = response.context["join_command"]
    assert command == (
        f"remotegpu-agent join --server http://testserver --token {plaintext}"
        " && remotegpu-agent run"
    )
    html = response.content.decode()
    assert plaintext in html
    assert 'data-copy="join-command"' in html
    token = JoinToken.objects.get()
    assert token.created_by == operator
    assert token.region == region
    assert token.labels == {"rack": "9", "tier": "gold"}
    assert token.max_uses == 3
    assert timedelta(hours=47) < token.expires_at - before <= timedelta(hours=48, minutes=1)
    listing = operator_client.get(reverse("machines:join_token_list")).content.decode()
    assert "rack 9" in listing
    assert plaintext not in listing
    # The token really works, and applies its region and labels.
    host = host_join(token=plaintext, name="from-page").host
    assert host.region == region
    assert host.labels == {"rack": "9", "tier": "gold"}


def test_mint_join_token_field_errors(operator_client):
    url = reverse("machines:join_token_list")
    response = operator_client.post(
        url, {"name": "x", "labels": "broken", "expires_in_hours": 1, "max_uses": 1}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["labels"]
    assert 'data-testid="error-labels"' in response.content.decode()
    response = operator_client.post(
        url, {"name": "x", "labels": "", "expires_in_hours": 0, "max_uses": 0}
    )
    assert set(response.context["form"].errors) == {"expires_in_hours", "max_uses"}
    assert not JoinToken.objects.exists()


def test_revoke_join_token(operator_client):
    issued = join_token_issue(name="old rack")
    response = operator_client.post(
        reverse("machines:join_token_revoke", args=[issued.join_token.pk]), follow=True
    )
    issued.join_token.refresh_from_db()
    assert issued.join_token.revoked_at is not None
    assert "Join token old rack revoked." in response.content.decode()
    assert "revoked</span>" in response.content.decode()


# Regions -----------------------------------------------------------------------------------


def test_create_region_and_field_errors(operator_client):
    url = reverse("machines:region_list")
    response = operator_client.post(
        url, {"name": "Beijing", "slug": "bj-1", "location": "Haidian", "description": "Row 3"}
    )
    assert response.status_code == 302
    region = Region.objects.get(slug="bj-1")
    assert (region.name, region.location, region.description) == ("Beijing", "Haidian", "Row 3")
    HostFactory(region=region)
    page = operator_client.get(url)
    assert [r.host_count for r in page.context["regions"] if r.slug == "bj-1"] == [1]
    duplicate = operator_client.post(url, {"name": "Other", "slug": "bj-1"})
    assert duplicate.status_code == 200
    assert duplicate.context["form"].errors["slug"]
    assert Region.objects.filter(slug="bj-1").count() == 1


# Metrics endpoints -------------------------------------------------------------------------


def _bucket_start(moment: datetime, step: int) -> datetime:
    seconds = int((moment - EPOCH).total_seconds()) // step * step
    return EPOCH + timedelta(seconds=seconds)


def _host_sample(host, time, cpu, memory_used, memory_total=100):
    HostSample.objects.create(
        host=host,
        time=time,
        cpu_percent=cpu,
        memory_used=memory_used,
        memory_total=memory_total,
        disk_used=1,
        disk_total=2,
    )


def _host_rollup(host, time, cpu, memory_used, memory_total=100):
    HostSampleRollup.objects.create(
        host=host,
        time=time,
        cpu_percent=cpu,
        memory_used=memory_used,
        memory_total=memory_total,
        disk_used=1,
        disk_total=2,
    )


def _gpu_sample(gpu, time, utilization, memory_used=GIB, temperature=50.0, power_draw=100.0):
    GPUSample.objects.create(
        gpu=gpu,
        time=time,
        utilization=utilization,
        memory_used=memory_used,
        temperature=temperature,
        power_draw=power_draw,
    )


def test_gpu_figures_a_driver_cannot_give_are_null_in_buckets(token_client_for, operator):
    """A bucket averages the figures that were given; one where none was is null (a gap on
    the chart), never 0."""
    gpu = GPUFactory()
    base = _bucket_start(timezone.now() - timedelta(minutes=10), 30)
    _gpu_sample(gpu, base + timedelta(seconds=1), None, temperature=None, power_draw=None)
    _gpu_sample(gpu, base + timedelta(seconds=31), 40, temperature=None, power_draw=None)
    _gpu_sample(gpu, base + timedelta(seconds=36), None, temperature=60.0, power_draw=None)
    body = token_client_for(operator).get(f"/api/v1/hosts/{gpu.host_id}/metrics/").json()
    (series,) = body["gpus"]
    start = int(base.timestamp())
    assert series["t"] == [start, start + 30]
    assert series["utilization"] == [None, 40.0]
    assert series["temperature"] == [None, 60.0]
    assert series["power_draw"] == [None, None]
    assert series["memory_used"] == [GIB, GIB]


def test_host_metrics_buckets_are_averaged_in_sql(token_client_for, operator):
    host = HostFactory()
    other = HostFactory()
    first, second = GPUFactory(host=host, index=0), GPUFactory(host=host, index=1)
    lost = GPUFactory(host=host, index=2, health=GPUHealth.LOST)
    base = _bucket_start(timezone.now() - timedelta(minutes=10), 30)
    _host_sample(host, base + timedelta(seconds=1), cpu=10, memory_used=20)
    _host_sample(host, base + timedelta(seconds=16), cpu=30, memory_used=40)
    _host_sample(host, base + timedelta(seconds=31), cpu=50, memory_used=50)
    _host_sample(host, base - timedelta(hours=2), cpu=99, memory_used=99)  # out of range
    _host_sample(other, base + timedelta(seconds=1), cpu=77, memory_used=77)
    _gpu_sample(first, base + timedelta(seconds=1), 60, memory_used=2 * GIB, power_draw=200)
    _gpu_sample(first, base + timedelta(seconds=16), 80, memory_used=4 * GIB, power_draw=300)
    _gpu_sample(second, base + timedelta(seconds=46), 5, temperature=40)
    _gpu_sample(lost, base + timedelta(seconds=1), 100)

    client = token_client_for(operator)
    response = client.get(f"/api/v1/hosts/{host.pk}/metrics/", {"range": "1h"})
    assert response.status_code == 200, response.content
    body = response.json()
    start = int(base.timestamp())
    assert body["range"] == "1h"
    assert body["step"] == 30
    assert body["host"] == {"t": [start, start + 30], "cpu": [20.0, 50.0], "memory": [30.0, 50.0]}
    assert [gpu["uuid"] for gpu in body["gpus"]] == [first.uuid, second.uuid]
    gpu0, gpu1 = body["gpus"]
    assert (gpu0["index"], gpu0["model"], gpu0["memory_total"]) == (0, first.model, 80 * GIB)
    assert gpu0["t"] == [start]
    assert gpu0["utilization"] == [70.0]
    assert gpu0["memory_used"] == [3 * GIB]
    assert gpu0["temperature"] == [50.0]
    assert gpu0["power_draw"] == [250.0]
    assert gpu1["t"] == [start + 30]
    assert gpu1["utilization"] == [5.0]
    assert gpu1["temperature"] == [40.0]


@pytest.mark.parametrize(("range_name", "step"), [("6h", 180), ("24h", 720), ("7d", 5040)])
def test_metric_ranges_have_120_buckets(token_client_for, operator, range_name, step):
    host = HostFactory()
    base = _bucket_start(timezone.now() - timedelta(hours=1), step)
    # Ranges beyond a day read the 5-minute rollups, shorter ones the raw samples.
    sample = _host_rollup if range_name == "7d" else _host_sample
    sample(host, base + timedelta(seconds=1), cpu=10, memory_used=10)
    sample(host, base + timedelta(seconds=step - 1), cpu=20, memory_used=10)
    body = (
        token_client_for(operator)
        .get(f"/api/v1/hosts/{host.pk}/metrics/", {"range": range_name})
        .json()
    )
    assert body["step"] == step
    assert body["host"]["t"] == [int(base.timestamp())]
    assert body["host"]["cpu"] == [15.0]


def test_window_starts_on_a_bucket_boundary(db):
    host = HostFactory()
    now = datetime(2026, 1, 1, 12, 0, 10, tzinfo=UTC)
    _host_sample(host, now - timedelta(minutes=60, seconds=5), cpu=1, memory_used=1)  # kept
    _host_sample(host, now - timedelta(minutes=60, seconds=15), cpu=2, memory_used=1)  # before
    body = selectors.host_metrics(host, "1h", now=now)
    assert body["host"]["t"] == [int(datetime(2026, 1, 1, 11, 0, tzinfo=UTC).timestamp())]
    assert body["host"]["cpu"] == [1.0]


def test_host_metrics_query_count_does_not_grow_with_gpus(token_client_for, operator):
    client = token_client_for(operator)
    client.get("/api/v1/fleet/metrics/")  # the token's first use is recorded once
    now = timezone.now() - timedelta(minutes=1)

    def count_queries(gpus):
        host = HostFactory()
        for index in range(gpus):
            _gpu_sample(GPUFactory(host=host, index=index), now, 50)
        _host_sample(host, now, cpu=1, memory_used=1)
        with CaptureQueriesContext(connection) as queries:
            response = client.get(f"/api/v1/hosts/{host.pk}/metrics/")
        assert response.status_code == 200
        assert len(response.json()["gpus"]) == gpus
        return len(queries)

    assert count_queries(1) == count_queries(4)


def test_bad_range_is_a_field_error(token_client_for, operator):
    host = HostFactory()
    client = token_client_for(operator)
    for url in (f"/api/v1/hosts/{host.pk}/metrics/", "/api/v1/fleet/metrics/"):
        response = client.get(url, {"range": "2w"})
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid"
        assert list(error["fields"]) == ["range"]


def test_fleet_metrics_average_all_gpus(token_client_for, operator):
    base = _bucket_start(timezone.now() - timedelta(minutes=20), 30)
    gpus = [GPUFactory() for _ in range(3)]
    _gpu_sample(gpus[0], base + timedelta(seconds=2), 90)
    _gpu_sample(gpus[1], base + timedelta(seconds=3), 30)
    _gpu_sample(gpus[2], base + timedelta(seconds=17), 0)
    _gpu_sample(gpus[0], base + timedelta(seconds=40), 40)
    _gpu_sample(gpus[0], base - timedelta(hours=3), 100)  # out of range
    body = token_client_for(operator).get("/api/v1/fleet/metrics/").json()
    start = int(base.timestamp())
    assert body == {
        "range": "1h",
        "step": 30,
        "t": [start, start + 30],
        "utilization": [40.0, 40.0],
        "gpus": [3, 1],
    }


def test_metrics_are_for_operators_only(token_client_for, member, api_client):
    host = HostFactory()
    for url in (f"/api/v1/hosts/{host.pk}/metrics/", "/api/v1/fleet/metrics/"):
        assert token_client_for(member).get(url).status_code == 403
        assert api_client.get(url).status_code in (401, 403)


def test_host_page_fetches_metrics_with_its_session(operator_client):
    """The charts' fetch uses the page's session cookie, not a token."""
    host = HostFactory()
    assert operator_client.get(f"/api/v1/hosts/{host.pk}/metrics/?range=6h").status_code == 200
    assert operator_client.get("/api/v1/fleet/metrics/?range=7d").status_code == 200


def test_metrics_endpoints_are_in_the_schema():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path in ("/api/v1/hosts/{id}/metrics/", "/api/v1/fleet/metrics/"):
        operation = schema["paths"][path]["get"]
        parameters = {p["name"]: p for p in operation["parameters"]}
        assert parameters["range"]["schema"]["enum"] == ["1h", "6h", "24h", "7d"]
        assert "200" in operation["responses"]
    host_series = schema["components"]["schemas"]["HostSeries"]["properties"]
    assert {"t", "cpu", "memory"} <= set(host_series)


def test_host_page_says_when_there_is_no_container_runtime(operator_client):
    bare = HostFactory(docker_version="")
    html = operator_client.get(reverse("machines:host_detail", args=[bare.pk])).content.decode()
    assert "No container runtime: environments are not placed here." in html
    docker = HostFactory(docker_version="20.10.24")
    html = operator_client.get(reverse("machines:host_detail", args=[docker.pk])).content.decode()
    assert "No container runtime" not in html
    assert "20.10.24" in html
