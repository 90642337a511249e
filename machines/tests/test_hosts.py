"""Host lifecycle: inventory, operator states, labels, offline detection."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.utils import timezone
from remotegpu_agent import protocol

from accounts.choices import AuditAction, NotificationLevel
from accounts.models import AuditEvent, Notification
from accounts.tests.factories import OperatorFactory, UserFactory
from machines.choices import GPUHealth, HostStatus
from machines.models import GPU, Host
from machines.services import hosts as hosts_module
from machines.services.hosts import (
    host_apply_inventory,
    host_connected,
    host_disconnected,
    host_mark_offline_stale,
    host_set_labels,
    host_set_status,
    labels_parse,
)
from remotegpu.core.errors import PermissionDenied, ValidationError

from .factories import GIB, GPUFactory, HostFactory


def _facts(**overrides) -> protocol.HostFacts:
    values = {
        "hostname": "gpu-01.lan",
        "cpu_model": "Intel Xeon Gold 6338",
        "cpu_cores": 32,
        "memory_total": 256 * GIB,
        "disk_total": 2000 * GIB,
        "os": "Debian GNU/Linux 12",
        "kernel": "6.1.0-18-amd64",
        "docker_version": "24.0.7",
        "agent_version": "0.1.0",
        "gpu_backend": "fake",
    }
    return protocol.HostFacts(**(values | overrides))


def _gpu(uuid: str, index: int = 0, name: str = "NVIDIA H100 80GB HBM3") -> protocol.GPUInfo:
    return protocol.GPUInfo(
        uuid=uuid,
        index=index,
        name=name,
        memory_total=80 * GIB,
        driver_version="550.54.15",
        cuda_version="12.4",
        compute_capability="9.0",
    )


def _inventory(*gpus, containers=(), **facts) -> protocol.Inventory:
    return protocol.Inventory(facts=_facts(**facts), gpus=list(gpus), containers=list(containers))


def _field_error(excinfo, field: str) -> str:
    assert set(excinfo.value.fields) == {field}, excinfo.value.fields
    return excinfo.value.fields[field][0]


# Connection -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (HostStatus.PENDING, HostStatus.ONLINE),
        (HostStatus.OFFLINE, HostStatus.ONLINE),
        (HostStatus.ONLINE, HostStatus.ONLINE),
        (HostStatus.MAINTENANCE, HostStatus.MAINTENANCE),
        (HostStatus.DRAINING, HostStatus.DRAINING),
    ],
)
def test_host_connected_brings_it_online_unless_an_operator_state_holds(db, before, after):
    host = HostFactory(status=before, connected=False, last_seen_at=None)
    host_connected(host, "channel")
    host.refresh_from_db()
    assert host.status == after
    assert host.connected is True
    assert host.last_seen_at is not None

    host_disconnected(host.pk)
    host.refresh_from_db()
    assert host.connected is False
    assert host.status == after  # offline detection decides, not the socket


# Inventory --------------------------------------------------------------------------------


def test_inventory_stores_facts_and_gpus_by_uuid(db):
    host = HostFactory(cpu_model="", cpu_cores=0, last_seen_at=None)
    host_apply_inventory(
        host,
        _inventory(
            _gpu("GPU-a", 0),
            _gpu("GPU-b", 1),
            containers=[protocol.ContainerInfo("c1", "rgpu-env-1", "1", "running")],
        ),
    )

    host.refresh_from_db()
    assert (host.hostname, host.cpu_model, host.cpu_cores) == (
        "gpu-01.lan",
        "Intel Xeon Gold 6338",
        32,
    )
    assert (host.memory_total, host.disk_total) == (256 * GIB, 2000 * GIB)
    assert (host.os, host.kernel, host.docker_version) == (
        "Debian GNU/Linux 12",
        "6.1.0-18-amd64",
        "24.0.7",
    )
    assert (host.agent_version, host.gpu_backend) == ("0.1.0", "fake")
    assert host.containers == [
        {
            "id": "c1",
            "name": "rgpu-env-1",
            "environment": "1",
            "state": "running",
            "image": "",
            "created": 0,
        }
    ]
    assert host.last_seen_at is not None
    gpus = list(host.gpus.order_by("index"))
    assert [(g.uuid, g.index, g.model, g.health) for g in gpus] == [
        ("GPU-a", 0, "NVIDIA H100 80GB HBM3", GPUHealth.OK),
        ("GPU-b", 1, "NVIDIA H100 80GB HBM3", GPUHealth.OK),
    ]
    assert (gpus[0].memory_total, gpus[0].driver_version, gpus[0].cuda_version) == (
        80 * GIB,
        "550.54.15",
        "12.4",
    )
    assert gpus[0].compute_capability == "9.0"


def test_later_inventory_updates_gpus_in_place_and_marks_missing_ones_lost(db):
    host = HostFactory()
    host_apply_inventory(host, _inventory(_gpu("GPU-a", 0), _gpu("GPU-b", 1)))
    first_ids = dict(GPU.objects.values_list("uuid", "pk"))

    host_apply_inventory(host, _inventory(_gpu("GPU-b", 0, name="renamed"), _gpu("GPU-c", 1)))

    gpus = {gpu.uuid: gpu for gpu in GPU.objects.all()}
    assert set(gpus) == {"GPU-a", "GPU-b", "GPU-c"}
    assert gpus["GPU-a"].health == GPUHealth.LOST
    assert (gpus["GPU-b"].pk, gpus["GPU-b"].index, gpus["GPU-b"].model) == (
        first_ids["GPU-b"],
        0,
        "renamed",
    )
    assert gpus["GPU-c"].health == GPUHealth.OK

    # The GPU comes back: healthy again, same row.
    host_apply_inventory(host, _inventory(_gpu("GPU-a", 0)))
    assert GPU.objects.get(uuid="GPU-a").pk == first_ids["GPU-a"]
    assert GPU.objects.get(uuid="GPU-a").health == GPUHealth.OK
    assert set(GPU.objects.filter(health=GPUHealth.LOST).values_list("uuid", flat=True)) == {
        "GPU-b",
        "GPU-c",
    }


def test_an_inventory_is_applied_in_one_transaction_with_its_listeners(db, monkeypatch):
    """A listener (environments marking one lost and releasing its GPUs) that fails takes
    the whole inventory back: nobody ever reads half of it."""
    host = HostFactory()
    host_apply_inventory(host, _inventory(_gpu("GPU-a", 0), cpu_cores=4))

    def failing(host, inventory):
        raise RuntimeError("a listener failed")

    monkeypatch.setattr(hosts_module, "_inventory_listeners", [failing])
    with pytest.raises(RuntimeError):
        host_apply_inventory(host, _inventory(_gpu("GPU-b", 0), cpu_cores=64))
    host.refresh_from_db()
    assert host.cpu_cores == 4
    assert list(host.gpus.values_list("uuid", "health")) == [("GPU-a", GPUHealth.OK)]


def test_a_host_without_gpus_reports_none_and_loses_nothing_of_others(db):
    host, other = HostFactory(), HostFactory()
    GPUFactory(host=other, uuid="GPU-other")
    host_apply_inventory(host, _inventory())
    assert not host.gpus.exists()
    assert GPU.objects.get(uuid="GPU-other").health == GPUHealth.OK


def test_inventory_cannot_take_over_another_hosts_gpu(db, caplog):
    victim, intruder = HostFactory(), HostFactory()
    GPUFactory(host=victim, uuid="GPU-victim", index=3, model="NVIDIA A100")

    with caplog.at_level(logging.WARNING, logger="machines.services.hosts"):
        host_apply_inventory(intruder, _inventory(_gpu("GPU-victim", 0), _gpu("GPU-own", 1)))

    gpu = GPU.objects.get(uuid="GPU-victim")
    assert (gpu.host, gpu.index, gpu.model, gpu.health) == (
        victim,
        3,
        "NVIDIA A100",
        GPUHealth.OK,
    )
    assert list(intruder.gpus.values_list("uuid", flat=True)) == ["GPU-own"]
    assert "GPU-victim" in caplog.text


@pytest.mark.parametrize(
    "status", [HostStatus.OFFLINE, HostStatus.MAINTENANCE, HostStatus.DRAINING]
)
def test_a_live_hosts_gpus_stay_with_it_whatever_its_state(db, status):
    owner, other = HostFactory(status=status), HostFactory()
    GPUFactory(host=owner, uuid="GPU-1")
    host_apply_inventory(other, _inventory(_gpu("GPU-1", 0)))
    assert GPU.objects.get(uuid="GPU-1").host == owner


def test_a_machine_joining_again_after_retirement_takes_its_gpus_along(db):
    """Retire gpu-01, reinstall it, join it as a new host: its GPUs (same UUIDs) now belong to
    the new host, healthy, instead of staying with the retired row."""
    retired = HostFactory(name="gpu-01", status=HostStatus.RETIRED)
    GPUFactory(host=retired, uuid="GPU-real-1", index=0, health=GPUHealth.OK)
    rejoined = HostFactory(name="gpu-01-reinstalled")

    host_apply_inventory(rejoined, _inventory(_gpu("GPU-real-1", 0), _gpu("GPU-real-2", 1)))

    assert list(rejoined.gpus.order_by("index").values_list("uuid", "health")) == [
        ("GPU-real-1", GPUHealth.OK),
        ("GPU-real-2", GPUHealth.OK),
    ]
    assert not retired.gpus.exists()


def test_long_strings_from_the_agent_are_cut_to_their_columns(db):
    host = HostFactory()
    host_apply_inventory(
        host, _inventory(_gpu("GPU-" + "u" * 200, 0, name="m" * 300), cpu_model="c" * 500)
    )
    host.refresh_from_db()
    assert host.cpu_model == "c" * 200
    gpu = host.gpus.get()
    assert len(gpu.uuid) == 100
    assert gpu.model == "m" * 100


# Operator states --------------------------------------------------------------------------

ALLOWED = [
    (HostStatus.PENDING, HostStatus.MAINTENANCE),
    (HostStatus.ONLINE, HostStatus.MAINTENANCE),
    (HostStatus.OFFLINE, HostStatus.MAINTENANCE),
    (HostStatus.DRAINING, HostStatus.MAINTENANCE),
    (HostStatus.ONLINE, HostStatus.DRAINING),
    (HostStatus.OFFLINE, HostStatus.DRAINING),
    (HostStatus.MAINTENANCE, HostStatus.DRAINING),
    (HostStatus.PENDING, HostStatus.RETIRED),
    (HostStatus.ONLINE, HostStatus.RETIRED),
    (HostStatus.OFFLINE, HostStatus.RETIRED),
    (HostStatus.MAINTENANCE, HostStatus.RETIRED),
    (HostStatus.DRAINING, HostStatus.RETIRED),
]
REFUSED = [
    (HostStatus.MAINTENANCE, HostStatus.MAINTENANCE),
    (HostStatus.RETIRED, HostStatus.MAINTENANCE),
    (HostStatus.PENDING, HostStatus.DRAINING),
    (HostStatus.DRAINING, HostStatus.DRAINING),
    (HostStatus.RETIRED, HostStatus.DRAINING),
    (HostStatus.RETIRED, HostStatus.RETIRED),
    # Resuming is for hosts an operator took out of service.
    (HostStatus.ONLINE, HostStatus.ONLINE),
    (HostStatus.OFFLINE, HostStatus.ONLINE),
    (HostStatus.PENDING, HostStatus.ONLINE),
    (HostStatus.RETIRED, HostStatus.ONLINE),
    # The agent's comings and goings are not for operators to set.
    (HostStatus.ONLINE, HostStatus.OFFLINE),
    (HostStatus.OFFLINE, HostStatus.PENDING),
    (HostStatus.ONLINE, "exploded"),
]


@pytest.mark.parametrize(("before", "after"), ALLOWED)
def test_operator_state_transitions(operator, before, after):
    host = HostFactory(status=before)
    returned = host_set_status(operator=operator, host=host, status=after, reason="  fan swap")
    host.refresh_from_db()
    assert host.status == after == returned.status
    assert host.status_reason == "  fan swap"
    event = AuditEvent.objects.get(action=AuditAction.HOST_STATUS_CHANGED)
    assert (event.actor, event.target_id) == (operator, str(host.pk))
    assert event.details == {"status": [before, after], "reason": "  fan swap"}


@pytest.mark.parametrize(("before", "after"), REFUSED)
def test_refused_transitions_are_a_status_field_error(operator, before, after):
    host = HostFactory(status=before)
    changed_at = host.status_changed_at
    with pytest.raises(ValidationError) as excinfo:
        host_set_status(operator=operator, host=host, status=after)
    assert _field_error(excinfo, "status")
    host.refresh_from_db()
    assert (host.status, host.status_changed_at) == (before, changed_at)
    assert not AuditEvent.objects.filter(action=AuditAction.HOST_STATUS_CHANGED).exists()


@pytest.mark.parametrize(
    ("connected", "after"), [(True, HostStatus.ONLINE), (False, HostStatus.OFFLINE)]
)
@pytest.mark.parametrize("before", [HostStatus.MAINTENANCE, HostStatus.DRAINING])
def test_resume_returns_to_online_or_offline_by_the_agents_connection(
    operator, before, connected, after
):
    host = HostFactory(status=before, connected=connected)
    host_set_status(operator=operator, host=host, status=HostStatus.ONLINE)
    host.refresh_from_db()
    assert host.status == after
    event = AuditEvent.objects.get(action=AuditAction.HOST_STATUS_CHANGED)
    assert event.details["status"] == [before, after]


def test_status_is_for_operators_only(member):
    host = HostFactory(status=HostStatus.ONLINE)
    with pytest.raises(PermissionDenied):
        host_set_status(operator=member, host=host, status=HostStatus.MAINTENANCE)
    host.refresh_from_db()
    assert host.status == HostStatus.ONLINE
    assert not AuditEvent.objects.filter(action=AuditAction.HOST_STATUS_CHANGED).exists()


def test_status_change_reads_the_current_row_not_the_callers_copy(operator):
    """Two operators racing: the second one sees the first one's change."""
    host = HostFactory(status=HostStatus.ONLINE)
    stale_copy = Host.objects.get(pk=host.pk)
    host_set_status(operator=operator, host=host, status=HostStatus.RETIRED)
    with pytest.raises(ValidationError):
        host_set_status(operator=operator, host=stale_copy, status=HostStatus.MAINTENANCE)
    host.refresh_from_db()
    assert host.status == HostStatus.RETIRED


