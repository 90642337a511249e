"""Auto-stop: a stop time and a maximum run time, a warning before, a notification after."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Notification
from environments.choices import EnvironmentStatus as S
from environments.choices import StatusReason
from environments.models import Environment
from environments.services.autostop import (
    environment_auto_stop_sweep,
    environment_set_auto_stop,
)
from environments.services.lifecycle import environment_create
from remotegpu.core.errors import ValidationError

from .conftest import latest_command, run_succeeds

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(customer, organization, spec, image, host):
    environment = environment_create(
        user=customer, organization=organization, name="train-1", spec=spec, image=image
    )
    run_succeeds(environment)
    return environment


def test_a_stop_time_warns_once_then_stops_and_tells_the_owner(running, customer):
    now = timezone.now()
    environment_set_auto_stop(user=customer, environment=running, stop_at=now + timedelta(hours=1))
    assert AuditEvent.objects.filter(action="environment.auto_stop_changed").exists()
    running.refresh_from_db()
    assert running.auto_stop_at == running.stop_at

    assert environment_auto_stop_sweep(now) == {"warned": 0, "stopped": 0}  # an hour away
    soon = running.stop_at - timedelta(minutes=4)
    assert environment_auto_stop_sweep(soon) == {"warned": 1, "stopped": 0}
    assert environment_auto_stop_sweep(soon + timedelta(seconds=30))["warned"] == 0  # once
    warning = Notification.objects.get(user=customer)
    assert "stops in 5 minutes" in warning.title
    assert warning.url == running.get_absolute_url()

    assert environment_auto_stop_sweep(running.stop_at + timedelta(seconds=1))["stopped"] == 1
    running.refresh_from_db()
    assert (running.status, running.status_reason) == (S.STOPPING, StatusReason.SCHEDULED)
    assert latest_command(running).kind == "environment_stop"
    assert running.stop_at is None  # a stop time works once
    assert Notification.objects.filter(user=customer, title__contains="auto-stop").exists()


def test_a_maximum_run_time_counts_from_each_start(running, customer):
    environment_set_auto_stop(user=customer, environment=running, max_runtime_minutes=90)
    running.refresh_from_db()
    assert running.auto_stop_at == running.started_at + timedelta(minutes=90)
    just_before = running.started_at + timedelta(minutes=89)
    assert environment_auto_stop_sweep(just_before)["stopped"] == 0
    assert environment_auto_stop_sweep(running.started_at + timedelta(minutes=90))["stopped"] == 1
    running.refresh_from_db()
    assert running.max_runtime_minutes == 90  # it applies to the next run too


def test_a_stop_time_that_passed_while_stopped_does_not_stop_the_next_run(running, customer):
    environment_set_auto_stop(
        user=customer, environment=running, stop_at=timezone.now() + timedelta(hours=1)
    )
    # The environment was stopped meanwhile and started again after that time.
    running.refresh_from_db()
    Environment.objects.filter(pk=running.pk).update(
        started_at=running.stop_at + timedelta(minutes=10)
    )
    running.refresh_from_db()
    assert running.auto_stop_at is None
    later = running.started_at + timedelta(minutes=1)
    assert environment_auto_stop_sweep(later) == {"warned": 0, "stopped": 0}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"stop_at": "past"}, "stop_at"),
        ({"stop_at": "in two years"}, "stop_at"),
        ({"max_runtime_minutes": 0}, "max_runtime_minutes"),
        ({"max_runtime_minutes": 30 * 24 * 60 + 1}, "max_runtime_minutes"),
        ({"max_runtime_minutes": True}, "max_runtime_minutes"),
    ],
)
def test_bad_auto_stop_values_are_field_errors_and_change_nothing(
    running, customer, changes, field
):
    now = timezone.now()
    values = {"past": now - timedelta(minutes=5), "in two years": now + timedelta(days=730)}
    changes = {key: values.get(value, value) for key, value in changes.items()}
    with pytest.raises(ValidationError) as refused:
        environment_set_auto_stop(user=customer, environment=running, **changes)
    assert field in refused.value.fields
    running.refresh_from_db()
    assert (running.stop_at, running.max_runtime_minutes) == (None, None)


def test_set_and_clear_through_the_api(running, customer):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(customer)
    url = reverse("api:environment-auto-stop", args=[running.pk])
    stop_at = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    response = api.post(url, {"stop_at": stop_at.isoformat(), "max_runtime_minutes": 60})
    assert response.status_code == 200, response.content
    assert response.json()["max_runtime_minutes"] == 60
    assert response.json()["auto_stop_at"] is not None
    # Only what is given changes; null clears.
    response = api.post(url, {"max_runtime_minutes": None}, format="json")
    assert response.json()["max_runtime_minutes"] is None
    assert response.json()["stop_at"] is not None
    response = api.post(url, {"max_runtime_minutes": 0}, format="json")
    assert response.status_code == 400
    assert "max_runtime_minutes" in response.json()["error"]["fields"]


def test_create_with_auto_stop_through_the_api(customer, organization, spec, image, host):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(customer)
    body = {"name": "short-1", "spec": spec.pk, "image": image.pk, "max_runtime_minutes": 30}
    response = api.post(reverse("api:environment-list"), body, format="json")
    assert response.status_code == 201, response.content
    assert Environment.objects.get(name="short-1").max_runtime_minutes == 30
    body = {"name": "short-2", "spec": spec.pk, "image": image.pk, "max_runtime_minutes": -1}
    response = api.post(reverse("api:environment-list"), body, format="json")
    assert response.status_code == 400
    assert not Environment.objects.filter(name="short-2").exists()


def test_the_page_sets_and_clears_it(client, customer, organization, running):
    from accounts.tests.factories import PASSWORD

    customer.current_organization = organization
    customer.save()
    client.login(email=customer.email, password=PASSWORD)
    page = client.get(running.get_absolute_url()).content.decode()
    assert 'data-testid="auto-stop-form"' in page
    assert "Off: it runs until you stop it." in page
    url = reverse("environments:environment_auto_stop", args=[running.pk])
    form = {"stop_at": "", "idle_stop_minutes": "", "idle_gpu_percent": "5"}
    response = client.post(url, form | {"max_runtime_hours": "1.5"})
    assert response.status_code == 302
    running.refresh_from_db()
    assert running.max_runtime_minutes == 90
    assert "This run stops at" in client.get(running.get_absolute_url()).content.decode()
    response = client.post(url, form | {"max_runtime_hours": "-2"}, follow=True)
    assert "greater than or equal to 0.1" in response.content.decode()
    running.refresh_from_db()
    assert running.max_runtime_minutes == 90
    client.post(url, form | {"max_runtime_hours": "", "idle_stop_minutes": "45"})
    running.refresh_from_db()
    assert (running.max_runtime_minutes, running.idle_stop_minutes) == (None, 45)
    page = client.get(running.get_absolute_url()).content.decode()
    assert "no session is open for 45 minutes" in page


def _sample(environment, at, utilization):
    from machines.models import GPUSample

    for assignment in environment.gpu_assignments.filter(released_at__isnull=True):
        GPUSample.objects.create(
            gpu_id=assignment.gpu_id, time=at, utilization=utilization, memory_used=0
        )


def test_idle_gpus_warn_then_stop_it_with_reason_idle(running, customer):
    environment_set_auto_stop(user=customer, environment=running, idle_stop_minutes=30)
    running.refresh_from_db()
    start = running.started_at
    _sample(running, start + timedelta(minutes=5), 80)  # busy at first
    _sample(running, start + timedelta(minutes=6), 1)
    _sample(running, start + timedelta(minutes=29), 2)
    # Idle since minute 6 (the last busy sample was at 5): the deadline is 5 + 30 = 35.
    assert environment_auto_stop_sweep(start + timedelta(minutes=29))["warned"] == 0
    _sample(running, start + timedelta(minutes=31), 2)
    assert environment_auto_stop_sweep(start + timedelta(minutes=31)) == {
        "warned": 1,
        "stopped": 0,
    }
    warning = Notification.objects.get(user=customer)
    assert "idle" in warning.body
    _sample(running, start + timedelta(minutes=35), 0)
    assert environment_auto_stop_sweep(start + timedelta(minutes=35))["stopped"] == 1
    running.refresh_from_db()
    assert (running.status, running.status_reason) == (S.STOPPING, StatusReason.IDLE)


def test_a_busy_gpu_or_an_open_session_keeps_it_running(running, customer):
    from environments.services import autostop

    environment_set_auto_stop(user=customer, environment=running, idle_stop_minutes=30)
    running.refresh_from_db()
    start = running.started_at
    _sample(running, start + timedelta(minutes=40), 50)  # busy now
    assert autostop.idle_deadline(running, start + timedelta(minutes=41)) == start + timedelta(
        minutes=70
    )
    _sample(running, start + timedelta(minutes=80), 0)
    at = start + timedelta(minutes=80)

    def session_open(environment):
        return at  # a terminal is open now

    autostop._activity_sources.append(session_open)
    try:
        assert autostop.idle_deadline(running, at) == at + timedelta(minutes=30)
        assert environment_auto_stop_sweep(at)["stopped"] == 0
    finally:
        autostop._activity_sources.remove(session_open)
    assert environment_auto_stop_sweep(at)["stopped"] == 1


def test_no_fresh_gpu_figures_no_idle_stop(running, customer):
    from environments.services.autostop import idle_deadline

    environment_set_auto_stop(user=customer, environment=running, idle_stop_minutes=30)
    running.refresh_from_db()
    start = running.started_at
    _sample(running, start + timedelta(minutes=1), 0)
    # Hours later, no figures since minute 1: the host went quiet; nobody can tell.
    assert idle_deadline(running, start + timedelta(hours=3)) is None
    assert environment_auto_stop_sweep(start + timedelta(hours=3))["stopped"] == 0


def test_idle_stop_needs_gpus_and_sane_values(customer, organization, image, host, running):
    from environments.services.autostop import idle_deadline

    from .factories import SpecFactory

    cpu = environment_create(
        user=customer,
        organization=organization,
        name="cpu-1",
        spec=SpecFactory(gpu_count=0, gpu_model=""),
        image=image,
        idle_stop_minutes=30,
    )
    run_succeeds(cpu)
    assert idle_deadline(cpu, timezone.now()) is None  # nothing to judge it by
    for field, value in (("idle_stop_minutes", 5), ("idle_gpu_percent", 0)):
        with pytest.raises(ValidationError) as refused:
            environment_set_auto_stop(user=customer, environment=running, **{field: value})
        assert field in refused.value.fields


def test_the_sweep_reads_idle_figures_in_one_query_however_many_environments(
    customer, organization, spec, image
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from .factories import host_with_gpus

    host_with_gpus(8)

    def add(count: int, offset: int) -> timezone.datetime:
        for n in range(count):
            environment = environment_create(
                user=customer,
                organization=organization,
                name=f"idle-{offset + n}",
                spec=spec,
                image=image,
                idle_stop_minutes=30,
            )
            run_succeeds(environment)
            environment.refresh_from_db()
            _sample(environment, environment.started_at + timedelta(minutes=40), 90)
        return environment.started_at + timedelta(minutes=41)

    at = add(2, 0)
    with CaptureQueriesContext(connection) as few:
        assert environment_auto_stop_sweep(at) == {"warned": 0, "stopped": 0}
    at = add(4, 2)
    with CaptureQueriesContext(connection) as many:
        assert environment_auto_stop_sweep(at) == {"warned": 0, "stopped": 0}
    assert len(many) == len(few) == 2  # the candidates, then their GPU figures
