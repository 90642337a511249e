import json
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection
from django.urls import reverse
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from billing.choices import EntryKind, PaymentStatus
from billing.models import LedgerEntry, Payment
from billing.payments.base import (
    SIGNATURE_HEADER,
    SignatureInvalid,
    provider_enabled,
    signature_header,
    signature_verify,
)
from billing.services.payments import payment_create, payment_webhook
from billing.services.wallets import wallet_get

SECRET = "whsec_test_0123456789"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def sandbox(settings):
    settings.BILLING_PAYMENT_PROVIDER = "sandbox"
    settings.BILLING_PAYMENT_WEBHOOK_SECRET = SECRET
    return settings


@pytest.fixture
def payment(organization, owner):
    created, _url = payment_create(user=owner, organization=organization, amount="25.00")
    return created


def client_for(user):
    client = APIClient()
    client.force_login(user)
    return client


def event_body(payment, **overrides):
    event = {
        "id": "evt_1",
        "type": "payment.succeeded",
        "reference": payment.provider_reference,
        "amount": str(payment.amount),
        "currency": payment.currency,
    }
    event.update(overrides)
    return json.dumps(event).encode()


def webhook_post(body, *, secret=SECRET, timestamp=None, provider="sandbox", signature=None):
    headers = {}
    if signature is None:
        signature = signature_header(body, secret, timestamp)
    if signature:
        headers[SIGNATURE_HEADER] = signature
    url = reverse("api:payment-webhook", args=[provider])
    return APIClient().post(url, data=body, content_type="application/json", headers=headers)


def nothing_credited(organization):
    wallet = wallet_get(organization)
    return wallet.balance == 0 and not LedgerEntry.objects.filter(wallet=wallet).exists()


# --- the signature scheme ---------------------------------------------------------------


def test_signature_good():
    body = b'{"a": 1}'
    timestamp = int(time.time())
    assert signature_verify(body, signature_header(body, SECRET, timestamp), SECRET) == timestamp


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "v1=abc",
        "t=notanumber,v1=abc",
        "t=1700000000",
        "garbage",
        "t=²,v1=abc",
        "t=1700000000,v1=é" + "0" * 63,
    ],
)
def test_signature_missing_or_malformed(header):
    with pytest.raises(SignatureInvalid):
        signature_verify(b"{}", header, SECRET)


def test_signature_wrong_secret_or_body():
    header = signature_header(b"{}", "another-secret")
    with pytest.raises(SignatureInvalid):
        signature_verify(b"{}", header, SECRET)
    header = signature_header(b'{"amount": "1"}', SECRET)
    with pytest.raises(SignatureInvalid):
        signature_verify(b'{"amount": "1000"}', header, SECRET)


@pytest.mark.parametrize("offset", [-301, 301])
def test_signature_outside_replay_window(offset):
    timestamp = int(time.time()) + offset
    with pytest.raises(SignatureInvalid):
        signature_verify(b"{}", signature_header(b"{}", SECRET, timestamp), SECRET)


def test_signature_within_replay_window():
    timestamp = int(time.time()) - 290
    signature_verify(b"{}", signature_header(b"{}", SECRET, timestamp), SECRET)


def test_signature_any_of_several_may_match():
    """While a secret is rotated the provider signs with both."""
    good = signature_header(b"{}", SECRET)
    timestamp, good_v1 = good.split(",")
    header = f"{timestamp},v1={'0' * 64},{good_v1}"
    signature_verify(b"{}", header, SECRET)