# Labels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("", {}),
        ("gpu=a100", {"gpu": "a100"}),
        (" gpu = a100 , zone=b\nrack=7,,", {"gpu": "a100", "zone": "b", "rack": "7"}),
        ("empty=", {"empty": ""}),
        ("k=v=w", {"k": "v=w"}),
        ("a=1, a=2", {"a": "2"}),
        ("nvidia.com/gpu.product=H100", {"nvidia.com/gpu.product": "H100"}),
    ],
)
def test_labels_parse(text, labels):
    assert labels_parse(text) == labels


@pytest.mark.parametrize(
    "text",
    ["gpu", "=a100", "bad key=1", "-leading=1", "k" * 65 + "=v", "k=" + "v" * 101, "k=a\x00b"],
)
def test_labels_parse_refuses_malformed(text):
    with pytest.raises(ValidationError) as excinfo:
        labels_parse(text)
    assert _field_error(excinfo, "labels")


@pytest.mark.parametrize(
    ("labels", "stored"),
    [
        ("gpu=a100, zone=b", {"gpu": "a100", "zone": "b"}),
        ({"gpu": "a100", "zone": " b "}, {"gpu": "a100", "zone": "b"}),
        ({}, {}),
    ],
)
def test_host_set_labels_string_and_object_forms(operator, labels, stored):
    host = HostFactory(labels={"old": "1"})
    host_set_labels(operator=operator, host=host, labels=labels)
    host.refresh_from_db()
    assert host.labels == stored
    event = AuditEvent.objects.get(action=AuditAction.HOST_LABELS_CHANGED)
    assert event.details == {"labels": [{"old": "1"}, stored]}


