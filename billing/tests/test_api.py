"""The billing API: what customers read and do for their current organisation, what operators
do, and that bad input is a 4xx naming the field that changes nothing."""

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from billing.choices import EntryKind, PriceResource, TopUpStatus
from billing.models import LedgerEntry, Price, TopUpRequest, Voucher, VoucherRedemption, Wallet
from billing.services import prices
from billing.services.metering import meter_open
from billing.services.prices import Quantities
from billing.services.recharge import top_up_request, voucher_redeem
from billing.services.wallets import wallet_get

from .factories import PriceFactory, VoucherFactory, ledger_entry_post, usage_entry

BASE = "/api/v1/billing"


def _error(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "fields"}
    assert error["message"]
    if field is not None:
        assert field in error["fields"], error
    return error


def _money_state() -> tuple:
    """Everything a refused request must leave as it was."""
    return (
        LedgerEntry.objects.count(),
        TopUpRequest.objects.count(),
        VoucherRedemption.objects.count(),
        Voucher.objects.count(),
        Price.objects.count(),
        sorted(Wallet.objects.values_list("pk", "balance")),
        sorted(Wallet.objects.values_list("pk", "low_balance_threshold", "spend_limit_per_hour")),
        sorted(TopUpRequest.objects.values_list("pk", "status")),
    )


@pytest.fixture
def session_for():
    def make(user):
        client = APIClient()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def both(organization, other_organization):
    """Money in both organisations, each with a word of its own in every row."""
    now = timezone.now()
    for org, word in ((organization, "acme"), (other_organization, "borealis")):
        ledger_entry_post(org, "100.00", description=f"{word} opening credit")
        usage_entry(
            org,
            "1.50",
            at=now - timedelta(hours=2),
            seconds=3600,
            reference=f"environment:{word}:run",
            label=f"{word}-train",
        )
        top_up_request(
            user=None, organization=org, amount="20.00", reference=f"{word.upper()}-TRANSFER"
        )
    return organization, other_organization


# Balance ---------------------------------------------------------------------------------------


def test_balance_for_members(token_client_for, member, organization):
    ledger_entry_post(organization, "10.00")
    PriceFactory(resource=PriceResource.CPU_ONLY_HOUR, amount=Decimal(2))
    meter_open(
        reference="environment:1:run",
        organization=organization,
        label="notebook",
        quantities=Quantities(kind="cpu_only"),
    )
    response = token_client_for(member, write=False).get(f"{BASE}/balance/")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body == {
        "balance": "10.000000",
        "currency": "USD",
        "burn_rate_per_hour": "2.000000",
        "hours_left": 5.0,
        "runs_out_at": body["runs_out_at"],
        "low_balance_threshold": None,
        "spend_limit_per_hour": None,
        "is_low": False,
    }
    runs_out = datetime.fromisoformat(body["runs_out_at"])
    assert abs(runs_out - (timezone.now() + timedelta(hours=5))) < timedelta(minutes=1)


def test_a_balance_that_lasts_for_ages_has_no_date(token_client_for, member, organization):
    ledger_entry_post(organization, "10000.00")
    PriceFactory(resource=PriceResource.STORAGE_GIB_MONTH, amount=Decimal("0.1"))
    meter_open(
        reference="environment:1:volume",
        organization=organization,
        label="volume",
        quantities=Quantities(kind="storage", storage_gib=1),
    )
    body = token_client_for(member).get(f"{BASE}/balance/").json()
    assert body["hours_left"] > 10 * 365 * 24
    assert body["runs_out_at"] is None


def test_balance_of_an_idle_wallet(token_client_for, member):
    body = token_client_for(member).get(f"{BASE}/balance/").json()
    assert body["balance"] == "0.000000"
    assert body["hours_left"] is None
    assert body["runs_out_at"] is None
    assert body["is_low"] is False


