"""Jupyter: a token per environment, passed to the container, shown as a URL to its team."""

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from environments.services.jupyter import jupyter_token, jupyter_url
from environments.services.lifecycle import environment_create

from .conftest import latest_command, run_succeeds
from .factories import ImageFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def notebook_image(db):
    return ImageFactory(
        name="jupyterlab", ports=[{"port": 8888, "role": "jupyter"}, {"port": 22, "role": "ssh"}]
    )


def _create(customer, organization, spec, image, name="lab-1"):
    return environment_create(
        user=customer, organization=organization, name=name, spec=spec, image=image
    )


def test_a_jupyter_image_gets_a_token_of_its_own_passed_to_the_container(
    customer, organization, spec, notebook_image, host
):
    first = _create(customer, organization, spec, notebook_image)
    second = _create(customer, organization, spec, notebook_image, name="lab-2")
    token = jupyter_token(first)
    assert len(token) >= 32
    assert token != jupyter_token(second)
    assert token not in first.jupyter_token_sealed  # stored sealed
    assert latest_command(first).payload["env"]["JUPYTER_TOKEN"] == token

    run_succeeds(first)
    port = first.ports.get(role="jupyter")
    url = jupyter_url(first)
    assert url == f"http://{host.address}:{port.host_port}/lab?token={token}"


def test_no_jupyter_port_no_token(customer, organization, spec, host):
    image = ImageFactory(ports=[{"port": 8080, "role": "http"}])
    environment = _create(customer, organization, spec, image)
    assert environment.jupyter_token_sealed == ""
    assert "JUPYTER_TOKEN" not in latest_command(environment).payload["env"]
    assert jupyter_url(environment) == ""


def test_the_api_and_the_page_show_the_url_to_the_team_only(
    client, customer, organization, spec, notebook_image, host
):
    from accounts.tests.factories import PASSWORD, MembershipFactory

    environment = _create(customer, organization, spec, notebook_image)
    run_succeeds(environment)
    api = APIClient()
    api.force_authenticate(customer)
    data = api.get(reverse("api:environment-detail", args=[environment.pk])).json()
    assert data["jupyter_url"] == jupyter_url(environment)

    customer.current_organization = organization
    customer.save()
    client.login(email=customer.email, password=PASSWORD)
    page = client.get(environment.get_absolute_url()).content.decode()
    assert 'data-testid="open-jupyter"' in page
    assert jupyter_token(environment) in page

    stranger = MembershipFactory().user
    api.force_authenticate(stranger)
    assert api.get(reverse("api:environment-detail", args=[environment.pk])).status_code == 404


def test_the_connection_lists_addresses_urls_and_jupyter(
    customer, organization, spec, notebook_image, host
):
    from environments.services.connection import environment_connection

    environment = _create(customer, organization, spec, notebook_image)
    connection = environment_connection(environment)
    assert connection.reachable is False  # provisioning: the addresses do not answer yet
    run_succeeds(environment)
    api = APIClient()
    api.force_authenticate(customer)
    response = api.get(reverse("api:environment-connection", args=[environment.pk]))
    assert response.status_code == 200
    data = response.json()
    assert data["reachable"] is True
    assert data["host"] == host.address
    ports = {port["container_port"]: port for port in data["ports"]}
    jupyter, ssh = ports[8888], ports[22]
    assert jupyter["address"] == f"{host.address}:{jupyter['host_port']}"
    assert jupyter["url"] == f"http://{host.address}:{jupyter['host_port']}/"
    assert ssh["url"] == ""  # not a web role
    assert ssh["role_label"] == "SSH"
    assert data["jupyter_url"] == jupyter_url(environment)

    from accounts.tests.factories import MembershipFactory

    api.force_authenticate(MembershipFactory().user)  # another organisation's member
    assert api.get(reverse("api:environment-connection", args=[environment.pk])).status_code == 404