@pytest.mark.parametrize(
    "labels",
    [
        "gpu",
        ["gpu=a100"],
        {"bad key": "x"},
        {"a=b": "c"},  # would read back as a=b=c
        {"gpu": "a,b"},  # would read back as two labels
        {"gpu": 1},
        None,
    ],
)
def test_host_set_labels_refuses_malformed(operator, labels):
    host = HostFactory(labels={"old": "1"})
    with pytest.raises(ValidationError) as excinfo:
        host_set_labels(operator=operator, host=host, labels=labels)
    assert _field_error(excinfo, "labels")
    host.refresh_from_db()
    assert host.labels == {"old": "1"}
    assert not AuditEvent.objects.exists()


def test_host_set_labels_is_for_operators_only(member):
    host = HostFactory(labels={"old": "1"})
    with pytest.raises(PermissionDenied):
        host_set_labels(operator=member, host=host, labels="new=2")
    host.refresh_from_db()
    assert host.labels == {"old": "1"}


# Offline detection ------------------------------------------------------------------------


def test_hosts_go_offline_after_three_of_their_own_intervals(db):
    now = timezone.now()
    ago = lambda seconds: now - timedelta(seconds=seconds)  # noqa: E731
    stale = HostFactory(heartbeat_interval=15, last_seen_at=ago(46))
    fresh = HostFactory(heartbeat_interval=15, last_seen_at=ago(44))
    slow = HostFactory(heartbeat_interval=60, last_seen_at=ago(170))
    slow_stale = HostFactory(heartbeat_interval=60, last_seen_at=ago(181))
    maintenance = HostFactory(status=HostStatus.MAINTENANCE, last_seen_at=ago(3600))
    draining = HostFactory(status=HostStatus.DRAINING, last_seen_at=ago(3600))
    pending = HostFactory(status=HostStatus.PENDING, last_seen_at=None)
    offline = HostFactory(status=HostStatus.OFFLINE, last_seen_at=ago(3600))

    went = host_mark_offline_stale(now)

    assert {host.pk for host in went} == {stale.pk, slow_stale.pk}
    statuses = dict(Host.objects.values_list("pk", "status"))
    assert statuses == {
        stale.pk: HostStatus.OFFLINE,
        fresh.pk: HostStatus.ONLINE,
        slow.pk: HostStatus.ONLINE,
        slow_stale.pk: HostStatus.OFFLINE,
        maintenance.pk: HostStatus.MAINTENANCE,
        draining.pk: HostStatus.DRAINING,
        pending.pk: HostStatus.PENDING,
        offline.pk: HostStatus.OFFLINE,
    }
    stale.refresh_from_db()
    assert stale.status_reason
    assert stale.connected is False  # whatever socket it had is dead or hung
    assert stale.status_changed_at == now
    offline.refresh_from_db()
    assert offline.status_changed_at != now