def test_signature_needs_a_secret():
    with pytest.raises(SignatureInvalid):
        signature_verify(b"{}", signature_header(b"{}", ""), "")


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "secret"), [("", SECRET), ("no-such", SECRET), ("sandbox", "")]
)
def test_not_configured_refuses_card_payments(sandbox, organization, owner, provider, secret):
    sandbox.BILLING_PAYMENT_PROVIDER = provider
    sandbox.BILLING_PAYMENT_WEBHOOK_SECRET = secret
    response = client_for(owner).post(
        reverse("api:payment-list"), {"amount": "25.00"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "payments_unavailable"
    assert response.json()["error"]["message"]
    assert not Payment.objects.exists()


def test_enabled_provider():
    assert provider_enabled().name == "sandbox"


def test_webhook_to_a_provider_not_enabled_is_404(sandbox, payment):
    sandbox.BILLING_PAYMENT_PROVIDER = ""
    assert webhook_post(event_body(payment)).status_code == 404
    sandbox.BILLING_PAYMENT_PROVIDER = "sandbox"
    assert webhook_post(event_body(payment), provider="stripe").status_code == 404
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING
    assert nothing_credited(payment.wallet.organization)


# --- creating a payment -------------------------------------------------------------------


def test_owner_creates_payment(organization, owner):
    response = client_for(owner).post(
        reverse("api:payment-list"), {"amount": "25.00"}, format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    payment = Payment.objects.get(pk=body["id"])
    assert body["status"] == "pending"
    assert payment.wallet.organization == organization
    assert payment.provider == "sandbox"
    assert payment.provider_reference.startswith("sbx_")
    assert payment.amount == Decimal("25.00")
    assert payment.requested_by == owner
    assert body["checkout_url"] == "http://testserver" + reverse(
        "billing:payment_sandbox_checkout", args=[payment.provider_reference]
    )
    assert nothing_credited(organization)


def test_admin_creates_payment_with_a_token(organization, admin_user, token_client_for):
    response = token_client_for(admin_user).post(
        reverse("api:payment-list"), {"amount": "10", "currency": "usd"}, format="json"
    )
    assert response.status_code == 201, response.json()
    assert Payment.objects.get().wallet.organization == organization


def test_member_may_not_create_payment(member):
    response = client_for(member).post(
        reverse("api:payment-list"), {"amount": "25.00"}, format="json"
    )
    assert response.status_code == 403
    assert not Payment.objects.exists()


def test_anonymous_may_not_create_payment():
    response = APIClient().post(reverse("api:payment-list"), {"amount": "25.00"}, format="json")
    assert response.status_code in (401, 403)
    assert not Payment.objects.exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "amount"),
        ({"amount": "abc"}, "amount"),
        ({"amount": "0"}, "amount"),
        ({"amount": "-5"}, "amount"),
        ({"amount": "1.234"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "99999999999"}, "amount"),
        ({"amount": "25", "currency": "EUR"}, "currency"),
    ],
)
def test_bad_input_names_the_field(owner, data, field):
    response = client_for(owner).post(reverse("api:payment-list"), data, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert not Payment.objects.exists()


# --- cross-organisation ---------------------------------------------------------------------


def test_outsider_neither_sees_nor_pays_for_this_organisation(
    payment, organization, outsider, other_organization
):
    client = client_for(outsider)
    listed = client.get(reverse("api:payment-list"))
    assert listed.status_code == 200
    assert listed.json()["results"] == []
    assert client.get(reverse("api:payment-detail", args=[payment.pk])).status_code == 404
    # Whatever they send, the payment is for the organisation they work in.
    response = client.post(
        reverse("api:payment-list"),
        {"amount": "5.00", "organization": organization.slug, "wallet": payment.wallet_id},
        format="json",
    )
    assert response.status_code == 201
    created = Payment.objects.get(pk=response.json()["id"])
    assert created.wallet.organization == other_organization
    assert Payment.objects.filter(wallet__organization=organization).count() == 1


def test_members_see_their_organisations_payments(payment, member):
    listed = client_for(member).get(reverse("api:payment-list"))
    assert [row["id"] for row in listed.json()["results"]] == [payment.pk]
    detail = client_for(member).get(reverse("api:payment-detail", args=[payment.pk]))
    assert detail.json()["status"] == "pending"


def test_outsider_cannot_open_the_sandbox_page(client, payment, outsider):
    client.force_login(outsider)
    url = reverse("billing:payment_sandbox_checkout", args=[payment.provider_reference])
    assert client.get(url).status_code == 404
    assert client.post(url, {"decision": "pay"}).status_code == 404
    assert nothing_credited(payment.wallet.organization)


# --- the webhook ----------------------------------------------------------------------------


def test_webhook_credits_once(payment, owner):
    organization = payment.wallet.organization
    response = webhook_post(event_body(payment))
    assert response.status_code == 200
    assert response.json() == {"received": True}
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    wallet = wallet_get(organization)
    assert wallet.balance == Decimal("25.00")
    entry = LedgerEntry.objects.get(wallet=wallet)
    assert entry.kind == EntryKind.RECHARGE
    assert entry.amount == Decimal("25.00")
    assert entry.idempotency_key == f"payment:sandbox:{payment.provider_reference}"
    audit = AuditEvent.objects.get(action=AuditAction.PAYMENT_SUCCEEDED)
    assert audit.organization == organization
    assert audit.details["requested_by"] == owner.email

    # The provider retries (same event) and sends a second event for the same payment.
    assert webhook_post(event_body(payment)).status_code == 200
    assert webhook_post(event_body(payment, id="evt_2")).status_code == 200
    wallet.refresh_from_db()
    assert wallet.balance == Decimal("25.00")
    assert LedgerEntry.objects.filter(wallet=wallet).count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.PAYMENT_SUCCEEDED).count() == 1


