"""Portal pages of environments: list, create, page, actions; query counts pinned."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.tests.factories import PASSWORD
from environments.choices import EnvironmentStatus as S
from environments.models import Environment

from .conftest import latest_command, run_succeeds
from .factories import EnvironmentFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def browser(client, customer, organization):
    customer.current_organization = organization
    customer.save()
    client.login(email=customer.email, password=PASSWORD)
    return client


def test_create_on_the_page_then_act(browser, spec, image, host):
    page = browser.get(reverse("environments:environment_create"))
    assert page.status_code == 200
    assert "4 available now" in page.content.decode()

    response = browser.post(
        reverse("environments:environment_create"),
        {
            "name": "notebook-1",
            "image": image.pk,
            "spec": spec.pk,
            "env": "A=1\nB=two words",
            "ports": "9000:tcp",
            "strategy": "binpack",
            "max_runtime_hours": "2",
            "idle_stop_minutes": "30",
        },
    )
    environment = Environment.objects.get(name="notebook-1")
    assert response.status_code == 302
    assert response["Location"] == environment.get_absolute_url()
    assert environment.env == {"A": "1", "B": "two words"}
    assert (environment.max_runtime_minutes, environment.idle_stop_minutes) == (120, 30)
    assert environment.status == S.PROVISIONING

    run_succeeds(environment)
    detail = browser.get(environment.get_absolute_url()).content.decode()
    assert 'data-testid="action-stop"' in detail
    assert f"{host.address}:" in detail  # the published ports

    browser.post(reverse("environments:environment_stop", args=[environment.pk]))
    environment.refresh_from_db()
    assert environment.status == S.STOPPING
    assert latest_command(environment).kind == "environment_stop"


def test_form_errors_land_on_their_fields(browser, spec, image, host):
    response = browser.post(
        reverse("environments:environment_create"),
        {"name": "Bad!", "image": image.pk, "spec": spec.pk, "env": "NOEQUALS", "strategy": "x"},
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert 'data-testid="error-env"' in body
    assert 'data-testid="error-strategy"' in body
    assert not Environment.objects.exists()

    response = browser.post(
        reverse("environments:environment_create"),
        {"name": "Bad!", "image": image.pk, "spec": spec.pk, "strategy": "binpack"},
    )
    assert 'data-testid="error-name"' in response.content.decode()
    assert not Environment.objects.exists()


def test_delete_needs_the_name_typed(browser, spec, image, host, organization):
    environment = EnvironmentFactory(organization=organization, spec=spec, image=image)
    browser.post(
        reverse("environments:environment_delete", args=[environment.pk]), {"confirm": "no"}
    )
    environment.refresh_from_db()
    assert environment.status == S.PENDING
    browser.post(
        reverse("environments:environment_delete", args=[environment.pk]),
        {"confirm": environment.name},
    )
    environment.refresh_from_db()
    assert environment.status == S.DELETED  # it never had a host


def test_list_query_count_is_pinned(browser, organization, spec, image):
    EnvironmentFactory(organization=organization, spec=spec, image=image)
    url = reverse("environments:environment_list")
    browser.get(url)
    with CaptureQueriesContext(connection) as few:
        assert browser.get(url).status_code == 200
    for _ in range(10):
        EnvironmentFactory(organization=organization, spec=spec, image=image)
    with CaptureQueriesContext(connection) as many:
        assert browser.get(url).status_code == 200
    assert len(many) == len(few)


def test_operator_list_is_operators_only(browser, client, operator):
    assert browser.get(reverse("environments:operator_environment_list")).status_code == 404
    client.force_login(operator)
    assert client.get(reverse("environments:operator_environment_list")).status_code == 200


def test_specs_and_images_pages(browser, spec, image, host):
    specs = browser.get(reverse("environments:spec_list")).content.decode()
    assert spec.name in specs
    assert 'data-testid="spec-available">4<' in specs
    images = browser.get(reverse("environments:image_list")).content.decode()
    assert image.reference in images


def test_the_spec_list_shows_prices_and_estimates_a_duration(browser, spec, host):
    from decimal import Decimal

    from billing.choices import PriceResource
    from billing.tests.factories import PriceFactory

    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("2.5"))
    PriceFactory(resource=PriceResource.GPU_HOUR, region=host.region.slug, amount=Decimal("3"))
    page = browser.get(reverse("environments:spec_list")).content.decode()
    assert 'data-testid="spec-rate">2.50 USD<' in page
    url = reverse("environments:spec_list")
    page = browser.get(url, {"hours": "10", "region": host.region.slug}).content.decode()
    assert 'data-testid="spec-rate">3.00 USD<' in page
    assert 'data-testid="spec-estimate">30.00 USD<' in page
    refused = browser.get(url, {"hours": "-1"}).content.decode()
    assert 'data-testid="estimate-errors"' in refused
    assert 'data-testid="spec-estimate">2.50 USD<' in refused  # one hour, default prices


def test_the_create_form_prices_each_spec_in_the_region_chosen(browser, spec, host):
    from decimal import Decimal

    from billing.choices import PriceResource
    from billing.tests.factories import PriceFactory

    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("2.5"))
    PriceFactory(resource=PriceResource.GPU_HOUR, region=host.region.slug, amount=Decimal("3"))
    url = reverse("environments:environment_create")
    response = browser.get(url)
    prices = response.context["spec_prices"]
    # Any region: where it is placed decides, so the range over the regions' prices.
    assert prices[""][str(spec.pk)] == "≈ 2.50 USD to 3.00 USD per hour, by region"
    assert prices[str(host.region.pk)][str(spec.pk)] == "≈ 3.00 USD per hour"
    assert "≈ 2.50 USD to 3.00 USD per hour, by region" in response.content.decode()
    # A form sent back (no name) shows the price in the region it chose.
    refused = browser.post(url, {"spec": spec.pk, "region": host.region.pk})
    assert refused.status_code == 200
    assert refused.context["spec_price"] == "≈ 3.00 USD per hour"


def test_fleet_overview_counts_allocated_gpus_and_hosts(
    client, operator, customer, organization, image
):
    from environments.services.lifecycle import environment_create

    from .factories import SpecFactory, host_with_gpus

    full, partly, _free = host_with_gpus(2), host_with_gpus(2), host_with_gpus(2)
    for host, count in ((full, 2), (partly, 1)):
        host.labels = {"slot": str(host.pk)}
        host.save()
        spec = SpecFactory(gpu_count=count, vcpu=1, memory_gib=1, host_labels=host.labels)
        environment_create(
            user=customer, organization=organization, name=f"e{host.pk}", spec=spec, image=image
        )
    client.force_login(operator)
    page = client.get(reverse("machines:fleet_overview"))
    assert page.context["gpus"]["allocated"] == 3
    assert page.context["gpus"]["free"] == 3
    assert page.context["host_allocation"] == {"free": 1, "partly": 1, "fully": 1}


def test_operators_pre_pull_an_image_and_watch_the_pulls(
    browser, client, operator, image, host, django_capture_on_commit_callbacks
):
    from machines.models import AgentCommand
    from machines.services.commands import command_finish, command_progress
    from machines.tests.factories import HostFactory

    url = reverse("environments:image_prepull", args=[image.pk])
    assert browser.get(url).status_code == 404  # customers: no such page
    assert "image-prepull" not in browser.get(reverse("environments:image_list")).content.decode()

    client.force_login(operator)
    assert (
        'data-testid="image-prepull"'
        in client.get(reverse("environments:image_list")).content.decode()
    )
    page = client.get(url).content.decode()
    assert host.name in page
    assert "No pulls of this image yet." in page
    no_runtime = HostFactory(docker_version="")
    assert no_runtime.name not in page  # only hosts that can pull are offered

    # Nothing chosen: the field says so, nothing is sent.
    response = client.post(url, {"hosts": []})
    assert response.status_code == 200
    assert "This field is required." in response.content.decode()
    assert not AgentCommand.objects.filter(kind="image_pull").exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(url, {"hosts": [host.pk]})
    assert response.status_code == 302
    command = AgentCommand.objects.get(kind="image_pull", host=host)
    assert command.payload["image"] == image.reference
    assert command.requested_by == operator

    # The agent's progress shows in the table (the htmx partial), then its outcome.
    progress = {"phase": "pulling", "layers_total": 3, "layers_done": 1}
    progress |= {"bytes_done": 5 << 20, "bytes_total": 10 << 20}
    assert command_progress(host.pk, str(command.pk), progress)
    partial = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "<html" not in partial
    assert "1 of 3 layers" in partial
    assert 'data-pulling="true"' in partial
    result = {"phase": "pulled", "layers_total": 3, "layers_done": 3, "bytes_total": 10 << 20}
    command_finish(host.pk, str(command.pk), ok=True, result=result | {"bytes_done": 1}, error="")
    partial = client.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "On the host: 3 layers, 10.0\xa0MB downloaded." in partial
    assert 'data-pulling="false"' in partial


def test_pre_pull_refuses_hosts_that_cannot_pull(operator, image, db):
    from environments.services.images import image_prepull
    from machines.tests.factories import HostFactory
    from remotegpu.core.errors import ValidationError

    with pytest.raises(ValidationError) as refused:
        image_prepull(operator=operator, image=image, hosts=[HostFactory(docker_version="")])
    assert "hosts" in refused.value.fields
    with pytest.raises(ValidationError):
        image_prepull(operator=operator, image=image, hosts=[])
