"""The billing admin: every page opens for an operator, search finds rows, and money only moves
through the services (prices, credits, vouchers, top-ups); the ledger cannot be edited."""

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from billing.choices import EntryKind, PriceResource, TopUpStatus
from billing.models import (
    LedgerEntry,
    Meter,
    Payment,
    Price,
    ReconciliationRun,
    RunInterval,
    Source,
    TopUpRequest,
    Voucher,
    VoucherRedemption,
    Wallet,
)
from billing.services import prices
from billing.services.metering import meter_open
from billing.services.prices import Quantities
from billing.services.recharge import top_up_request, voucher_redeem
from billing.services.wallets import wallet_get

from .factories import PriceFactory, VoucherFactory, ledger_entry_post


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture
def rows(organization, owner):
    """One row of every billing model, with a word to search for."""
    organization.name = "Kestrel Labs"
    organization.save()
    price = PriceFactory(resource=PriceResource.GPU_HOUR, gpu_model="NVIDIA H100", amount=2)
    wallet = wallet_get(organization)
    # Kept as message ids with arguments: search finds them by the arguments too.
    entry = ledger_entry_post(
        organization,
        "50.00",
        description="Bank transfer %(reference)s",
        description_args={"reference": "kestrel-0042"},
    )
    meter = meter_open(
        reference="environment:7:run",
        organization=organization,
        label="%(name)s (volume)",
        label_args={"name": "kestrel-train"},
        quantities=Quantities(kind="compute", gpu_model="NVIDIA H100", gpu_count=1),
        source="host:7",
    )
    Source.objects.update_or_create(key="host:7", defaults={"seen_until": timezone.now()})
    top_up = top_up_request(user=owner, organization=organization, amount="25", reference="KT-1")
    voucher = VoucherFactory(code="KESTREL-10", max_redemptions=5)
    redemption = voucher_redeem(user=owner, organization=organization, code="KESTREL-10")
    payment = Payment.objects.create(
        wallet=wallet, provider="sandbox", provider_reference="pay_kestrel", amount=Decimal(10)
    )
    run = ReconciliationRun.objects.create(differences=[{"wallet": wallet.pk, "kind": "balance"}])
    return {
        Price: (price, "H100"),
        Wallet: (wallet, "Kestrel"),
        LedgerEntry: (entry, "kestrel-0042"),
        Meter: (meter, "kestrel-train"),
        RunInterval: (RunInterval.objects.get(meter=meter), "environment:7"),
        Source: (Source.objects.get(key="host:7"), "host:7"),
        TopUpRequest: (top_up, "KT-1"),
        Voucher: (voucher, "KESTREL"),
        VoucherRedemption: (redemption, "KESTREL"),
        Payment: (payment, "pay_kestrel"),
        ReconciliationRun: (run, "balance"),
    }


MODELS = [
    Price,
    Wallet,
    LedgerEntry,
    Meter,
    RunInterval,
    Source,
    TopUpRequest,
    Voucher,
    VoucherRedemption,
    Payment,
    ReconciliationRun,
]
# Made by their services elsewhere (portal, API, metering); the admin only looks.
ADDABLE = {Price, Voucher}


def _url(model, page, *args):
    return reverse(f"admin:billing_{model._meta.model_name}_{page}", args=args)


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_every_page_opens_and_search_finds(operator_client, rows, model):
    obj, word = rows[model]
    changelist = operator_client.get(_url(model, "changelist"))
    assert changelist.status_code == 200
    found = operator_client.get(_url(model, "changelist"), {"q": word})
    assert found.status_code == 200
    assert _url(model, "change", obj.pk) in found.content.decode()
    missed = operator_client.get(_url(model, "changelist"), {"q": "no-such-thing-anywhere"})
    assert _url(model, "change", obj.pk) not in missed.content.decode()

    assert operator_client.get(_url(model, "change", obj.pk)).status_code == 200
    add = operator_client.get(_url(model, "add"))
    assert add.status_code == (200 if model in ADDABLE else 403)


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_list_filters_open(operator_client, rows, model):
    model_admin = operator_client.get(_url(model, "changelist")).context["cl"].model_admin
    assert model_admin.list_filter
    changelist = operator_client.get(_url(model, "changelist"))
    for spec in changelist.context["cl"].filter_specs:
        for choice in list(spec.choices(changelist.context["cl"]))[1:]:
            response = operator_client.get(_url(model, "changelist") + choice["query_string"])
            assert response.status_code == 200, choice["query_string"]


