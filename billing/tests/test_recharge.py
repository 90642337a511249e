"""Money in: bank top-ups approved once, vouchers within their limits, operator credits."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from unittest.mock import patch

import pytest
from django.db import connection
from django.db.models import QuerySet
from django.utils import timezone

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from accounts.tests.factories import OrganizationFactory, UserFactory
from billing.choices import EntryKind, TopUpStatus
from billing.models import LedgerEntry, TopUpRequest, Voucher, VoucherRedemption
from billing.services.recharge import (
    top_up_approve,
    top_up_reject,
    top_up_request,
    voucher_create,
    voucher_redeem,
    voucher_update,
)
from billing.services.wallets import wallet_credit, wallet_get
from remotegpu.core.errors import Conflict, ValidationError


def _balance(organization) -> Decimal:
    return wallet_get(organization).balance


def test_a_top_up_approved_twice_credits_once(owner, organization, operator):
    top_up = top_up_request(
        user=owner, organization=organization, amount="250.00", reference="ACME-0042"
    )
    assert top_up.status == TopUpStatus.PENDING
    assert _balance(organization) == 0
    top_up_approve(operator=operator, top_up=top_up)
    with pytest.raises(Conflict):
        top_up_approve(operator=operator, top_up=top_up)
    with pytest.raises(Conflict):
        top_up_reject(operator=operator, top_up=top_up)
    assert _balance(organization) == Decimal("250")
    assert LedgerEntry.objects.get().kind == EntryKind.RECHARGE
    assert AuditEvent.objects.filter(action=AuditAction.TOP_UP_APPROVED).count() == 1


@pytest.mark.parametrize(
    ("amount", "currency", "field"),
    [
        ("-5", "", "amount"),
        ("0", "", "amount"),
        ("1e30", "", "amount"),
        ("ten", "", "amount"),
        ("NaN", "", "amount"),
        ("1.234", "", "amount"),
        ("10", "EUR", "currency"),
    ],
)
def test_bad_top_ups_name_the_field_and_change_nothing(
    owner, organization, amount, currency, field
):
    with pytest.raises(ValidationError) as refused:
        top_up_request(
            user=owner, organization=organization, amount=amount, currency=currency, reference="x"
        )
    assert field in refused.value.fields
    assert not TopUpRequest.objects.exists()


def test_a_voucher_redeemed_twice_credits_once(owner, organization, operator):
    voucher = voucher_create(operator=operator, amount="20", code="welcome-2026")
    assert voucher.code == "WELCOME-2026"
    voucher_redeem(user=owner, organization=organization, code="welcome-2026")
    with pytest.raises(ValidationError, match="already redeemed"):
        voucher_redeem(user=owner, organization=organization, code="WELCOME-2026")
    assert _balance(organization) == Decimal("20")
    assert LedgerEntry.objects.get().kind == EntryKind.PROMOTION


def test_a_refused_redemption_keeps_nothing(owner, organization, operator):
    from billing.models import Wallet

    with pytest.raises(ValidationError, match="not valid"):
        voucher_redeem(user=owner, organization=organization, code="NO-SUCH-CODE")
    assert not Wallet.objects.filter(organization=organization).exists()
    assert not AuditEvent.objects.exists()


def test_a_voucher_changed_after_it_was_made_is_audited(operator):
    voucher = voucher_create(operator=operator, amount="5")
    later = timezone.now() + timedelta(days=7)
    voucher_update(operator=operator, voucher=voucher, expires_at=later, is_active=True)
    voucher_update(operator=operator, voucher=voucher, expires_at=later, is_active=True)  # same
    voucher_update(operator=operator, voucher=voucher, expires_at=later, is_active=False)
    changes = AuditEvent.objects.filter(action=AuditAction.VOUCHER_CHANGED).order_by("pk")
    assert [sorted(event.details) for event in changes] == [["expires_at"], ["is_active"]]
    with pytest.raises(ValidationError) as refused:
        voucher_update(
            operator=operator,
            voucher=voucher,
            expires_at=timezone.now() - timedelta(days=1),
            is_active=True,
        )
    assert set(refused.value.fields) == {"expires_at"}
    voucher.refresh_from_db()
    assert (voucher.expires_at, voucher.is_active) == (later, False)


def test_voucher_limits(owner, organization, operator):
    expired = voucher_create(
        operator=operator, amount="5", expires_at=timezone.now() + timedelta(seconds=30)
    )
    Voucher.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(ValidationError, match="expired"):
        voucher_redeem(user=owner, organization=organization, code=expired.code)
    with pytest.raises(ValidationError, match="not valid"):
        voucher_redeem(user=owner, organization=organization, code="NO-SUCH-CODE")

    shared = voucher_create(operator=operator, amount="5", max_redemptions=2)
    voucher_redeem(user=owner, organization=organization, code=shared.code)
    voucher_redeem(user=owner, organization=OrganizationFactory(), code=shared.code)
    with pytest.raises(ValidationError, match="used up"):
        voucher_redeem(user=owner, organization=OrganizationFactory(), code=shared.code)

    twice = voucher_create(
        operator=operator, amount="1", max_redemptions=5, per_organization_limit=2
    )
    voucher_redeem(user=owner, organization=organization, code=twice.code)
    voucher_redeem(user=owner, organization=organization, code=twice.code)
    assert _balance(organization) == Decimal("7")


@pytest.mark.django_db(transaction=True)
def test_concurrent_redemptions_of_a_single_use_voucher_credit_once():
    operator = UserFactory(is_staff=True)
    voucher = voucher_create(operator=operator, amount="50")
    organizations = [OrganizationFactory() for _ in range(6)]
    for organization in organizations:
        wallet_get(organization)

    def redeem(organization):
        try:
            voucher_redeem(user=operator, organization=organization, code=voucher.code)
            return True
        except ValidationError:
            return False
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(redeem, organizations))
    assert outcomes.count(True) == 1
    assert VoucherRedemption.objects.count() == 1
    assert Voucher.objects.get().redemptions == 1
    assert sum(_balance(organization) for organization in organizations) == Decimal("50")


def test_an_operator_credit_needs_a_reason_and_is_audited(organization, operator):
    with pytest.raises(ValidationError) as refused:
        wallet_credit(
            operator=operator, organization=organization, amount="10", reason=" ", kind="recharge"
        )
    assert "reason" in refused.value.fields
    wallet_credit(
        operator=operator,
        organization=organization,
        amount="-2.50",
        reason="double-billed job",
        kind=EntryKind.ADJUSTMENT,
    )
    with pytest.raises(ValidationError) as refused:
        wallet_credit(
            operator=operator, organization=organization, amount="-1", reason="x", kind="refund"
        )
    assert "amount" in refused.value.fields
    assert _balance(organization) == Decimal("-2.5")
    event = AuditEvent.objects.get(action=AuditAction.WALLET_CREDITED)
    assert event.details["reason"] == "double-billed job"


def test_the_ledger_refuses_changes_even_in_sql(organization, operator):
    wallet_credit(
        operator=operator, organization=organization, amount="1", reason="x", kind="promotion"
    )
    entry = LedgerEntry.objects.get()
    with pytest.raises(TypeError):
        entry.save()
    with pytest.raises(TypeError):
        LedgerEntry.objects.all().delete()
    from django.db import DatabaseError, transaction

    for statement in (
        "UPDATE billing_ledgerentry SET amount = 1000",
        "DELETE FROM billing_ledgerentry",
    ):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement)
    assert LedgerEntry.objects.get().amount == Decimal("1")


def test_a_top_up_in_another_currency_than_the_wallets_is_refused(owner, organization):
    """A wallet keeps the currency it was made in, should the configured one change later."""
    wallet = wallet_get(organization)
    wallet.currency = "EUR"
    wallet.save(update_fields=["currency"])
    with pytest.raises(ValidationError) as refused:
        top_up_request(user=owner, organization=organization, amount="10", reference="T-1")
    assert "currency" in refused.value.fields
    assert not TopUpRequest.objects.exists()


def test_a_voucher_code_taken_meanwhile_is_a_field_error(operator):
    """Two operators choosing one code at once: the database's unique index decides, and the
    one who lost is told which field, not given a 500."""
    voucher_create(operator=operator, amount="5", code="SPRING")
    # As if it had checked before the other's voucher was made:
    with (
        patch.object(QuerySet, "exists", return_value=False),
        pytest.raises(ValidationError) as refused,
    ):
        voucher_create(operator=operator, amount="5", code="spring")
    assert "code" in refused.value.fields
    assert Voucher.objects.count() == 1
