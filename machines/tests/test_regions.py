import pytest

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from machines.models import Region
from machines.services.regions import region_save
from remotegpu.core.errors import PermissionDenied

pytestmark = pytest.mark.django_db


def test_creating_and_editing_a_region_is_audited_with_its_changes(operator):
    region = region_save(operator=operator, region=Region(name="EU West", slug="eu-west"))
    region.location = "Frankfurt"
    region_save(operator=operator, region=region)

    created, updated = AuditEvent.objects.filter(target_type="region").order_by("created_at")
    assert created.action == AuditAction.REGION_CREATED
    assert created.details["changes"]["slug"] == [None, "eu-west"]
    assert updated.action == AuditAction.REGION_UPDATED
    assert updated.details["changes"] == {"location": ["", "Frankfurt"]}


def test_only_operators_save_regions(member):
    with pytest.raises(PermissionDenied):
        region_save(operator=member, region=Region(name="x", slug="x"))
    assert not Region.objects.filter(slug="x").exists()


def test_the_api_and_the_page_go_through_the_service(operator, token_client_for, client):
    response = token_client_for(operator).post(
        "/api/v1/regions/", {"name": "US East", "slug": "us-east"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["host_count"] == 0
    client.force_login(operator)
    client.post("/operator/regions/", {"name": "AP South", "slug": "ap-south"})
    actions = list(
        AuditEvent.objects.filter(target_type="region").values_list("target_repr", "action")
    )
    assert ("US East", AuditAction.REGION_CREATED) in actions
    assert ("AP South", AuditAction.REGION_CREATED) in actions
