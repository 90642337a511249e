"""Billing pages: who sees what, the forms that call services, and query counts pinned."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone, translation

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from accounts.tests.factories import MembershipFactory, UserFactory
from billing.choices import EntryKind, MeterKind, PriceResource, TopUpStatus
from billing.models import (
    LedgerEntry,
    Meter,
    Payment,
    Price,
    ReconciliationRun,
    RunInterval,
    TopUpRequest,
    Voucher,
    Wallet,
)
from billing.services.metering import meter_open
from billing.services.prices import Quantities
from billing.services.wallets import wallet_get

from .factories import (
    MeterFactory,
    PriceFactory,
    TopUpRequestFactory,
    VoucherFactory,
    WalletFactory,
    ledger_entry_post,
)

pytestmark = pytest.mark.django_db

CUSTOMER_PAGES = [
    ("billing:billing_overview", {}),
    ("billing:ledger_list", {}),
    ("billing:statement_list", {}),
    ("billing:statement_csv", {"year": "2026", "month": "01"}),
    ("billing:statement_pdf", {"year": "2026", "month": "01"}),
]
CUSTOMER_FORMS = ["billing:top_up_create", "billing:voucher_redeem", "billing:wallet_settings"]
OPERATOR_PAGES = [
    ("billing_operator:billing_dashboard", {}),
    ("billing_operator:price_list", {}),
    ("billing_operator:voucher_list", {}),
    ("billing_operator:voucher_create", {}),
    ("billing_operator:wallet_credit", {}),
    ("billing_operator:reconciliation_list", {}),
]


def money(amount) -> str:
    return f"{Decimal(amount):,.2f} {settings.BILLING_CURRENCY}"


@pytest.fixture
def signed_in(client):
    def sign_in(user):
        client.force_login(user)
        return client

    return sign_in


def usage_entry(organization, amount, *, label="train", when=None, actor=None):
    """A usage charge of ``amount`` for a meter named ``label``, ``when`` (default: now)."""
    when = when or timezone.now()
    meter = MeterFactory(organization=organization, label=label)
    start = when - timedelta(minutes=1)
    interval = RunInterval.objects.create(
        meter=meter, started_at=start, ended_at=when, billed_until=when
    )
    return ledger_entry_post(
        organization,
        -Decimal(amount),
        kind=EntryKind.USAGE,
        meter=meter,
        interval=interval,
        period_start=start,
        period_end=when,
        seconds=60,
        rate=meter.rate,
        actor=actor,
    )


# Who may open what -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), CUSTOMER_PAGES + OPERATOR_PAGES)
def test_anonymous_goes_to_sign_in(client, name, kwargs):
    response = client.get(reverse(name, kwargs=kwargs))
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))


@pytest.mark.parametrize("name", CUSTOMER_FORMS)
def test_anonymous_cannot_post_forms(client, name):
    response = client.post(reverse(name), {"amount": "10", "reference": "x", "code": "X"})
    assert response.status_code == 302
    assert response.url.startswith(reverse("account_login"))
    assert not TopUpRequest.objects.exists()


@pytest.mark.parametrize(("name", "kwargs"), CUSTOMER_PAGES[:3])
def test_a_user_in_no_organisation_gets_404(signed_in, name, kwargs):
    assert signed_in(UserFactory()).get(reverse(name, kwargs=kwargs)).status_code == 404


@pytest.mark.parametrize(("name", "kwargs"), OPERATOR_PAGES)
def test_operator_pages_are_404_to_customers(signed_in, owner, name, kwargs):
    assert signed_in(owner).get(reverse(name, kwargs=kwargs)).status_code == 404


@pytest.mark.parametrize(("name", "kwargs"), OPERATOR_PAGES)
def test_operator_pages_render_for_operators(signed_in, operator, name, kwargs):
    response = signed_in(operator).get(reverse(name, kwargs=kwargs))
    assert response.status_code == 200
    assert 'data-testid="billing-operator-nav"' in response.content.decode()


def test_operator_sub_navigation_links_to_billing(signed_in, operator):
    page = signed_in(operator).get(reverse("machines:region_list")).content.decode()
    assert reverse("billing_operator:billing_dashboard") in page


# The billing page --------------------------------------------------------------------------


def test_member_sees_the_page_but_no_forms(signed_in, member, organization):
    ledger_entry_post(organization, "120.50", description="Opening credit")
    page = signed_in(member).get(reverse("billing:billing_overview")).content.decode()
    assert money("120.50") in page
    assert "Opening credit" in page
    assert 'data-testid="member-settings"' in page
    for form in ("top-up-form", "voucher-form", "settings-form"):
        assert f'data-testid="{form}"' not in page


@pytest.mark.parametrize("role", ["owner", "admin_user"])
def test_owners_and_admins_see_the_forms(request, signed_in, role):
    page = signed_in(request.getfixturevalue(role)).get(reverse("billing:billing_overview"))
    content = page.content.decode()
    for form in ("top-up-form", "voucher-form", "settings-form"):
        assert f'data-testid="{form}"' in content


def test_figures_chart_and_time_left(signed_in, owner, organization):
    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("2.000000"))
    ledger_entry_post(organization, "10.00")
    usage_entry(organization, "3.25", label="train")
    meter_open(
        reference="environment:1:run",
        organization=organization,
        label="train",
        quantities=Quantities(kind=MeterKind.COMPUTE, gpu_model="H100", gpu_count=1),
    )
    response = signed_in(owner).get(reverse("billing:billing_overview"))
    content = response.content.decode()
    summary = response.context["summary"]
    assert summary.burn_rate == Decimal(2)
    assert summary.hours_left == pytest.approx(3.375)
    assert money("2.00") in content  # burn rate
    assert money("6.75") in content  # balance
    assert money("3.25") in content  # usage over 30 days
    assert 'id="usage-chart-data"' in content
    chart = response.context["usage_chart"]
    assert len(chart["days"]) == 30
    assert [series["values"][-1] for series in chart["series"]] == [3.25]
    assert "vendor/chartjs/chart.umd.js" in content


def test_time_left_is_a_dash_when_nothing_runs(signed_in, member, organization):
    ledger_entry_post(organization, "10.00")
    page = signed_in(member).get(reverse("billing:billing_overview")).content.decode()
    assert 'data-testid="time-left">—<' in page


def test_a_balance_that_lasts_for_ages_is_not_dated(signed_in, member, organization):
    """A kept 1 GiB volume burns so little that a big balance would outlast the calendar."""
    PriceFactory(resource=PriceResource.STORAGE_GIB_MONTH, amount=Decimal("0.1"))
    ledger_entry_post(organization, "10000.00")
    meter_open(
        reference="environment:1:volume",
        organization=organization,
        label="volume",
        quantities=Quantities(kind=MeterKind.STORAGE, storage_gib=1),
    )
    response = signed_in(member).get(reverse("billing:billing_overview"))
    assert response.status_code == 200
    assert response.context["summary"].runs_out_at is None
    assert 'data-testid="time-left">More than ten years<' in response.content.decode()


def test_a_card_payment_is_listed_as_one_in_the_readers_words(signed_in, owner, organization):
    Payment.objects.create(
        wallet=wallet_get(organization),
        provider="sandbox",
        provider_reference="p-1",
        amount=Decimal(20),
        currency=settings.BILLING_CURRENCY,
        requested_by=owner,
    )
    page = signed_in(owner).get(reverse("billing:billing_overview")).content.decode()
    assert "Card (sandbox)" in page


def test_another_organisation_sees_only_its_own(signed_in, outsider, organization):
    ledger_entry_post(organization, "77.00", description="Their secret credit")
    TopUpRequestFactory(wallet=WalletFactory(organization=organization), reference="THEIRS-1")
    client = signed_in(outsider)
    for name in ("billing:billing_overview", "billing:ledger_list"):
        page = client.get(reverse(name)).content.decode()
        assert "Their secret credit" not in page
        assert "THEIRS-1" not in page
        assert money("77.00") not in page


# Forms of the billing page -----------------------------------------------------------------


def test_owner_requests_a_bank_top_up(signed_in, owner, organization):
    response = signed_in(owner).post(
        reverse("billing:top_up_create"), {"amount": "250.00", "reference": "ACME 2026-01"}
    )
    assert response.status_code == 302
    assert response.url == reverse("billing:billing_overview")
    top_up = TopUpRequest.objects.get()
    assert top_up.wallet.organization == organization
    assert top_up.amount == Decimal("250.00")
    assert top_up.status == TopUpStatus.PENDING
    assert top_up.requested_by == owner
    assert wallet_get(organization).balance == 0  # credited once approved
    page = signed_in(owner).get(reverse("billing:billing_overview")).content.decode()
    assert "ACME 2026-01" in page


def test_bad_top_up_input_is_a_form_error(signed_in, owner):
    client = signed_in(owner)
    for data, field in (
        ({"amount": "abc", "reference": "x"}, "amount"),
        ({"amount": "-5", "reference": "x"}, "amount"),
        ({"amount": "1.234", "reference": "x"}, "amount"),
        ({"amount": "10", "reference": "   "}, "reference"),
    ):
        response = client.post(reverse("billing:top_up_create"), data)
        assert response.status_code == 200, data
        assert response.context["top_up_form"].errors[field], data
        assert f'data-testid="error-{field}"' in response.content.decode()
    assert not TopUpRequest.objects.exists()


@pytest.mark.parametrize("name", CUSTOMER_FORMS)
def test_members_may_not_post_the_forms(signed_in, member, organization, name):
    voucher = VoucherFactory()
    response = signed_in(member).post(
        reverse(name),
        {"amount": "10", "reference": "x", "code": voucher.code, "low_balance_threshold": "5"},
    )
    assert response.status_code == 403
    assert not TopUpRequest.objects.exists()
    assert not LedgerEntry.objects.exists()
    assert not Wallet.objects.filter(low_balance_threshold__isnull=False).exists()


def test_voucher_redeem_credits_the_wallet(signed_in, owner, organization):
    voucher = VoucherFactory(amount=Decimal("15.00"))
    response = signed_in(owner).post(
        reverse("billing:voucher_redeem"), {"code": voucher.code.lower()}, follow=True
    )
    assert response.status_code == 200
    assert wallet_get(organization).balance == Decimal("15.00")
    assert voucher.code in response.content.decode()
    entry = LedgerEntry.objects.get()
    assert entry.kind == EntryKind.PROMOTION
    # A second use by the same organisation is refused, on the form.
    again = signed_in(owner).post(reverse("billing:voucher_redeem"), {"code": voucher.code})
    assert again.status_code == 200
    assert again.context["voucher_form"].errors["code"]
    assert wallet_get(organization).balance == Decimal("15.00")


def test_unknown_voucher_is_a_form_error(signed_in, admin_user):
    response = signed_in(admin_user).post(reverse("billing:voucher_redeem"), {"code": "NOPE"})
    assert response.status_code == 200
    assert response.context["voucher_form"].errors["code"]


def test_admin_changes_threshold_and_limit(signed_in, admin_user, organization):
    client = signed_in(admin_user)
    response = client.post(
        reverse("billing:wallet_settings"),
        {"low_balance_threshold": "25.00", "spend_limit_per_hour": "4.50"},
    )
    assert response.status_code == 302
    wallet = wallet_get(organization)
    assert wallet.low_balance_threshold == Decimal("25.00")
    assert wallet.spend_limit_per_hour == Decimal("4.50")
    assert AuditEvent.objects.filter(action=AuditAction.WALLET_SETTINGS_CHANGED).exists()
    client.post(
        reverse("billing:wallet_settings"),
        {"low_balance_threshold": "", "spend_limit_per_hour": ""},
    )
    wallet.refresh_from_db()
    assert wallet.low_balance_threshold is None
    assert wallet.spend_limit_per_hour is None
    audited = AuditEvent.objects.filter(action=AuditAction.WALLET_SETTINGS_CHANGED).count()
    unchanged = client.post(reverse("billing:wallet_settings"), {}, follow=True)
    assert "Nothing changed." in unchanged.content.decode()
    assert AuditEvent.objects.filter(action=AuditAction.WALLET_SETTINGS_CHANGED).count() == audited
    bad = client.post(reverse("billing:wallet_settings"), {"low_balance_threshold": "-1"})
    assert bad.status_code == 200
    assert bad.context["settings_form"].errors["low_balance_threshold"]


# The ledger --------------------------------------------------------------------------------


def test_ledger_filters(signed_in, member, organization):
    ledger_entry_post(organization, "50.00", description="Bank transfer ACME")
    usage_entry(organization, "1.00", label="llama-finetune")
    usage_entry(organization, "2.00", label="other-run")
    old = ledger_entry_post(
        organization, "5.00", description="Old", created_at=timezone.now() - timedelta(days=40)
    )
    client = signed_in(member)
    url = reverse("billing:ledger_list")

    def rows(**query):
        response = client.get(url, query)
        assert response.status_code == 200
        return {entry.pk for entry in response.context["page_obj"]}

    everything = rows()
    assert len(everything) == 4
    assert len(rows(kind=EntryKind.USAGE)) == 2
    assert len(rows(resource="LLAMA")) == 1
    assert len(rows(resource="acme")) == 1
    today = timezone.now().date()
    assert rows(since=today.isoformat(), until=today.isoformat()) == everything - {old.pk}
    assert rows(until=(today - timedelta(days=30)).isoformat()) == {old.pk}
    assert rows(since=(today + timedelta(days=1)).isoformat()) == set()


def test_ledger_is_paginated(signed_in, member, organization):
    for number in range(55):
        ledger_entry_post(organization, "1.00", description=f"credit {number}")
    client = signed_in(member)
    first = client.get(reverse("billing:ledger_list"))
    assert len(first.context["page_obj"]) == 50
    second = client.get(reverse("billing:ledger_list"), {"page": 2})
    assert len(second.context["page_obj"]) == 5


def test_ledger_query_count_is_pinned(
    signed_in, owner, organization, django_assert_max_num_queries
):
    client = signed_in(owner)
    url = reverse("billing:ledger_list")

    def add(count):
        for number in range(count):
            usage_entry(organization, "0.50", label=f"run-{number}", actor=owner)
            ledger_entry_post(organization, "1.00", description="credit", actor=owner)

    add(3)
    # Session, user, membership, count, rows, notifications, navigation wallet, switcher.
    client.get(url)  # warm: session, current organisation
    with CaptureQueriesContext(connection) as few:
        assert client.get(url).status_code == 200
    add(27)
    with django_assert_max_num_queries(8), CaptureQueriesContext(connection) as many:
        response = client.get(url)
    assert len(response.context["page_obj"]) == 50
    assert len(many) == len(few), [query["sql"] for query in many.captured_queries]


# Statements --------------------------------------------------------------------------------


def test_statements_list_months(signed_in, member, organization):
    ledger_entry_post(organization, "10.00")
    page = signed_in(member).get(reverse("billing:statement_list")).content.decode()
    now = timezone.now()
    kwargs = {"year": f"{now.year:04d}", "month": f"{now.month:02d}"}
    assert reverse("billing:statement_csv", kwargs=kwargs) in page
    assert reverse("billing:statement_pdf", kwargs=kwargs) in page


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "0000-01", "2999-01"])
def test_a_bad_month_is_404(signed_in, member, month):
    year, number = month.split("-")
    url = reverse("billing:statement_csv", kwargs={"year": year, "month": number})
    assert signed_in(member).get(url).status_code == 404


def test_statement_csv_has_the_entries(signed_in, member, organization, outsider):
    ledger_entry_post(organization, "42.00", description="January top-up")
    usage_entry(organization, "3.00", label="january-run")
    now = datetime.now(UTC)
    kwargs = {"year": f"{now.year:04d}", "month": f"{now.month:02d}"}
    response = signed_in(member).get(reverse("billing:statement_csv", kwargs=kwargs))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    text = response.getvalue().decode("utf-8-sig")
    assert "January top-up" in text
    assert "january-run" in text
    assert list(csv.reader(io.StringIO(text)))
    theirs = signed_in(outsider).get(reverse("billing:statement_csv", kwargs=kwargs))
    assert "January top-up" not in theirs.getvalue().decode()


def test_statement_pdf_is_a_pdf(signed_in, member, organization):
    ledger_entry_post(organization, "42.00", description="January top-up")
    now = datetime.now(UTC)
    kwargs = {"year": f"{now.year:04d}", "month": f"{now.month:02d}"}
    response = signed_in(member).get(reverse("billing:statement_pdf", kwargs=kwargs))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF")


# The navigation bar ------------------------------------------------------------------------


def test_navigation_shows_balance_and_burn_rate(signed_in, member, organization):
    ledger_entry_post(organization, "1234.5")
    page = signed_in(member).get(reverse("accounts:dashboard")).content.decode()
    assert 'data-testid="nav-balance"' in page
    assert money("1234.50") in page
    assert 'data-low="true"' not in page
    assert reverse("billing:billing_overview") in page


def test_navigation_highlights_a_low_balance(signed_in, member, organization):
    PriceFactory(resource=PriceResource.GPU_HOUR, amount=Decimal("5.000000"))
    ledger_entry_post(organization, "3.00")
    meter_open(
        reference="environment:9:run",
        organization=organization,
        label="big",
        quantities=Quantities(kind=MeterKind.COMPUTE, gpu_model="H100", gpu_count=1),
    )
    client = signed_in(member)
    client.get(reverse("accounts:dashboard"))
    with CaptureQueriesContext(connection) as queries:
        page = client.get(reverse("accounts:dashboard")).content.decode()
    assert 'data-low="true"' in page
    assert "5.00/h" in page
    billing = [query for query in queries.captured_queries if "billing_" in query["sql"]]
    assert len(billing) == 1, billing  # the navigation costs one query


def test_navigation_without_an_organisation_shows_no_balance(client, signed_in):
    assert 'data-testid="nav-balance"' not in client.get(reverse("account_login")).content.decode()
    page = signed_in(UserFactory()).get(reverse("accounts:dashboard")).content.decode()
    assert 'data-testid="nav-balance"' not in page


def test_navigation_makes_no_wallet(signed_in, member, organization):
    signed_in(member).get(reverse("accounts:dashboard"))
    assert not Wallet.objects.exists()


# Operators ---------------------------------------------------------------------------------


def test_operator_approves_a_top_up(signed_in, operator, organization):
    top_up = TopUpRequestFactory(
        wallet=WalletFactory(organization=organization), amount=Decimal("80.00")
    )
    client = signed_in(operator)
    dashboard = client.get(reverse("billing_operator:billing_dashboard")).content.decode()
    assert top_up.reference in dashboard
    url = reverse("billing_operator:top_up_approve", args=[top_up.pk])
    response = client.post(url)
    assert response.status_code == 302
    top_up.refresh_from_db()
    assert top_up.status == TopUpStatus.APPROVED
    assert top_up.decided_by == operator
    assert wallet_get(organization).balance == Decimal("80.00")
    # Approving again is refused with a message; nothing is credited twice.
    again = client.post(url, follow=True)
    assert again.status_code == 200
    assert wallet_get(organization).balance == Decimal("80.00")
    assert top_up.reference not in again.content.decode()  # no longer waiting


def test_the_ledger_is_read_in_each_readers_language(
    signed_in, token_client_for, operator, organization
):
    """An English operator approves; the ledger says so in each reader's language, on the
    page, in the statement and over the API."""
    top_up = TopUpRequestFactory(
        wallet=WalletFactory(organization=organization), amount=Decimal("80.00")
    )
    signed_in(operator).post(reverse("billing_operator:top_up_approve", args=[top_up.pk]))
    meter_open(
        reference="environment:7:volume",
        organization=organization,
        label="%(name)s (volume)",
        label_args={"name": "train-7"},
        quantities=Quantities(kind=MeterKind.STORAGE, storage_gib=10),
    )
    LedgerEntry.objects.create(
        wallet=wallet_get(organization),
        kind=EntryKind.USAGE,
        amount=Decimal("-0.01"),
        currency=settings.BILLING_CURRENCY,
        idempotency_key="usage:test",
        meter=Meter.objects.get(reference="environment:7:volume"),
    )
    readers = {
        "zh-hans": ("银行转账 " + top_up.reference, "train-7（卷）"),
        "en": ("Bank transfer " + top_up.reference, "train-7 (volume)"),
    }
    for language, (recharge, volume) in readers.items():
        reader = MembershipFactory(organization=organization, user__language=language).user
        client = signed_in(reader)
        page = client.get(reverse("billing:ledger_list")).content.decode()
        assert recharge in page
        assert volume in page
        month = timezone.now()
        statement = client.get(
            reverse(
                "billing:statement_csv",
                kwargs={"year": f"{month:%Y}", "month": f"{month:%m}"},
            )
        )
        with translation.override("zh-hans" if language == "en" else "en"):
            statement = statement.getvalue().decode("utf-8-sig")  # read as a server reads it
        assert recharge in statement
        assert volume in statement
    api = token_client_for(MembershipFactory(organization=organization).user)
    entries = api.get("/api/v1/billing/ledger/", HTTP_ACCEPT_LANGUAGE="zh-hans").json()
    assert "银行转账 " + top_up.reference in [row["description"] for row in entries["results"]]


def test_operator_rejects_a_top_up(signed_in, operator, organization):
    top_up = TopUpRequestFactory(wallet=WalletFactory(organization=organization))
    url = reverse("billing_operator:top_up_reject", args=[top_up.pk])
    signed_in(operator).post(url, {"note": "No such transfer"})
    top_up.refresh_from_db()
    assert top_up.status == TopUpStatus.REJECTED
    assert top_up.note == "No such transfer"
    assert wallet_get(organization).balance == 0


def test_customers_cannot_decide_top_ups(signed_in, owner, organization):
    top_up = TopUpRequestFactory(wallet=WalletFactory(organization=organization))
    for name in ("billing_operator:top_up_approve", "billing_operator:top_up_reject"):
        assert signed_in(owner).post(reverse(name, args=[top_up.pk])).status_code == 404
    top_up.refresh_from_db()
    assert top_up.status == TopUpStatus.PENDING


def test_dashboard_shows_revenue_per_organisation(signed_in, operator, organization):
    ledger_entry_post(organization, "100.00")
    usage_entry(organization, "12.00")
    response = signed_in(operator).get(reverse("billing_operator:billing_dashboard"))
    content = response.content.decode()
    assert organization.name in content
    assert money("12.00") in content  # charged
    assert money("88.00") in content  # balance
    assert response.context["revenue_chart"]["series"][0]["values"][-1] == 12.0


def test_operator_sets_edits_and_removes_a_price(signed_in, operator):
    client = signed_in(operator)
    response = client.post(
        reverse("billing_operator:price_list"),
        {"resource": PriceResource.GPU_HOUR, "region": "", "gpu_model": "H100", "amount": "3.5"},
    )
    assert response.status_code == 302
    price = Price.objects.get()
    assert (price.gpu_model, price.amount) == ("H100", Decimal("3.5"))
    page = client.get(reverse("billing_operator:price_list")).content.decode()
    assert "H100" in page
    response = client.post(
        reverse("billing_operator:price_edit", args=[price.pk]), {"amount": "4.25"}
    )
    assert response.status_code == 302
    price.refresh_from_db()
    assert price.amount == Decimal("4.25")
    assert price.updated_by == operator
    assert AuditEvent.objects.filter(action=AuditAction.PRICE_CHANGED).count() == 2
    client.post(reverse("billing_operator:price_delete", args=[price.pk]))
    assert not Price.objects.exists()


def test_bad_price_is_a_form_error(signed_in, operator):
    client = signed_in(operator)
    for data in (
        {"resource": "nonsense", "amount": "1"},
        {"resource": PriceResource.GPU_HOUR, "amount": "-1"},
        {"resource": PriceResource.GPU_HOUR, "amount": "1.1234567"},
        {"resource": PriceResource.GPU_HOUR, "amount": "1", "region": "not a slug"},
        {"resource": PriceResource.GPU_HOUR, "amount": "100000000"},  # over the maximum
        {"resource": PriceResource.GPU_HOUR, "amount": "10000000.01"},
    ):
        response = client.post(reverse("billing_operator:price_list"), data)
        assert response.status_code == 200, data
        assert response.context["form"].errors, data
    assert not Price.objects.exists()
    price = PriceFactory()
    edit = client.post(reverse("billing_operator:price_edit", args=[price.pk]), {"amount": "x"})
    assert edit.status_code == 200
    assert client.get(reverse("billing_operator:price_edit", args=[999999])).status_code == 404


def test_operator_creates_a_voucher_and_sees_its_code(signed_in, operator):
    client = signed_in(operator)
    response = client.post(
        reverse("billing_operator:voucher_create"),
        {"amount": "20.00", "code": "", "max_redemptions": "5", "per_organization_limit": "1"},
        follow=True,
    )
    voucher = Voucher.objects.get()
    assert voucher.amount == Decimal("20.00")
    assert voucher.max_redemptions == 5
    assert voucher.code in response.content.decode()
    duplicate = client.post(
        reverse("billing_operator:voucher_create"),
        {
            "amount": "5",
            "code": voucher.code,
            "max_redemptions": "1",
            "per_organization_limit": "1",
        },
    )
    assert duplicate.status_code == 200
    assert duplicate.context["form"].errors["code"]
    past = client.post(
        reverse("billing_operator:voucher_create"),
        {
            "amount": "5",
            "max_redemptions": "1",
            "per_organization_limit": "1",
            "expires_at": "2000-01-01T00:00",
        },
    )
    assert past.status_code == 200
    assert past.context["form"].errors["expires_at"]


def test_operator_credits_a_wallet(signed_in, operator, organization):
    client = signed_in(operator)
    form = client.get(reverse("billing_operator:wallet_credit"), {"organization": organization.pk})
    assert form.context["form"].initial["organization"] == str(organization.pk)
    key = form.context["form"]["key"].value()
    assert f'name="key" value="{key}"' in form.content.decode()
    data = {
        "organization": organization.pk,
        "kind": EntryKind.REFUND,
        "amount": "12.00",
        "reason": "Host failure",
        "key": key,
    }
    response = client.post(reverse("billing_operator:wallet_credit"), data)
    assert response.status_code == 302
    # The same form posted again (a double click, the back button) credits nothing more.
    again = client.post(reverse("billing_operator:wallet_credit"), data)
    assert again.status_code == 200
    assert "already made" in again.content.decode()
    entry = LedgerEntry.objects.get()
    assert (entry.kind, entry.amount, entry.actor) == (EntryKind.REFUND, Decimal(12), operator)
    assert wallet_get(organization).balance == Decimal("12.00")
    bad = client.post(
        reverse("billing_operator:wallet_credit"),
        {
            "organization": organization.pk,
            "kind": EntryKind.RECHARGE,
            "amount": "-3",
            "reason": "",
            "key": "bad-1",
        },
    )
    assert bad.status_code == 200
    assert bad.context["form"].errors
    assert LedgerEntry.objects.count() == 1


def test_a_negative_adjustment_takes_money_away(signed_in, operator, organization):
    ledger_entry_post(organization, "10.00")
    signed_in(operator).post(
        reverse("billing_operator:wallet_credit"),
        {
            "organization": organization.pk,
            "kind": EntryKind.ADJUSTMENT,
            "amount": "-4.00",
            "reason": "Double credit",
            "key": "adjustment-1",
        },
    )
    assert wallet_get(organization).balance == Decimal("6.00")


def test_reconciliation_lists_differences(signed_in, operator):
    ReconciliationRun.objects.create(wallets_checked=3, intervals_checked=7)
    ReconciliationRun.objects.create(
        wallets_checked=3,
        differences=[{"check": "balance", "id": 41, "found": "10.000000", "expected": "9.5"}],
    )
    page = signed_in(operator).get(reverse("billing_operator:reconciliation_list"))
    content = page.content.decode()
    assert "Balance differs from the sum of its ledger entries" in content
    assert "9.5" in content
    assert "No differences" in content
