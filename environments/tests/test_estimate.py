"""POST /api/v1/billing/estimate/: the price per hour of a spec, as a run of it is charged."""

from decimal import Decimal

import pytest

from billing.choices import PriceResource
from billing.models import LedgerEntry, Price
from billing.tests.factories import PriceFactory
from environments.tests.factories import GPU_MODEL, SpecFactory
from machines.tests.factories import RegionFactory

URL = "/api/v1/billing/estimate/"


@pytest.fixture
def prices(db):
    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("2.000000"))
    PriceFactory(resource=PriceResource.GPU_HOUR, gpu_model=GPU_MODEL, amount=Decimal("3.5"))
    PriceFactory(
        resource=PriceResource.GPU_HOUR, region="eu", gpu_model=GPU_MODEL, amount=Decimal("4")
    )
    PriceFactory(resource=PriceResource.VCPU_HOUR, amount=Decimal("0.05"))
    PriceFactory(resource=PriceResource.MEMORY_GIB_HOUR, amount=Decimal("0.01"))
    PriceFactory(resource=PriceResource.CPU_ONLY_HOUR, amount=Decimal("0.30"))


@pytest.fixture
def spec(db):
    return SpecFactory(gpu_model=GPU_MODEL, gpu_count=2, vcpu=8, memory_gib=32)


def _error(response, status: int, field: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert field in error["fields"], error
    return error


def test_the_estimate_is_the_rate_charged(token_client_for, member, prices, spec):
    # 2 × 3.5 + 8 × 0.05 + 32 × 0.01 = 7.72 per hour; read-only tokens may ask.
    client = token_client_for(member, write=False)
    response = client.post(URL, {"spec": spec.pk, "hours": "10.5"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "rate_per_hour": "7.720000",
        "hours": "10.5000",
        "total": "81.06",
        "currency": "USD",
    }


def test_a_region_and_without_gpu_change_the_rate(token_client_for, member, prices, spec):
    europe = RegionFactory(slug="eu")
    spec.regions.add(europe)
    client = token_client_for(member)
    body = client.post(URL, {"spec": spec.pk, "region": "eu", "hours": 1}, format="json").json()
    assert body["rate_per_hour"] == "8.720000"  # 2 × 4 + 0.72
    body = client.post(
        URL, {"spec": spec.pk, "hours": 2, "without_gpu": True}, format="json"
    ).json()
    assert (body["rate_per_hour"], body["total"]) == ("0.300000", "0.60")


def test_without_prices_it_is_free(token_client_for, member, spec):
    body = token_client_for(member).post(URL, {"spec": spec.pk, "hours": 3}).json()
    assert (body["rate_per_hour"], body["total"]) == ("0.000000", "0.00")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hours": 1}, "spec"),
        ({"spec": 999999, "hours": 1}, "spec"),
        ({"spec": "abc", "hours": 1}, "spec"),
        ({"spec": 99999999999999999999, "hours": 1}, "spec"),
        ({"spec": "inactive", "hours": 1}, "spec"),
        ({"spec": "spec", "region": "atlantis", "hours": 1}, "region"),
        ({"spec": "spec", "region": "elsewhere", "hours": 1}, "region"),
        ({"spec": "spec"}, "hours"),
        ({"spec": "spec", "hours": 0}, "hours"),
        ({"spec": "spec", "hours": "-1"}, "hours"),
        ({"spec": "spec", "hours": "8760.0001"}, "hours"),
        ({"spec": "spec", "hours": "1e30"}, "hours"),
        ({"spec": "spec", "hours": "NaN"}, "hours"),
        ({"spec": "spec", "hours": "soon"}, "hours"),
        ({"spec": "spec", "hours": 1, "without_gpu": "perhaps"}, "without_gpu"),
    ],
)
def test_bad_input_is_400_naming_the_field(token_client_for, member, spec, body, field):
    europe = RegionFactory(slug="eu")
    RegionFactory(slug="elsewhere")
    spec.regions.add(europe)
    inactive = SpecFactory(is_active=False)
    named = {"spec": spec.pk, "inactive": inactive.pk}
    body = {key: named.get(value, value) if key == "spec" else value for key, value in body.items()}
    before = (Price.objects.count(), LedgerEntry.objects.count())
    response = token_client_for(member).post(URL, body, format="json")
    _error(response, 400, field)
    assert (Price.objects.count(), LedgerEntry.objects.count()) == before


def test_a_year_is_the_longest_estimate(token_client_for, member, prices, spec):
    response = token_client_for(member).post(URL, {"spec": spec.pk, "hours": 8760}, format="json")
    assert response.status_code == 200
    assert response.json()["total"] == "67627.20"


def test_anonymous_callers_are_refused(api_client, spec):
    response = api_client.post(URL, {"spec": spec.pk, "hours": 1}, format="json")
    assert response.status_code == 401