@pytest.mark.parametrize("who", ["owner", "admin_user"])
def test_owners_and_admins_change_the_settings(request, token_client_for, organization, who):
    client = token_client_for(request.getfixturevalue(who))
    response = client.patch(f"{BASE}/balance/", {"low_balance_threshold": "5.00"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["low_balance_threshold"] == "5.000000"
    assert response.json()["spend_limit_per_hour"] is None

    # A field left out stays as it is; null clears.
    body = client.patch(f"{BASE}/balance/", {"spend_limit_per_hour": 3}, format="json").json()
    assert (body["low_balance_threshold"], body["spend_limit_per_hour"]) == ("5.000000", "3.000000")
    body = client.patch(f"{BASE}/balance/", {"low_balance_threshold": None}, format="json").json()
    assert (body["low_balance_threshold"], body["spend_limit_per_hour"]) == (None, "3.000000")
    wallet = wallet_get(organization)
    assert wallet.low_balance_threshold is None
    assert wallet.spend_limit_per_hour == Decimal(3)
    assert AuditEvent.objects.filter(action=AuditAction.WALLET_SETTINGS_CHANGED).count() == 3


def test_an_empty_patch_changes_nothing(token_client_for, owner):
    response = token_client_for(owner).patch(f"{BASE}/balance/", {}, format="json")
    assert response.status_code == 200
    assert not AuditEvent.objects.filter(action=AuditAction.WALLET_SETTINGS_CHANGED).exists()


@pytest.mark.parametrize(
    "value", ["-1", "1e30", 1e30, "abc", "NaN", "Infinity", "1.234", "2000000000", True, [1]]
)
def test_bad_settings_are_refused(token_client_for, owner, value):
    before = _money_state()
    response = token_client_for(owner).patch(
        f"{BASE}/balance/", {"spend_limit_per_hour": value}, format="json"
    )
    _error(response, 400, "spend_limit_per_hour")
    assert _money_state() == before


def test_members_and_read_only_tokens_cannot_change_settings(
    token_client_for, member, owner, organization
):
    wallet_get(organization)
    before = _money_state()
    data = {"low_balance_threshold": "5.00"}
    _error(token_client_for(member).patch(f"{BASE}/balance/", data, format="json"), 403)
    read_only = token_client_for(owner, write=False)
    _error(read_only.patch(f"{BASE}/balance/", data, format="json"), 403)
    assert _money_state() == before


def test_anonymous_callers_are_refused(api_client):
    for url in (
        "balance/",
        "usage/",
        "records/",
        "ledger/",
        "statements/",
        "statements/2026-01.csv",
    ):
        response = api_client.get(f"{BASE}/{url}")
        assert response.status_code in (401, 403), url
    _error(api_client.post(f"{BASE}/recharge/", {}, format="json"), 401)
    _error(api_client.post(f"{BASE}/estimate/", {}, format="json"), 401)


def test_operators_without_an_organisation_are_told(token_client_for, operator):
    error = _error(token_client_for(operator).get(f"{BASE}/balance/"), 404)
    assert "organisation" in error["message"]


# Usage -----------------------------------------------------------------------------------------


def test_usage_by_day(token_client_for, member, organization):
    today = timezone.now().astimezone(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    usage_entry(organization, "1.25", at=today, seconds=3600, gpu_model="NVIDIA H100")
    usage_entry(organization, "0.75", at=today - timedelta(days=2), seconds=3600)
    usage_entry(organization, "9.00", at=today - timedelta(days=20), seconds=3600)
    response = token_client_for(member).get(f"{BASE}/usage/", {"days": 7})
    assert response.status_code == 200, response.content
    body = response.json()
    assert len(body["days"]) == 7
    assert body["days"][-1] == today.date().isoformat()
    assert len(body["series"]) == 1
    values = body["series"][0]["values"]
    assert [Decimal(value) for value in values] == [0, 0, 0, 0, Decimal("0.75"), 0, Decimal("1.25")]
    assert Decimal(body["total"]) == 2
    assert len(token_client_for(member).get(f"{BASE}/usage/").json()["days"]) == 30


@pytest.mark.parametrize("days", ["0", "91", "abc", "-3", "1e3"])
def test_usage_days_are_checked(token_client_for, member, days):
    _error(token_client_for(member).get(f"{BASE}/usage/", {"days": days}), 400, "days")


# Recharge --------------------------------------------------------------------------------------


def test_a_bank_transfer_is_reported(token_client_for, owner, organization):
    response = token_client_for(owner).post(
        f"{BASE}/recharge/",
        {"method": "bank_transfer", "amount": "250.50", "reference": "INV-2026-001"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["method"] == "bank_transfer"
    assert (body["amount"], body["currency"], body["status"]) == ("250.500000", "USD", "pending")
    assert body["reference"] == "INV-2026-001"
    top_up = TopUpRequest.objects.get()
    assert top_up.wallet.organization == organization
    assert top_up.requested_by == owner
    assert wallet_get(organization).balance == 0  # until an operator approves


def test_the_currency_may_be_named(token_client_for, admin_user):
    response = token_client_for(admin_user).post(
        f"{BASE}/recharge/",
        {"method": "bank_transfer", "amount": 10, "currency": "usd", "reference": "X"},
        format="json",
    )
    assert response.status_code == 201, response.content


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"method": "bank_transfer", "amount": "-5", "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "amount": "0", "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "amount": "1e30", "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "amount": 1e30, "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "amount": "abc", "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "amount": "NaN", "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "amount": "Infinity", "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "amount": "12.345", "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "amount": "1000000000.01", "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "amount": None, "reference": "R"}, "amount"),
        ({"method": "bank_transfer", "reference": "R"}, "amount"),
        (
            {"method": "bank_transfer", "amount": "5", "currency": "EUR", "reference": "R"},
            "currency",
        ),
        ({"method": "bank_transfer", "amount": "5"}, "reference"),
        ({"method": "bank_transfer", "amount": "5", "reference": "   "}, "reference"),
        ({"method": "card", "amount": "5"}, "method"),
        ({"method": ["voucher"], "code": "X"}, "method"),
        ({"amount": "5"}, "method"),
        ({"method": "voucher"}, "code"),
        ({"method": "voucher", "code": ""}, "code"),
        ({"method": "voucher", "code": "NO-SUCH-CODE"}, "code"),
    ],
)
def test_bad_recharges_are_refused(token_client_for, owner, organization, body, field):
    wallet_get(organization)  # made on first use, by a refused request too
    before = _money_state()
    response = token_client_for(owner).post(f"{BASE}/recharge/", body, format="json")
    _error(response, 400, field)
    assert _money_state() == before


def test_a_list_body_is_refused(token_client_for, owner):
    response = token_client_for(owner).post(f"{BASE}/recharge/", [1, 2], format="json")
    _error(response, 400, "method")


def test_a_voucher_is_redeemed_once(token_client_for, owner, organization):
    VoucherFactory(code="WELCOME-2026", amount=Decimal("15.00"), max_redemptions=10)
    client = token_client_for(owner)
    response = client.post(
        f"{BASE}/recharge/", {"method": "voucher", "code": " welcome-2026 "}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["method"], body["amount"], body["status"]) == ("voucher", "15.000000", "approved")
    assert body["reference"] == "WELCOME-2026"
    assert wallet_get(organization).balance == Decimal(15)
    assert LedgerEntry.objects.get().kind == EntryKind.PROMOTION

    before = _money_state()
    again = client.post(f"{BASE}/recharge/", {"method": "voucher", "code": "WELCOME-2026"})
    assert "already" in _error(again, 400, "code")["fields"]["code"][0]
    assert _money_state() == before


def test_expired_used_up_and_inactive_vouchers_are_refused(
    token_client_for, owner, organization, other_organization
):
    past = timezone.now() - timedelta(days=1)
    VoucherFactory(code="EXPIRED", expires_at=past)
    VoucherFactory(code="USED-UP", max_redemptions=1)
    VoucherFactory(code="OFF", is_active=False)
    voucher_redeem(user=None, organization=other_organization, code="USED-UP")
    wallet_get(organization)
    before = _money_state()
    client = token_client_for(owner)
    for code, words in (("EXPIRED", "expired"), ("USED-UP", "used up"), ("OFF", "not valid")):
        response = client.post(f"{BASE}/recharge/", {"method": "voucher", "code": code})
        assert words in _error(response, 400, "code")["fields"]["code"][0]
    assert _money_state() == before


def test_members_cannot_recharge(token_client_for, member):
    VoucherFactory(code="FREE")
    before = _money_state()
    client = token_client_for(member)
    for body in (
        {"method": "voucher", "code": "FREE"},
        {"method": "bank_transfer", "amount": "5", "reference": "R"},
    ):
        _error(client.post(f"{BASE}/recharge/", body, format="json"), 403)
    assert _money_state() == before


# What customers read ---------------------------------------------------------------------------


def test_records_are_the_organisations_own(token_client_for, owner, outsider, both):
    organization, _other = both
    VoucherFactory(code="HELLO")
    voucher_redeem(user=owner, organization=organization, code="HELLO")
    records = token_client_for(owner).get(f"{BASE}/records/").json()
    assert [record["method"] for record in records] == ["voucher", "bank_transfer"]
    assert records[1]["reference"] == "ACME-TRANSFER"
    assert records[1]["status"] == TopUpStatus.PENDING

    response = token_client_for(outsider).get(f"{BASE}/records/")
    assert [record["reference"] for record in response.json()] == ["BOREALIS-TRANSFER"]
    assert "acme" not in response.content.decode().lower()


def test_the_ledger_is_paginated_and_filtered(token_client_for, member, organization):
    now = timezone.now()
    ledger_entry_post(organization, "50.00", created_at=now - timedelta(days=3))
    for hours in (1, 2, 3):
        usage_entry(organization, "0.10", at=now - timedelta(hours=hours), reference="env:a")
    usage_entry(organization, "0.20", at=now - timedelta(hours=4), reference="env:b")
    client = token_client_for(member)

    body = client.get(f"{BASE}/ledger/", {"page_size": 2}).json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 5
    assert len(body["results"]) == 2
    newest = body["results"][0]
    assert (newest["kind"], newest["amount"], newest["meter"]) == ("usage", "-0.100000", "env:a")
    assert newest["seconds"] == 60

    def count(**params):
        return client.get(f"{BASE}/ledger/", params).json()["count"]

    assert count(kind="usage") == 4
    assert count(kind="recharge") == 1
    assert count(meter="env:a") == 3
    since = (now - timedelta(hours=3, minutes=30)).isoformat()
    assert count(since=since) == 3
    assert count(until=since) == 2
    assert count(since=since, meter="env:b") == 0
    ascending = client.get(f"{BASE}/ledger/", {"ordering": "created_at"}).json()["results"]
    assert ascending[0]["kind"] == "recharge"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"kind": "gift"}, "kind"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
    ],
)
def test_bad_ledger_filters_are_400(token_client_for, member, params, field):
    _error(token_client_for(member).get(f"{BASE}/ledger/", params), 400, field)