def test_service_duplicate_returns_the_payment(payment):
    body = event_body(payment)
    headers = {SIGNATURE_HEADER.lower(): signature_header(body, SECRET)}
    first = payment_webhook("sandbox", body, headers)
    second = payment_webhook("sandbox", body, headers)
    assert first.status == second.status == PaymentStatus.SUCCEEDED
    assert LedgerEntry.objects.count() == 1


@pytest.mark.parametrize(
    ("signature", "timestamp", "secret"),
    [
        ("", None, SECRET),  # missing
        ("t=1,v1=" + "0" * 64, None, SECRET),  # wrong
        ("t=1,v1=é", None, SECRET),  # not even hexadecimal
        (None, None, "not-the-secret"),  # signed with another secret
        (None, int(time.time()) - 3600, SECRET),  # replayed an hour later
    ],
)
def test_webhook_bad_signature_is_400_and_changes_nothing(payment, signature, timestamp, secret):
    response = webhook_post(
        event_body(payment), signature=signature, timestamp=timestamp, secret=secret
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_signature"
    assert error["message"]
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING
    assert nothing_credited(payment.wallet.organization)


def test_webhook_expired_signature(payment):
    timestamp = int(time.time()) - 301
    response = webhook_post(event_body(payment), timestamp=timestamp)
    assert response.status_code == 400
    assert "too old" in response.json()["error"]["message"]


def test_webhook_tampered_amount(payment):
    """A body changed after signing (a bigger amount) fails the signature check."""
    signed = event_body(payment)
    header = signature_header(signed, SECRET)
    response = webhook_post(event_body(payment, amount="2500.00"), signature=header)
    assert response.status_code == 400
    assert nothing_credited(payment.wallet.organization)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"amount": "2500.00"}, "amount"),
        ({"amount": "24.99"}, "amount"),
        ({"currency": "EUR"}, "currency"),
    ],
)
def test_webhook_mismatch_is_refused_and_changes_nothing(payment, overrides, field):
    response = webhook_post(event_body(payment, **overrides))
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING
    assert nothing_credited(payment.wallet.organization)
    assert not AuditEvent.objects.filter(action=AuditAction.PAYMENT_SUCCEEDED).exists()


def test_webhook_same_amount_written_differently_is_accepted(payment):
    assert webhook_post(event_body(payment, amount="25")).status_code == 200
    assert wallet_get(payment.wallet.organization).balance == Decimal("25.00")


def test_webhook_unknown_payment_is_404(payment):
    response = webhook_post(event_body(payment, reference="sbx_nobody"))
    assert response.status_code == 404
    assert nothing_credited(payment.wallet.organization)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b"{}",
        b'{"type": "payment.succeeded"}',
        b'{"id": "e", "type": "payment.succeeded", "reference": "r", "amount": "abc",'
        b' "currency": "USD"}',
        b'{"id": "e", "type": "payment.succeeded", "reference": "r", "amount": "Infinity",'
        b' "currency": "USD"}',
        b'{"id": "e", "type": "payment.succeeded", "reference": "r", "amount": [],'
        b' "currency": "USD"}',
    ],
)
def test_webhook_malformed_signed_body_is_400(payment, body):
    response = webhook_post(body)
    assert response.status_code == 400
    assert response.json()["error"]["message"]
    assert nothing_credited(payment.wallet.organization)


def test_webhook_other_event_types_are_acknowledged(payment):
    response = webhook_post(event_body(payment, type="customer.created"))
    assert response.status_code == 200
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING


def test_webhook_failed_then_retried_card_succeeds(payment):
    assert webhook_post(event_body(payment, type="payment.failed")).status_code == 200
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED
    assert nothing_credited(payment.wallet.organization)
    assert webhook_post(event_body(payment, id="evt_2")).status_code == 200
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert wallet_get(payment.wallet.organization).balance == Decimal("25.00")