def test_the_agents_own_interval_beats_the_configured_one(db):
    """An agent started with ``--heartbeat-interval 60`` on a host configured for 15 s is not
    offline after 46 s of quiet; one that says 5 s is offline after 16 s."""
    now = timezone.now()
    slow_agent = HostFactory(heartbeat_interval=15, last_seen_at=now - timedelta(seconds=46))
    host_apply_inventory(slow_agent, _inventory(heartbeat_interval=60.0))
    Host.objects.filter(pk=slow_agent.pk).update(last_seen_at=now - timedelta(seconds=46))
    fast_agent = HostFactory(heartbeat_interval=15, last_seen_at=now - timedelta(seconds=16))
    host_apply_inventory(fast_agent, _inventory(heartbeat_interval=5.0))
    Host.objects.filter(pk=fast_agent.pk).update(last_seen_at=now - timedelta(seconds=16))
    silent = HostFactory(heartbeat_interval=15, last_seen_at=now - timedelta(seconds=46))
    host_apply_inventory(silent, _inventory(heartbeat_interval=0.0))  # an older agent
    Host.objects.filter(pk=silent.pk).update(last_seen_at=now - timedelta(seconds=46))

    went = host_mark_offline_stale(now)

    assert {host.pk for host in went} == {fast_agent.pk, silent.pk}
    slow_agent.refresh_from_db()
    silent.refresh_from_db()
    assert (slow_agent.agent_heartbeat_interval, slow_agent.effective_heartbeat_interval) == (
        60,
        60,
    )
    assert (silent.agent_heartbeat_interval, silent.effective_heartbeat_interval) == (None, 15)