def test_nothing_leaks_between_organisations(token_client_for, owner, outsider, both):
    """Each organisation's owner reads its own money only, on every read."""
    month = timezone.now().astimezone(UTC).strftime("%Y-%m")
    reads = (
        "balance/",
        "usage/",
        "records/",
        "ledger/",
        "statements/",
        f"statements/{month}.csv",
        f"statements/{month}.pdf",
    )
    for user, own, other in ((owner, "acme", "borealis"), (outsider, "borealis", "acme")):
        client = token_client_for(user, write=False)
        for url in reads:
            response = client.get(f"{BASE}/{url}")
            assert response.status_code == 200, (url, response.getvalue())
            text = response.getvalue().decode("utf-8", errors="replace").lower()
            assert other not in text, (user, url)
            if url in ("records/", "ledger/") or url.endswith(".csv"):
                assert own in text, (user, url)
        ledger = client.get(f"{BASE}/ledger/").json()
        assert ledger["count"] == 2
        assert Decimal(client.get(f"{BASE}/balance/").json()["balance"]) == Decimal("98.5")


def test_statements_list_and_files(token_client_for, member, organization):
    ledger_entry_post(
        organization, "30.00", created_at=datetime(2026, 1, 15, tzinfo=UTC), description="Paid"
    )
    usage_entry(organization, "2.50", at=datetime(2026, 1, 20, tzinfo=UTC), seconds=3600)
    ledger_entry_post(organization, "5.00", created_at=datetime(2026, 3, 2, tzinfo=UTC))
    client = token_client_for(member, write=False)

    months = client.get(f"{BASE}/statements/").json()
    assert [month["period"] for month in months] == ["2026-03", "2026-01"]
    assert months[1]["csv"] == f"http://testserver{BASE}/statements/2026-01.csv"
    assert months[1]["pdf"] == f"http://testserver{BASE}/statements/2026-01.pdf"

    response = client.get(months[1]["csv"])
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert "statement-" in response["Content-Disposition"]
    assert "2026-01.csv" in response["Content-Disposition"]
    text = response.getvalue().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Organisation", organization.name]
    assert rows[4] == ["Closing balance", "27.500000"]

    response = client.get(months[1]["pdf"])
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")

    # A month without entries has a statement too: nothing happened in it.
    assert client.get(f"{BASE}/statements/2026-02.csv").status_code == 200