def test_webhook_late_failure_never_undoes_a_success(payment):
    webhook_post(event_body(payment))
    assert webhook_post(event_body(payment, type="payment.failed", id="e3")).status_code == 200
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCEEDED
    assert wallet_get(payment.wallet.organization).balance == Decimal("25.00")


def test_webhook_is_csrf_exempt(payment):
    body = event_body(payment)
    client = APIClient(enforce_csrf_checks=True)
    response = client.post(
        reverse("api:payment-webhook", args=["sandbox"]),
        data=body,
        content_type="application/json",
        headers={SIGNATURE_HEADER: signature_header(body, SECRET)},
    )
    assert response.status_code == 200


# --- the sandbox, end to end ------------------------------------------------------------------


def test_sandbox_flow_through_the_page(client, organization, owner):
    api = client_for(owner)
    created = api.post(reverse("api:payment-list"), {"amount": "40.00"}, format="json").json()
    client.force_login(owner)
    page = client.get(created["checkout_url"])
    assert page.status_code == 200
    assert b'data-testid="sandbox-pay"' in page.content

    response = client.post(created["checkout_url"], {"decision": "pay"})
    assert response.status_code == 302
    assert response["Location"] == reverse("billing:billing_overview")
    payment = Payment.objects.get(pk=created["id"])
    assert payment.status == PaymentStatus.SUCCEEDED
    assert wallet_get(organization).balance == Decimal("40.00")
    assert AuditEvent.objects.filter(action=AuditAction.PAYMENT_SUCCEEDED).count() == 1

    # Pressing Pay again (back button) pays nothing more.
    again = client.post(created["checkout_url"], {"decision": "pay"})
    assert again.status_code == 302
    assert wallet_get(organization).balance == Decimal("40.00")
    assert LedgerEntry.objects.count() == 1
    assert b'data-testid="sandbox-pay"' not in client.get(created["checkout_url"]).content


def test_sandbox_decline(client, payment, owner):
    client.force_login(owner)
    url = reverse("billing:payment_sandbox_checkout", args=[payment.provider_reference])
    assert client.post(url, {"decision": "decline"}).status_code == 302
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED
    assert nothing_credited(payment.wallet.organization)


def test_sandbox_page_needs_a_decision(client, payment, owner):
    client.force_login(owner)
    url = reverse("billing:payment_sandbox_checkout", args=[payment.provider_reference])
    response = client.post(url, {"decision": "steal"})
    assert response.status_code == 302
    assert response["Location"] == url
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING


def test_sandbox_page_needs_sign_in_and_the_sandbox(client, sandbox, payment, owner):
    url = reverse("billing:payment_sandbox_checkout", args=[payment.provider_reference])
    response = client.get(url)
    assert response.status_code == 302
    assert "login" in response["Location"]
    client.force_login(owner)
    sandbox.BILLING_PAYMENT_PROVIDER = ""
    assert client.get(url).status_code == 404
    assert client.post(url, {"decision": "pay"}).status_code == 404
    assert nothing_credited(payment.wallet.organization)


# --- the schema -------------------------------------------------------------------------------


def test_schema_documents_both_endpoints():
    schema = SchemaGenerator().get_schema(public=True)
    paths = schema["paths"]
    create = paths["/api/v1/billing/payments/"]["post"]
    assert "PaymentCreateRequest" in json.dumps(create["requestBody"])
    assert "PaymentCreated" in json.dumps(create["responses"]["201"])
    webhook = paths["/api/v1/billing/webhooks/{provider}/"]["post"]
    assert any(p["name"] == SIGNATURE_HEADER for p in webhook["parameters"])
    assert "WebhookReceived" in json.dumps(webhook["responses"]["200"])
    assert "security" not in webhook  # no authentication: the signature is the proof


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicate_webhooks_credit_once(organization, owner):
    """The provider delivers the same success twice at once: one credit, one audit."""
    payment, _url = payment_create(user=owner, organization=organization, amount="25.00")
    body = event_body(payment)
    headers = {SIGNATURE_HEADER: signature_header(body, SECRET)}
    barrier = threading.Barrier(4)
    errors = []

    def deliver():
        try:
            barrier.wait()
            payment_webhook("sandbox", body, headers)
        except Exception as error:  # collected: a thread's exception would be lost
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert wallet_get(organization).balance == Decimal("25.00")
    assert LedgerEntry.objects.count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.PAYMENT_SUCCEEDED).count() == 1
