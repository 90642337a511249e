"""The environments API: create, actions, bad input answered 4xx with nothing changed, and
other organisations refused."""

import pytest

from environments.choices import EnvironmentStatus as S
from environments.models import Environment, GPUAssignment, PortAllocation
from machines.models import AgentCommand

from .conftest import latest_command, run_succeeds
from .factories import ImageFactory, SpecFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(customer, token_client_for):
    return token_client_for(customer)


def _body(spec, image, overrides=None):
    return {"name": "train-1", "spec": spec.pk, "image": image.pk, **(overrides or {})}


def test_create_and_read_back(client, spec, image, host, organization):
    response = client.post("/api/v1/environments/", _body(spec, image), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == S.PROVISIONING
    assert body["organization"] == organization.slug
    assert body["host"] == host.name
    assert len(body["gpus"]) == 1
    assert [p["container_port"] for p in body["ports"]] == [8888]

    listed = client.get("/api/v1/environments/").json()
    assert [item["id"] for item in listed["results"]] == [body["id"]]
    events = client.get(f"/api/v1/environments/{body['id']}/events/").json()
    assert [event["status"] for event in events] == [S.SCHEDULED, S.PROVISIONING]


def test_actions_through_the_api(client, spec, image, host):
    created = client.post("/api/v1/environments/", _body(spec, image), format="json").json()
    environment = Environment.objects.get(pk=created["id"])
    run_succeeds(environment)
    response = client.post(f"/api/v1/environments/{environment.pk}/stop/")
    assert response.status_code == 202
    assert response.json()["status"] == S.STOPPING
    # Stopping twice is a clear conflict.
    again = client.post(f"/api/v1/environments/{environment.pk}/stop/")
    assert again.status_code == 409
    assert again.json()["error"]["message"]


@pytest.mark.parametrize(
    ("overrides", "field", "status"),
    [
        ({"spec": 999999}, "spec", 400),
        ({"image": 999999}, "image", 400),
        ({"name": "Bad Name!"}, "name", 400),
        ({"env": {"1BAD": "x"}}, "env", 400),
        ({"env": {"REMOTEGPU_X": "x"}}, "env", 400),
        ({"ports": [{"port": 70000}]}, "ports", 400),
        ({"ports": [{"port": 22, "role": "smtp"}]}, "ports", 400),
        ({"image": None, "image_reference": "evil.example.com/miner:1"}, "image_reference", 400),
        ({"strategy": "random"}, "strategy", 400),
        ({"organization": "no-such-org"}, "organization", 400),
    ],
)
def test_bad_input_is_refused_with_its_field_and_changes_nothing(
    client, spec, image, host, overrides, field, status
):
    commands = AgentCommand.objects.count()
    response = client.post("/api/v1/environments/", _body(spec, image, overrides), format="json")
    assert response.status_code == status, response.json()
    assert field in response.json()["error"]["fields"], response.json()
    assert not Environment.objects.exists()
    assert not GPUAssignment.objects.exists()
    assert not PortAllocation.objects.exists()
    assert AgentCommand.objects.count() == commands


def test_a_name_taken_is_refused(client, spec, image, host):
    assert (
        client.post("/api/v1/environments/", _body(spec, image), format="json").status_code == 201
    )
    response = client.post("/api/v1/environments/", _body(spec, image), format="json")
    assert response.status_code == 400
    assert "name" in response.json()["error"]["fields"]
    assert Environment.objects.count() == 1


def test_over_quota_is_a_conflict_that_changes_nothing(client, spec, image, host, organization):
    organization.gpu_quota = 0
    organization.save()
    response = client.post("/api/v1/environments/", _body(spec, image), format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "quota"
    assert not Environment.objects.exists()


def test_no_capacity_says_what_is_free_instead(client, image, host):
    h100 = SpecFactory(gpu_model="NVIDIA H100 80GB HBM3", name="1x H100")
    response = client.post("/api/v1/environments/", _body(h100, image), format="json")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "no_capacity"
    assert "A100" in error["message"]  # what is free instead
    assert not Environment.objects.exists()


def test_another_organisation_cannot_see_or_act(
    client, spec, image, host, outsider, token_client_for
):
    created = client.post("/api/v1/environments/", _body(spec, image), format="json").json()
    other = token_client_for(outsider)
    assert other.get(f"/api/v1/environments/{created['id']}/").status_code == 404
    for action in ("start", "stop", "restart"):
        assert other.post(f"/api/v1/environments/{created['id']}/{action}/").status_code == 404
    assert other.delete(f"/api/v1/environments/{created['id']}/").status_code == 404
    assert other.get("/api/v1/environments/").json()["results"] == []
    assert Environment.objects.get(pk=created["id"]).status == S.PROVISIONING


def test_private_images_are_only_offered_to_their_organisation(
    client, spec, host, other_organization
):
    private = ImageFactory(organization=other_organization)
    listed = client.get("/api/v1/images/").json()["results"]
    assert private.pk not in [item["id"] for item in listed]
    response = client.post(
        "/api/v1/environments/", {"name": "x1", "spec": spec.pk, "image": private.pk}, format="json"
    )
    assert response.status_code == 400
    assert "image" in response.json()["error"]["fields"]


def test_specs_show_live_availability(client, spec, host, image):
    cpu = SpecFactory(gpu_count=0, gpu_model="", vcpu=16, memory_gib=64, name="CPU 16")
    specs = {item["id"]: item for item in client.get("/api/v1/specs/").json()}
    assert specs[spec.pk]["available"] == 4  # four free A100s on the host
    assert specs[cpu.pk]["available"] == 4  # 64 cores, 512 GiB
    client.post("/api/v1/environments/", _body(spec, image), format="json")
    specs = {item["id"]: item for item in client.get("/api/v1/specs/").json()}
    assert specs[spec.pk]["available"] == 3


def test_logs_need_a_connected_host(client, spec, image, host):
    created = client.post("/api/v1/environments/", _body(spec, image), format="json").json()
    environment = Environment.objects.get(pk=created["id"])
    run_succeeds(environment)
    host.connected = False
    host.save()
    response = client.get(f"/api/v1/environments/{environment.pk}/logs/?tail=10")
    assert response.status_code == 409
    assert client.get(f"/api/v1/environments/{environment.pk}/logs/?tail=0").status_code == 400
    assert latest_command(environment).kind == "environment_run"  # no logs command was sent


def test_customers_cannot_curate_images(client):
    response = client.post("/api/v1/images/", {"name": "x", "reference": "x/y:1"}, format="json")
    assert response.status_code == 403


def test_operators_curate_images_through_the_service(operator, token_client_for):
    from accounts.models import AuditEvent

    client = token_client_for(operator)
    created = client.post(
        "/api/v1/images/",
        {
            "name": "Torch",
            "reference": "registry.example.com/ml/torch:2.4",
            "ports": [{"port": 22, "role": "ssh"}],
        },
        format="json",
    )
    assert created.status_code == 201, created.json()
    image_id = created.json()["id"]
    again = client.post("/api/v1/images/", {"name": "Torch", "reference": "x/y:1"}, format="json")
    assert again.status_code == 400  # the name is taken among public images
    changed = client.patch(f"/api/v1/images/{image_id}/", {"reference": "bad ref!"}, format="json")
    assert changed.status_code == 400
    assert "reference" in changed.json()["error"]["fields"]
    changed = client.patch(
        f"/api/v1/images/{image_id}/", {"description": "CUDA 12.4"}, format="json"
    )
    assert changed.status_code == 200
    assert changed.json()["description"] == "CUDA 12.4"
    actions = set(
        AuditEvent.objects.filter(target_id=str(image_id)).values_list("action", flat=True)
    )
    assert actions == {"image.created", "image.updated"}