@pytest.mark.parametrize(
    "name",
    [
        "2026-13.csv",
        "2026-00.pdf",
        "0000-01.csv",
        "26-01.csv",
        "2026-1.csv",
        "abcd-ef.pdf",
        "2026-01.xls",
        "2026-01.CSV",
        "9999-12.pdf",
        "2026-01.csv.pdf",
        "２０２６-01.csv",
    ],
)
def test_bad_statement_periods_are_404(token_client_for, member, name):
    response = token_client_for(member).get(f"{BASE}/statements/{name}")
    _error(response, 404)


# Operators -------------------------------------------------------------------------------------

OPERATOR_REQUESTS = [
    ("get", "prices/"),
    ("post", "prices/"),
    ("patch", "prices/{price}/"),
    ("delete", "prices/{price}/"),
    ("post", "wallets/{organization}/credit/"),
    ("get", "top-ups/"),
    ("post", "top-ups/{top_up}/approve/"),
    ("post", "top-ups/{top_up}/reject/"),
    ("get", "vouchers/"),
    ("post", "vouchers/"),
    ("get", "revenue/"),
]


@pytest.fixture
def operator_objects(organization):
    price = PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("2.5"))
    top_up = top_up_request(user=None, organization=organization, amount="10", reference="R1")
    return {"price": price.pk, "organization": organization.pk, "top_up": top_up.pk}