@pytest.mark.parametrize("interval", [-1.0, protocol.MAX_HEARTBEAT_INTERVAL + 1.0])
def test_an_interval_out_of_range_is_refused_whole(db, interval):
    host = HostFactory(cpu_model="")
    with pytest.raises(protocol.ProtocolError, match="heartbeat_interval"):
        host_apply_inventory(host, _inventory(heartbeat_interval=interval))
    host.refresh_from_db()
    assert (host.cpu_model, host.agent_heartbeat_interval) == ("", None)


def test_operators_are_notified_once_per_host_through_the_offline_alert(default_alert_rules):
    from machines.tasks import host_detect_offline_task

    now = timezone.now()
    operators = [OperatorFactory(), OperatorFactory()]
    OperatorFactory(is_active=False)
    customer = UserFactory()
    HostFactory(name="gpu-lost-01", last_seen_at=now - timedelta(minutes=5))

    assert host_detect_offline_task() == 1
    assert host_detect_offline_task() == 0
    assert host_mark_offline_stale(now + timedelta(minutes=5)) == []

    notifications = Notification.objects.all()
    assert sorted(n.user_id for n in notifications) == sorted(o.pk for o in operators)
    for notification in notifications:
        assert "gpu-lost-01" in notification.title
        assert notification.level == NotificationLevel.ERROR
        assert notification.url.startswith("/operator/alerts/")
    assert not Notification.objects.filter(user=customer).exists()