def test_the_ledger_cannot_be_changed_or_deleted(operator_client, rows):
    entry, _word = rows[LedgerEntry]
    change = operator_client.get(_url(LedgerEntry, "change", entry.pk))
    assert change.status_code == 200
    assert b'name="_save"' not in change.content
    response = operator_client.post(
        _url(LedgerEntry, "change", entry.pk), {"amount": "1000000", "description": "x"}
    )
    assert response.status_code == 403
    assert operator_client.get(_url(LedgerEntry, "delete", entry.pk)).status_code == 403
    response = operator_client.post(
        _url(LedgerEntry, "changelist"),
        {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"},
    )
    assert LedgerEntry.objects.filter(pk=entry.pk).exists()
    entry.refresh_from_db()
    assert entry.amount == Decimal(50)


def test_a_price_saved_in_the_admin_goes_through_the_service(operator_client, rows, monkeypatch):
    monkeypatch.setattr(prices, "_region_sources", [lambda: ["eu"]])  # regions exist
    response = operator_client.post(
        _url(Price, "add"),
        {"resource": "vcpu_hour", "region": "eu", "gpu_model": "", "amount": "0.05"},
    )
    assert response.status_code == 302, response.content
    price = Price.objects.get(resource="vcpu_hour")
    assert price.updated_by is not None
    assert AuditEvent.objects.filter(action=AuditAction.PRICE_CHANGED).count() == 1

    # The running meter is re-priced when its GPU price changes.
    gpu_price, _word = rows[Price]
    response = operator_client.post(
        _url(Price, "change", gpu_price.pk), {"amount": "3.000000", "resource": "machine_hour"}
    )
    assert response.status_code == 302, response.content
    gpu_price.refresh_from_db()
    assert (gpu_price.resource, gpu_price.amount) == ("gpu_hour", Decimal(3))
    meter, _word = rows[Meter]
    meter.refresh_from_db()
    assert meter.rate == Decimal(3)

    response = operator_client.post(_url(Price, "delete", price.pk), {"post": "yes"})
    assert response.status_code == 302
    assert not Price.objects.filter(pk=price.pk).exists()
    assert AuditEvent.objects.filter(action=AuditAction.PRICE_CHANGED).count() == 3


def _wallet_form(wallet, **values):
    return {
        "low_balance_threshold": "",
        "spend_limit_per_hour": "",
        "credit_kind": "",
        "credit_amount": "",
        "credit_reason": "",
        "credit_key": uuid.uuid4().hex,  # as the page makes it when shown
        **values,
    }


def test_the_wallet_page_credits_and_sets_the_limits(operator_client, rows, organization):
    wallet, _word = rows[Wallet]
    wallet.refresh_from_db()
    balance = wallet.balance
    response = operator_client.post(
        _url(Wallet, "change", wallet.pk),
        _wallet_form(
            wallet,
            credit_kind=EntryKind.REFUND,
            credit_amount="7.50",
            credit_reason="GPU fault",
            spend_limit_per_hour="20",
        ),
    )
    assert response.status_code == 302, response.content
    wallet.refresh_from_db()
    assert wallet.balance == balance + Decimal("7.5")
    assert wallet.spend_limit_per_hour == Decimal(20)
    entry = LedgerEntry.objects.get(kind=EntryKind.REFUND)
    assert entry.description == "GPU fault"
    assert AuditEvent.objects.filter(action=AuditAction.WALLET_CREDITED).exists()
    assert AuditEvent.objects.filter(action=AuditAction.WALLET_SETTINGS_CHANGED).exists()


def test_the_wallet_page_posted_twice_credits_once(operator_client, rows):
    """A double click or the back button sends the same form, with the same key, again."""
    wallet, _word = rows[Wallet]
    form = operator_client.get(_url(Wallet, "change", wallet.pk)).context["adminform"].form
    key = form["credit_key"].value()
    assert len(key) == 32
    data = _wallet_form(
        wallet, credit_kind=EntryKind.REFUND, credit_amount="7.50", credit_reason="GPU fault"
    )
    data["credit_key"] = key
    first = operator_client.post(_url(Wallet, "change", wallet.pk), data)
    assert first.status_code == 302, first.content
    again = operator_client.post(_url(Wallet, "change", wallet.pk), data, follow=True)
    assert "already made" in again.content.decode()
    assert LedgerEntry.objects.filter(kind=EntryKind.REFUND).count() == 1


def test_a_refused_credit_changes_nothing(operator_client, rows):
    wallet, _word = rows[Wallet]
    entries = LedgerEntry.objects.count()
    # A reason is required with an amount: the form says so.
    response = operator_client.post(
        _url(Wallet, "change", wallet.pk),
        _wallet_form(wallet, credit_kind="recharge", credit_amount="5"),
    )
    assert response.status_code == 200
    assert "credit_reason" in response.context["adminform"].form.errors
    # The service refuses a negative recharge: nothing is saved, the limits included.
    response = operator_client.post(
        _url(Wallet, "change", wallet.pk),
        _wallet_form(
            wallet,
            credit_kind="recharge",
            credit_amount="-5",
            credit_reason="oops",
            spend_limit_per_hour="20",
        ),
        follow=True,
    )
    assert response.status_code == 200
    assert "more than zero" in response.content.decode()
    wallet.refresh_from_db()
    assert wallet.spend_limit_per_hour is None
    assert LedgerEntry.objects.count() == entries
    assert operator_client.get(_url(Wallet, "delete", wallet.pk)).status_code == 403


def test_a_voucher_made_in_the_admin_goes_through_the_service(operator_client, rows):
    response = operator_client.post(
        _url(Voucher, "add"),
        {"code": "", "amount": "12.50", "max_redemptions": "3", "per_organization_limit": "1"},
    )
    assert response.status_code == 302, response.content
    voucher = Voucher.objects.exclude(code="KESTREL-10").get()
    assert len(voucher.code) == 14
    assert voucher.created_by is not None
    assert AuditEvent.objects.filter(action=AuditAction.VOUCHER_CREATED).exists()

    # Afterwards, only the expiry and whether it is active change.
    response = operator_client.post(
        _url(Voucher, "change", voucher.pk), {"is_active": "", "amount": "999"}
    )
    assert response.status_code == 302, response.content
    voucher.refresh_from_db()
    assert (voucher.is_active, voucher.amount) == (False, Decimal("12.5"))
    change = AuditEvent.objects.get(action=AuditAction.VOUCHER_CHANGED)
    assert change.details == {"is_active": [True, False]}

    # A past expiry is refused by the service, and nothing is made.
    count = Voucher.objects.count()
    past = timezone.now() - timedelta(days=1)
    response = operator_client.post(
        _url(Voucher, "add"),
        {
            "code": "OLD",
            "amount": "1",
            "max_redemptions": "1",
            "per_organization_limit": "1",
            "expires_at_0": past.strftime("%Y-%m-%d"),
            "expires_at_1": past.strftime("%H:%M:%S"),
        },
        follow=True,
    )
    assert "must be in the future" in response.content.decode()
    assert Voucher.objects.count() == count


def test_top_ups_are_approved_by_the_action_once(operator_client, rows):
    top_up, _word = rows[TopUpRequest]
    wallet, _word = rows[Wallet]
    wallet.refresh_from_db()
    balance = wallet.balance
    data = {"action": "approve", "_selected_action": [top_up.pk]}
    response = operator_client.post(_url(TopUpRequest, "changelist"), data, follow=True)
    assert response.status_code == 200
    top_up.refresh_from_db()
    assert top_up.status == TopUpStatus.APPROVED
    wallet.refresh_from_db()
    assert wallet.balance == balance + Decimal(25)

    response = operator_client.post(_url(TopUpRequest, "changelist"), data, follow=True)
    assert "already" in response.content.decode()
    wallet.refresh_from_db()
    assert wallet.balance == balance + Decimal(25)
