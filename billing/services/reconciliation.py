"""Reconciliation (对账): recompute what the ledger says from its parts, nightly and on demand.

- Every wallet's balance equals the sum of its entries.
- Every usage entry equals its price × seconds under the rounding rule, and covers a stretch
  of its interval that no other entry covers.
- No interval is billed past its end, and no two intervals of one meter overlap.

Any difference is recorded and operators are alerted (in-app and e-mail).
"""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mail
from django.db import connection, transaction
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _

from accounts.choices import NotificationLevel
from accounts.models import User
from accounts.services.notifications import notification_create
from accounts.services.users import users_by_language

from ..choices import EntryKind
from ..models import ReconciliationRun

CHECKS = {
    "balance": """
        SELECT w.id, w.balance::text, coalesce(sum(e.amount), 0)::text
        FROM billing_wallet w LEFT JOIN billing_ledgerentry e ON e.wallet_id = w.id
        GROUP BY w.id HAVING w.balance <> coalesce(sum(e.amount), 0)""",
    "charge": f"""
        SELECT e.id, e.amount::text, (-round(e.rate * e.seconds / 3600, 6))::text
        FROM billing_ledgerentry e
        WHERE e.kind = '{EntryKind.USAGE}' AND e.interval_id IS NOT NULL
          AND (e.amount <> -round(e.rate * e.seconds / 3600, 6)
               OR e.seconds <> extract(epoch FROM e.period_end - e.period_start))""",
    "outside_interval": f"""
        SELECT e.id, e.period_start::text, e.period_end::text
        FROM billing_ledgerentry e JOIN billing_runinterval i ON i.id = e.interval_id
        WHERE e.kind = '{EntryKind.USAGE}'
          AND (e.period_start < i.started_at OR e.period_end > i.billed_until)""",
    "overlapping_entries": f"""
        SELECT a.id, b.id::text, a.interval_id::text
        FROM billing_ledgerentry a JOIN billing_ledgerentry b
          ON a.interval_id = b.interval_id AND a.id < b.id
         AND a.period_start < b.period_end AND b.period_start < a.period_end
        WHERE a.kind = '{EntryKind.USAGE}' AND b.kind = '{EntryKind.USAGE}'""",
    "billed_past_end": """
        SELECT i.id, i.billed_until::text, i.ended_at::text FROM billing_runinterval i
        WHERE i.ended_at IS NOT NULL AND i.billed_until > i.ended_at""",
    "overlapping_intervals": """
        SELECT a.id, b.id::text, a.meter_id::text
        FROM billing_runinterval a JOIN billing_runinterval b
          ON a.meter_id = b.meter_id AND a.id < b.id
         AND a.started_at < coalesce(b.ended_at, 'infinity')
         AND b.started_at < coalesce(a.ended_at, 'infinity')""",
}


def billing_reconcile() -> ReconciliationRun:
    """Run every check, store what it found, and alert operators on any difference."""
    differences = []
    with connection.cursor() as cursor:
        for check, sql in CHECKS.items():
            cursor.execute(sql)
            for row_id, found, expected in cursor.fetchall():
                differences.append(
                    {"check": check, "id": row_id, "found": found, "expected": expected}
                )
        cursor.execute("SELECT count(*) FROM billing_wallet")
        wallets = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM billing_runinterval")
        intervals = cursor.fetchone()[0]
    with transaction.atomic():
        run = ReconciliationRun.objects.create(
            wallets_checked=wallets, intervals_checked=intervals, differences=differences[:1000]
        )
        if differences:
            _alert(run, len(differences))
    return run


def _alert(run: ReconciliationRun, count: int) -> None:
    operators = list(User.objects.filter(is_staff=True, is_active=True))
    url = reverse("billing_operator:reconciliation_list")
    mails = []
    for language, readers in users_by_language(operators).items():
        with translation.override(language):
            title = _("Billing reconciliation found %(count)s differences") % {"count": count}
            body = _(
                "The reconciliation of %(time)s found differences between balances, the ledger "
                "and run intervals. Open the reconciliation page for each one."
            ) % {"time": f"{run.started_at:%Y-%m-%d %H:%M} UTC"}
        for reader in readers:
            notification_create(reader, title, body=body, level=NotificationLevel.ERROR, url=url)
        mails.append((title, body, [reader.email for reader in readers]))
    transaction.on_commit(
        lambda: [
            send_mail(s, b, settings.DEFAULT_FROM_EMAIL, to, fail_silently=True)
            for s, b, to in mails
        ]
    )