def test_nothing_stale_nothing_written(db, django_assert_num_queries):
    HostFactory(last_seen_at=timezone.now())
    with django_assert_num_queries(1):
        assert host_mark_offline_stale() == []


def test_an_old_socket_closing_late_leaves_the_new_one_connected(db):
    host = HostFactory(status=HostStatus.ONLINE)
    host_connected(host, "first")
    host_connected(host, "second")  # the agent reconnected before the first socket closed
    host_disconnected(host.pk, "first")
    host.refresh_from_db()
    assert host.connected
    host_disconnected(host.pk, "second")
    host.refresh_from_db()
    assert not host.connected


# Per-host GPU counts (kept by a trigger) ---------------------------------------------------


def _counts(host) -> dict[str, int]:
    from machines.models import HostGPUModel

    return dict(HostGPUModel.objects.filter(host=host).values_list("model", "healthy"))


def test_the_database_keeps_each_hosts_healthy_gpu_counts(db):
    from machines.tests.factories import GPUFactory

    host, other = HostFactory(), HostFactory()
    a = GPUFactory(host=host, model="A100")
    GPUFactory(host=host, model="A100")
    h = GPUFactory(host=host, model="H100")
    assert _counts(host) == {"A100": 2, "H100": 1}

    GPU.objects.filter(pk=a.pk).update(health=GPUHealth.LOST)
    assert _counts(host) == {"A100": 1, "H100": 1}
    GPU.objects.filter(pk=a.pk).update(utilization=50)  # a heartbeat's figures: no change
    assert _counts(host) == {"A100": 1, "H100": 1}
    GPU.objects.filter(pk=h.pk).update(host=other)  # a GPU moving with its machine
    assert _counts(host) == {"A100": 1, "H100": 0}
    assert _counts(other) == {"H100": 1}
    h.refresh_from_db()
    h.save()  # a save that rewrites every column changes nothing either
    assert _counts(other) == {"H100": 1}
    GPU.objects.filter(host=host).delete()
    assert _counts(host) == {"A100": 0, "H100": 0}