@pytest.mark.parametrize(("method", "path"), OPERATOR_REQUESTS)
def test_operator_endpoints_refuse_customers(
    token_client_for, session_for, api_client, owner, method, path, operator_objects
):
    url = f"{BASE}/{path.format(**operator_objects)}"
    body = {"amount": "1", "kind": "recharge", "reason": "x", "resource": "gpu_hour"}
    before = _money_state()
    for client in (token_client_for(owner), session_for(owner)):
        _error(getattr(client, method)(url, body, format="json"), 403)
    response = getattr(api_client, method)(url, body, format="json")
    assert response.status_code in (401, 403)
    assert _money_state() == before


def test_operators_set_change_and_delete_prices(token_client_for, operator, monkeypatch):
    monkeypatch.setattr(prices, "_region_sources", [lambda: ["eu-1"]])  # regions exist
    client = token_client_for(operator)
    response = client.post(
        f"{BASE}/prices/",
        {"resource": "gpu_hour", "region": "eu-1", "gpu_model": "NVIDIA H100", "amount": "3.25"},
        format="json",
    )
    assert response.status_code == 201, response.content
    price = response.json()
    assert price["amount"] == "3.250000"
    assert price["updated_by"] == operator.email
    # Setting the same price again changes it rather than adding another.
    again = client.post(
        f"{BASE}/prices/",
        {"resource": "gpu_hour", "region": "eu-1", "gpu_model": "NVIDIA H100", "amount": "3.5"},
        format="json",
    )
    assert again.status_code == 201
    assert again.json()["id"] == price["id"]
    assert Price.objects.count() == 1

    response = client.patch(f"{BASE}/prices/{price['id']}/", {"amount": "4.000001"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["amount"] == "4.000001"
    listed = client.get(f"{BASE}/prices/").json()
    assert [row["amount"] for row in listed["results"]] == ["4.000001"]
    assert client.get(f"{BASE}/prices/", {"resource": "vcpu_hour"}).json()["count"] == 0

    assert client.delete(f"{BASE}/prices/{price['id']}/").status_code == 204
    assert not Price.objects.exists()
    changes = AuditEvent.objects.filter(action=AuditAction.PRICE_CHANGED)
    assert changes.count() == 4
    _error(client.patch(f"{BASE}/prices/{price['id']}/", {"amount": "1"}, format="json"), 404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"resource": "gpu_hour", "amount": "-1"}, "amount"),
        ({"resource": "gpu_hour", "amount": "1e30"}, "amount"),
        ({"resource": "gpu_hour", "amount": "100000000"}, "amount"),
        ({"resource": "gpu_hour", "amount": "10000000.01"}, "amount"),
        ({"resource": "gpu_hour", "amount": "abc"}, "amount"),
        ({"resource": "gpu_hour", "amount": "0.0000001"}, "amount"),
        ({"resource": "gpu_hour"}, "amount"),
        ({"resource": "bitcoin_hour", "amount": "1"}, "resource"),
        ({"resource": "gpu_hour", "amount": "1", "region": "not a slug"}, "region"),
        ({"resource": "gpu_hour", "amount": "1", "region": "mars-1"}, "region"),  # no such region
    ],
)
def test_bad_prices_are_refused(token_client_for, operator, body, field):
    PriceFactory(resource=PriceResource.VCPU_HOUR)
    before = _money_state()
    _error(token_client_for(operator).post(f"{BASE}/prices/", body, format="json"), 400, field)
    assert _money_state() == before


