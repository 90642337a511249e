"""Low balance and running out: after each tick, organisations whose balance crossed their
threshold are told once; one at zero for the grace period has what it runs stopped.

Billing stops nothing itself (it imports no app it bills): the apps that own what runs
register with ``out_of_balance_listener`` and are called with the organisation.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from accounts.choices import MANAGER_ROLES, AuditAction, NotificationLevel
from accounts.models import Membership, Organization
from accounts.services.audit import audit_record
from accounts.services.notifications import notification_create
from accounts.services.users import users_by_language

from ..models import Wallet
from .wallets import CENT

_out_of_balance_listeners: list[Callable[[Organization], object]] = []


def out_of_balance_listener(function: Callable[[Organization], object]):
    """Register ``function(organization)``, called when an organisation's grace period at
    zero balance is over: it stops what it runs there (volumes kept)."""
    _out_of_balance_listeners.append(function)
    return function


def _burn_sql() -> str:
    return """(SELECT coalesce(sum(m.rate), 0) FROM billing_meter m
               WHERE m.wallet_id = w.id AND EXISTS (
                   SELECT 1 FROM billing_runinterval i
                   WHERE i.meter_id = m.id AND i.ended_at IS NULL))"""


def _claim(cursor, sql: str, params: list) -> list[int]:
    cursor.execute(sql, params)
    return [row[0] for row in cursor.fetchall()]


def balances_check(now: datetime | None = None) -> dict[str, int]:
    """Mark and tell, once each: balances at or under their low threshold, balances at zero,
    and zero balances whose grace period is over (whose organisations then stop)."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.BILLING_GRACE_SECONDS)
    with transaction.atomic(), connection.cursor() as cursor:
        low = _claim(
            cursor,
            f"""UPDATE billing_wallet w SET low_balance_notified_at = %s
                WHERE w.low_balance_notified_at IS NULL AND w.balance > 0
                  AND {_burn_sql()} > 0
                  AND w.balance <= coalesce(w.low_balance_threshold, {_burn_sql()})
                RETURNING w.id""",
            [now],
        )
        depleted = _claim(
            cursor,
            f"""UPDATE billing_wallet w SET depleted_at = %s
                WHERE w.depleted_at IS NULL AND w.balance <= 0 AND {_burn_sql()} > 0
                RETURNING w.id""",
            [now],
        )
        exhausted = _claim(
            cursor,
            """UPDATE billing_wallet w SET out_of_balance_stop_at = %s
               WHERE w.out_of_balance_stop_at IS NULL AND w.balance <= 0
                 AND w.depleted_at <= %s
               RETURNING w.id""",
            [now, now - grace],
        )
        wallets = Wallet.objects.in_bulk([*low, *depleted, *exhausted])
        for wallet_id in low:
            _tell(wallets[wallet_id], _low_text)
        for wallet_id in depleted:
            _tell(wallets[wallet_id], _zero_text)
        for wallet_id in exhausted:
            wallet = wallets[wallet_id]
            organization = Organization.objects.get(pk=wallet.organization_id)
            audit_record(
                AuditAction.OUT_OF_BALANCE,
                organization=organization,
                target=wallet,
                details={"balance": str(wallet.balance)},
            )
            for listener in _out_of_balance_listeners:
                listener(organization)
            _tell(wallet, _stopped_text)
    return {"low": len(low), "depleted": len(depleted), "stopped": len(exhausted)}


def _amount(wallet: Wallet) -> str:
    return f"{wallet.balance.quantize(CENT)} {wallet.currency}"


def _low_text(wallet: Wallet) -> tuple[str, str]:
    return (
        _("Your balance is running low"),
        _(
            "The balance of %(organization)s is %(balance)s, less than its low-balance "
            "threshold. Recharge to keep your environments running."
        )
        % {"organization": wallet.organization.name, "balance": _amount(wallet)},
    )


def _zero_text(wallet: Wallet) -> tuple[str, str]:
    minutes = max(1, settings.BILLING_GRACE_SECONDS // 60)
    return (
        _("Your balance has run out"),
        _(
            "The balance of %(organization)s is %(balance)s. Recharge within %(minutes)s "
            "minutes, or its running environments stop (their volumes are kept)."
        )
        % {
            "organization": wallet.organization.name,
            "balance": _amount(wallet),
            "minutes": minutes,
        },
    )


def _stopped_text(wallet: Wallet) -> tuple[str, str]:
    return (
        _("Environments stopped: out of balance"),
        _(
            "The balance of %(organization)s stayed at %(balance)s through the grace period, "
            "so its running environments were stopped. Their volumes are kept; recharge and "
            "start them again."
        )
        % {"organization": wallet.organization.name, "balance": _amount(wallet)},
    )


def _tell(wallet: Wallet, make_text: Callable[[Wallet], tuple[str, str]]) -> None:
    """In-app and e-mail, to the organisation's owners and admins, each in their language."""
    managers = [
        membership.user
        for membership in Membership.objects.filter(
            organization_id=wallet.organization_id,
            role__in=MANAGER_ROLES,
            user__is_active=True,
        ).select_related("user", "organization")
    ]
    url = reverse("billing:billing_overview")
    mails = []
    for language, readers in users_by_language(managers).items():
        with translation.override(language):
            title, body = make_text(wallet)
        for reader in readers:
            notification_create(
                reader,
                title,
                body=body,
                level=NotificationLevel.WARNING,
                url=url,
                organization=wallet.organization,
            )
        mails.append((title, body, [reader.email for reader in readers]))
    transaction.on_commit(lambda: _send(mails))


def _send(mails: list[tuple[str, str, list[str]]]) -> None:
    for subject, body, recipients in mails:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients, fail_silently=True)
