"""Pages of whole-machine allocations: the operators' list, "Allocate" form, page and reclaim;
the customers' "My machines" with how to connect; navigation; query counts pinned."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from machines.choices import AllocationStatus
from machines.models import AgentCommand, Allocation

from .factories import AllocationFactory, GPUFactory, RuntimeHostFactory

pytestmark = pytest.mark.django_db

OPERATOR_PAGES = ["machines:allocation_list", "machines:allocation_create"]


@pytest.fixture
def allocation(organization):
    allocation = AllocationFactory(
        organization=organization,
        host__name="lent-host-01",
        host__address="lent-01.example.net",
        host__ssh_port=2200,
    )
    GPUFactory(host=allocation.host, index=0, model="NVIDIA H100 80GB HBM3")
    GPUFactory(host=allocation.host, index=1, model="NVIDIA H100 80GB HBM3")
    return allocation


def _form(host, organization, *, start=timedelta(0), length=timedelta(days=1)):
    start_at = timezone.localtime() + start
    end_at = start_at + length
    return {
        "host": host.pk,
        "organization": organization.pk,
        "starts_at": start_at.strftime("%Y-%m-%dT%H:%M"),
        "ends_at": end_at.strftime("%Y-%m-%dT%H:%M"),
    }


# Operators ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OPERATOR_PAGES)
def test_operator_pages_are_404_to_customers(client, member, operator, name):
    client.force_login(member)
    assert client.get(reverse(name)).status_code == 404
    client.force_login(operator)
    response = client.get(reverse(name))
    assert response.status_code == 200
    assert 'data-testid="nav-allocations"' in response.content.decode()


def test_the_operator_list_shows_every_allocation(client, operator, allocation):
    other = AllocationFactory()
    client.force_login(operator)
    html = client.get(reverse("machines:allocation_list")).content.decode()
    assert allocation.host.name in html
    assert other.host.name in html
    assert "2 × NVIDIA H100 80GB HBM3" in html
    filtered = client.get(reverse("machines:allocation_list"), {"q": "lent-host"})
    assert other.host.name not in filtered.content.decode()


def test_allocate_from_the_form(client, operator, organization):
    host = RuntimeHostFactory()
    client.force_login(operator)
    page = client.get(reverse("machines:host_detail", args=[host.pk])).content.decode()
    link = f"{reverse('machines:allocation_create')}?host={host.pk}"
    assert f'href="{link}"' in page  # the host page leads to the form, with the host chosen
    form = client.get(reverse("machines:allocation_create"), {"host": host.pk})
    assert f'<option value="{host.pk}" selected>' in form.content.decode()
    response = client.post(
        reverse("machines:allocation_create"), _form(host, organization, start=timedelta(hours=1))
    )
    allocation = Allocation.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("machines:allocation_detail", args=[allocation.pk])
    assert (allocation.host, allocation.organization) == (host, organization)
    assert allocation.status == AllocationStatus.SCHEDULED


def test_the_form_shows_the_services_refusal_on_its_field(client, operator, allocation):
    client.force_login(operator)
    response = client.post(
        reverse("machines:allocation_create"), _form(allocation.host, allocation.organization)
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-testid="error-host"' in html
    assert "overlaps" in html
    assert Allocation.objects.count() == 1


def test_reclaim_from_the_page(client, operator, allocation):
    client.force_login(operator)
    url = reverse("machines:allocation_reclaim", args=[allocation.pk])
    page = client.get(reverse("machines:allocation_detail", args=[allocation.pk]))
    assert url in page.content.decode()
    client.post(url, {"reason": ""})
    allocation.refresh_from_db()
    assert allocation.status == AllocationStatus.ACTIVE
    response = client.post(url, {"reason": "hardware swap"})
    assert response.status_code == 302
    allocation.refresh_from_db()
    assert allocation.status == AllocationStatus.RECLAIMING
    assert allocation.reclaim_reason == "hardware swap"
    assert AuditEvent.objects.filter(action=AuditAction.ALLOCATION_RECLAIM_REQUESTED).exists()


def test_members_cannot_reclaim(client, member, allocation):
    client.force_login(member)
    url = reverse("machines:allocation_reclaim", args=[allocation.pk])
    assert client.post(url, {"reason": "mine"}).status_code == 404
    assert not AgentCommand.objects.exists()


def test_the_reclaim_report_is_shown(client, operator, allocation):
    allocation.status = AllocationStatus.FAILED
    allocation.reclaim_report = {
        "removed": {"containers": ["rgpu-env-4"], "account": True, "processes": 3},
        "remaining": {"processes": 1},
        "clean": False,
    }
    allocation.save()
    client.force_login(operator)
    html = client.get(reverse("machines:allocation_detail", args=[allocation.pk])).content.decode()
    assert "rgpu-env-4" in html
    assert 'data-testid="report-remaining"' in html


# Customers ---------------------------------------------------------------------------------


def test_my_machines_lists_the_organisations_allocations(client, member, allocation):
    other = AllocationFactory()
    client.force_login(member)
    html = client.get(reverse("my_machines:allocation_list")).content.decode()
    assert allocation.host.name in html
    assert other.host.name not in html
    assert "2 × NVIDIA H100 80GB HBM3" in html
    assert 'data-testid="nav-my-machines"' in html


def test_a_machine_page_says_how_to_connect(client, member, allocation):
    client.force_login(member)
    url = reverse("my_machines:allocation_detail", args=[allocation.pk])
    html = client.get(url).content.decode()
    assert f"ssh -p 2200 {allocation.tenant_user}@lent-01.example.net" in html
    assert allocation.host.ssh_host_key_fingerprint in html
    assert "reclaim-form" not in html  # operators' only
    allocation.host.ssh_port = 0
    allocation.host.save()
    html = client.get(url).content.decode()
    assert 'data-testid="connection-unavailable"' in html
    assert "not available yet" in html
    assert "ssh -p" not in html


def test_another_organisations_machine_is_not_found(client, outsider, allocation):
    client.force_login(outsider)
    url = reverse("my_machines:allocation_detail", args=[allocation.pk])
    assert client.get(url).status_code == 404
    html = client.get(reverse("my_machines:allocation_list")).content.decode()
    assert allocation.host.name not in html


def test_list_pages_take_a_fixed_number_of_queries(client, operator, member, organization):
    AllocationFactory(organization=organization)
    counts = {}
    for user, name in (
        (member, "my_machines:allocation_list"),
        (operator, "machines:allocation_list"),
    ):
        client.force_login(user)
        client.get(reverse(name))  # the first request remembers the current organisation
        with CaptureQueriesContext(connection) as few:
            client.get(reverse(name))
        counts[name] = len(few)
    for _ in range(4):
        GPUFactory(host=AllocationFactory(organization=organization).host)
    for user, name in (
        (member, "my_machines:allocation_list"),
        (operator, "machines:allocation_list"),
    ):
        client.force_login(user)
        with CaptureQueriesContext(connection) as many:
            client.get(reverse(name))
        assert len(many) == counts[name], name