@pytest.mark.parametrize(
    "amount", ["-1", "1e30", "abc", "0.0000001", None, "NaN", "100000000", "10000000.01"]
)
def test_bad_price_changes_are_refused(token_client_for, operator, amount):
    price = PriceFactory(resource=PriceResource.VCPU_HOUR)
    before = _money_state()
    response = token_client_for(operator).patch(
        f"{BASE}/prices/{price.pk}/", {"amount": amount}, format="json"
    )
    _error(response, 400, "amount")
    assert _money_state() == before
    price.refresh_from_db()
    assert price.amount == 1


def test_operators_credit_a_wallet(token_client_for, operator, organization):
    client = token_client_for(operator)
    url = f"{BASE}/wallets/{organization.pk}/credit/"
    body = {"kind": "refund", "amount": "12.34", "reason": "GPU fault on 3 May"}
    response = client.post(url, body, format="json")
    assert response.status_code == 201, response.content
    assert (response.json()["kind"], response.json()["amount"]) == ("refund", "12.340000")
    assert wallet_get(organization).balance == Decimal("12.34")

    response = client.post(
        url, {"kind": "adjustment", "amount": "-2.34", "reason": "Correction"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert wallet_get(organization).balance == Decimal(10)
    assert AuditEvent.objects.filter(action=AuditAction.WALLET_CREDITED).count() == 2

    keyed = {"kind": "recharge", "amount": "5", "reason": "Cash", "idempotency_key": "slip-17"}
    assert client.post(url, keyed, format="json").status_code == 201
    before = _money_state()
    _error(client.post(url, keyed, format="json"), 409)
    assert _money_state() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "usage", "amount": "5", "reason": "x"}, "kind"),
        ({"kind": "recharge", "amount": "-5", "reason": "x"}, "amount"),
        ({"kind": "adjustment", "amount": "0", "reason": "x"}, "amount"),
        ({"kind": "recharge", "amount": "1e30", "reason": "x"}, "amount"),
        ({"kind": "recharge", "amount": "five", "reason": "x"}, "amount"),
        ({"kind": "recharge", "amount": "5", "reason": "  "}, "reason"),
        ({"kind": "recharge", "amount": "5"}, "reason"),
    ],
)
def test_bad_credits_are_refused(token_client_for, operator, organization, body, field):
    wallet_get(organization)
    before = _money_state()
    response = token_client_for(operator).post(
        f"{BASE}/wallets/{organization.pk}/credit/", body, format="json"
    )
    _error(response, 400, field)
    assert _money_state() == before


def test_crediting_no_organisation_is_404(token_client_for, operator):
    body = {"kind": "recharge", "amount": "5", "reason": "x"}
    client = token_client_for(operator)
    _error(client.post(f"{BASE}/wallets/999999/credit/", body, format="json"), 404)
    _error(client.post(f"{BASE}/wallets/99999999999999999999/credit/", body, format="json"), 404)


def test_operators_approve_a_top_up_once(token_client_for, operator, owner, organization):
    top_up = top_up_request(user=owner, organization=organization, amount="40", reference="T-1")
    client = token_client_for(operator)
    listed = client.get(f"{BASE}/top-ups/", {"status": "pending"}).json()
    assert [row["id"] for row in listed["results"]] == [top_up.pk]
    assert listed["results"][0]["organization"] == organization.slug
    assert listed["results"][0]["requested_by"] == owner.email

    response = client.post(f"{BASE}/top-ups/{top_up.pk}/approve/", {"note": "Seen on statement"})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "approved"
    assert response.json()["decided_by"] == operator.email
    assert wallet_get(organization).balance == Decimal(40)

    before = _money_state()
    _error(client.post(f"{BASE}/top-ups/{top_up.pk}/approve/"), 409)
    _error(client.post(f"{BASE}/top-ups/{top_up.pk}/reject/"), 409)
    assert _money_state() == before
    assert client.get(f"{BASE}/top-ups/", {"status": "pending"}).json()["count"] == 0
    _error(client.post(f"{BASE}/top-ups/999999/approve/"), 404)


def test_operators_reject_a_top_up(token_client_for, operator, organization):
    top_up = top_up_request(user=None, organization=organization, amount="40", reference="T-2")
    client = token_client_for(operator)
    response = client.post(f"{BASE}/top-ups/{top_up.pk}/reject/", {"note": "Not received"})
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["note"]) == ("rejected", "Not received")
    assert not LedgerEntry.objects.exists()
    _error(client.post(f"{BASE}/top-ups/{top_up.pk}/approve/"), 409)
    assert not LedgerEntry.objects.exists()


def test_operators_make_vouchers(token_client_for, operator):
    client = token_client_for(operator)
    response = client.post(f"{BASE}/vouchers/", {"amount": "25"}, format="json")
    assert response.status_code == 201, response.content
    made = response.json()
    assert len(made["code"]) == 14
    assert (made["amount"], made["currency"], made["max_redemptions"]) == ("25.000000", "USD", 1)

    expires = (timezone.now() + timedelta(days=30)).isoformat()
    response = client.post(
        f"{BASE}/vouchers/",
        {"code": "spring-26", "amount": "5.5", "max_redemptions": 100, "expires_at": expires},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["code"] == "SPRING-26"
    assert client.get(f"{BASE}/vouchers/").json()["count"] == 2
    assert AuditEvent.objects.filter(action=AuditAction.VOUCHER_CREATED).count() == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "-1"}, "amount"),
        ({"amount": "1e30"}, "amount"),
        ({"amount": "10", "code": "no spaces"}, "code"),
        ({"amount": "10", "code": "TAKEN"}, "code"),
        ({"amount": "10", "max_redemptions": 0}, "max_redemptions"),
        ({"amount": "10", "per_organization_limit": 10**7}, "per_organization_limit"),
        ({"amount": "10", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"amount": "10", "expires_at": "soon"}, "expires_at"),
    ],
)
def test_bad_vouchers_are_refused(token_client_for, operator, body, field):
    VoucherFactory(code="TAKEN")
    before = _money_state()
    _error(token_client_for(operator).post(f"{BASE}/vouchers/", body, format="json"), 400, field)
    assert _money_state() == before


def test_revenue_by_day_and_organisation(token_client_for, operator, both):
    organization, other = both
    usage_entry(organization, "3.00", at=timezone.now() - timedelta(hours=1), reference="x")
    client = token_client_for(operator)
    body = client.get(f"{BASE}/revenue/", {"days": 7}).json()
    assert len(body["by_day"]) == 7
    assert sum(Decimal(day["amount"]) for day in body["by_day"]) == Decimal("6.00")
    by_organization = {row["organization_id"]: row for row in body["by_organization"]}
    assert Decimal(by_organization[organization.pk]["amount"]) == Decimal("4.5")
    assert by_organization[organization.pk]["entries"] == 2
    assert Decimal(by_organization[other.pk]["amount"]) == Decimal("1.5")
    assert list(by_organization) == [organization.pk, other.pk]  # largest first
    _error(client.get(f"{BASE}/revenue/", {"days": 0}), 400, "days")


# Schema ----------------------------------------------------------------------------------------


def test_the_schema_documents_every_billing_route(api_client):
    paths = api_client.get("/api/schema/", {"format": "json"}).json()["paths"]
    expected = {
        "/api/v1/billing/balance/": {"get", "patch"},
        "/api/v1/billing/usage/": {"get"},
        "/api/v1/billing/recharge/": {"post"},
        "/api/v1/billing/records/": {"get"},
        "/api/v1/billing/ledger/": {"get"},
        "/api/v1/billing/statements/": {"get"},
        "/api/v1/billing/statements/{period}.{extension}": {"get"},
        "/api/v1/billing/estimate/": {"post"},
        "/api/v1/billing/prices/": {"get", "post"},
        "/api/v1/billing/prices/{id}/": {"patch", "delete"},
        "/api/v1/billing/wallets/{organization_id}/credit/": {"post"},
        "/api/v1/billing/top-ups/": {"get"},
        "/api/v1/billing/top-ups/{id}/approve/": {"post"},
        "/api/v1/billing/top-ups/{id}/reject/": {"post"},
        "/api/v1/billing/vouchers/": {"get", "post"},
        "/api/v1/billing/revenue/": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))
    statement = paths["/api/v1/billing/statements/{period}.{extension}"]["get"]
    assert set(statement["responses"]["200"]["content"]) == {"text/csv", "application/pdf"}
    ledger = paths["/api/v1/billing/ledger/"]["get"]
    assert {"kind", "since", "until", "meter", "page"} <= {p["name"] for p in ledger["parameters"]}
    recharge = paths["/api/v1/billing/recharge/"]["post"]["requestBody"]
    assert "oneOf" in str(recharge) or "Recharge" in str(recharge)
