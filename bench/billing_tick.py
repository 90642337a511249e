"""Benchmark: one billing tick over 100,000 running resources, against its SQL floor.

Set-up (set-based SQL, not the services: this measures the tick, not the set-up): 1,000
organisations with a wallet each, 10,000 sources (hosts) seen up to now, and 100,000 meters
with nonzero, varied prices, each with an open run interval billed up to 60 s ago.

Measured in the same run, alternately, from the same state each time (billed_until put back,
the entries made removed, balances set back to zero, the tables vacuumed):

- ``billing_tick(now)``: our tick (``TICK_SQL`` in its transaction, with the advisory lock);
- the floor: one hand-written statement doing the same work (move billed_until, insert one
  ledger entry per interval with the same columns and key, move each wallet's balance) as
  leanly as we could write it, with none of the tick's safeguards (no re-check of the row,
  no ON CONFLICT).

After each of our ticks the result is checked: one entry per interval, each the rounding
rule's amount, every balance the sum of its entries, every interval billed to ``now``.

Run: ``make bench NAME=billing_tick`` (``RESOURCES``, ``ORGS``, ``RUNS`` change the sizes).
It writes to the dev database and removes what it made at the end. The last line is one JSON
object.
"""

import json
import os
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "remotegpu.settings.dev")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from stack import bench_wallets, purge_billing, remove_ledger_entries  # noqa: E402

from accounts.models import Organization  # noqa: E402
from billing.choices import MeterKind  # noqa: E402
from billing.services.metering import billing_tick, second_floor  # noqa: E402

RESOURCES = int(os.environ.get("RESOURCES", "100000"))
ORGS = int(os.environ.get("ORGS", "1000"))
SOURCES = max(1, RESOURCES // 10)  # ten resources a host
RUNS = int(os.environ.get("RUNS", "3"))
PREFIX = "bench-bill-"
BEHIND = 60  # seconds since the last tick

# The floor: the same work in the leanest single statement we could write. Every interval
# that owes something is moved to where it is billed up to; the insert takes the old and new
# ends from ``due`` (read once, in the statement's snapshot) rather than re-reading the row.
FLOOR_SQL = """
WITH due AS (
    SELECT i.id, i.meter_id, i.rate, i.billed_until AS f,
           LEAST(%(now)s, COALESCE(i.ended_at, %(now)s), COALESCE(s.seen_until, %(now)s)) AS t
    FROM billing_runinterval i
    LEFT JOIN billing_source s ON s.id = i.source_id
    WHERE i.billed_until < LEAST(%(now)s, COALESCE(i.ended_at, %(now)s),
                                 COALESCE(s.seen_until, %(now)s))
), moved AS (
    UPDATE billing_runinterval i SET billed_until = due.t FROM due WHERE i.id = due.id
), charged AS (
    INSERT INTO billing_ledgerentry
        (wallet_id, kind, amount, currency, idempotency_key, description, description_args,
         created_at, meter_id, interval_id, period_start, period_end, seconds, rate)
    SELECT m.wallet_id, 'usage', -round(d.rate * d.s / 3600, 6), w.currency,
           'usage:' || d.id || ':' || extract(epoch FROM d.f)::bigint, m.label, m.label_args,
           %(now)s,
           m.id, d.id, d.f, d.t, d.s, d.rate
    FROM (SELECT due.*, extract(epoch FROM due.t - due.f)::bigint AS s FROM due) d
    JOIN billing_meter m ON m.id = d.meter_id
    JOIN billing_wallet w ON w.id = m.wallet_id
    WHERE d.rate > 0
    RETURNING wallet_id, amount
)
UPDATE billing_wallet w SET balance = w.balance + c.total, updated_at = %(now)s
FROM (SELECT wallet_id, sum(amount) AS total FROM charged GROUP BY wallet_id) c
WHERE w.id = c.wallet_id
"""


def phase(message: str, started: float) -> float:
    now = time.perf_counter()
    print(f"  {message}: {now - started:.2f} s", flush=True)
    return now


def clean() -> None:
    purge_billing(PREFIX)
    with connection.cursor() as cursor:  # the bench's sources are named, not hosts
        cursor.execute("DELETE FROM billing_source WHERE key LIKE %s", [f"{PREFIX}%"])
    Organization.objects.filter(slug__startswith=PREFIX).delete()


def create(now) -> None:
    behind = now - timedelta(seconds=BEHIND)
    Organization.objects.bulk_create(
        [Organization(name=f"{PREFIX}{i}", slug=f"{PREFIX}{i}") for i in range(ORGS)],
        batch_size=1000,
    )
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO billing_wallet
                    (organization_id, currency, balance, created_at, updated_at)
                SELECT o.id, %s, 0, %s, %s FROM accounts_organization o WHERE o.slug LIKE %s""",
            [settings.BILLING_CURRENCY, now, now, f"{PREFIX}%"],
        )
        cursor.execute(
            """INSERT INTO billing_source (key, seen_until)
               SELECT %s || g, %s FROM generate_series(1, %s) g""",
            [f"{PREFIX}host:", now, SOURCES],
        )
        # Prices from 0.05 to about 13 per hour in steps of 0.013: most charges round.
        cursor.execute(
            """INSERT INTO billing_meter
                    (reference, organization_id, wallet_id, kind, label, label_args, region,
                     gpu_model, gpu_count, vcpu, memory_gib, storage_gib, rate, created_at)
                SELECT %s || g, w.organization_id, w.id, %s,
                       'environment ' || g, '{}', '', 'bench', 1, 8, 32, 0,
                       round(0.05 + (g %% 997) * 0.013, 6), %s
                FROM generate_series(1, %s) g
                JOIN (SELECT id, organization_id, row_number() OVER (ORDER BY id) - 1 AS n
                      FROM billing_wallet WHERE id = ANY(%s)) w
                  ON w.n = g %% %s""",
            [
                f"{PREFIX}environment:",
                MeterKind.COMPUTE,
                now,
                RESOURCES,
                bench_wallets(PREFIX),
                ORGS,
            ],
        )
        cursor.execute(
            """INSERT INTO billing_runinterval
                   (meter_id, source_id, started_at, billed_until, rate)
               SELECT m.id, s.id, %s - (m.id %% 3600) * interval '1 second', %s, m.rate
               FROM billing_meter m
               JOIN billing_source s ON s.key = %s || (m.id %% %s + 1)
               WHERE m.reference LIKE %s""",
            [behind, behind, f"{PREFIX}host:", SOURCES, f"{PREFIX}%"],
        )
        cursor.execute("ANALYZE billing_wallet, billing_source, billing_meter, billing_runinterval")


def reset(now, wallets: list[int]) -> None:
    """Back to 60 s unbilled: what the last measurement charged is undone."""
    behind = now - timedelta(seconds=BEHIND)
    with connection.cursor() as cursor:
        remove_ledger_entries(wallets)
        cursor.execute(
            """UPDATE billing_runinterval i SET billed_until = %s FROM billing_meter m
               WHERE m.id = i.meter_id AND m.reference LIKE %s""",
            [behind, f"{PREFIX}%"],
        )
        cursor.execute("UPDATE billing_wallet SET balance = 0 WHERE id = ANY(%s)", [wallets])
        # Dead rows and index entries from the last run would otherwise slow the next one.
        cursor.execute("VACUUM ANALYZE billing_ledgerentry, billing_runinterval, billing_wallet")


def others_due(now) -> int:
    """Intervals not the bench's that a tick would charge too: they skew the figures."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT count(*) FROM billing_runinterval i
               JOIN billing_meter m ON m.id = i.meter_id
               LEFT JOIN billing_source s ON s.id = i.source_id
               WHERE m.reference NOT LIKE %s
                 AND i.billed_until < LEAST(%s, COALESCE(i.ended_at, %s),
                                            COALESCE(s.seen_until, %s))""",
            [f"{PREFIX}%", now, now, now],
        )
        return cursor.fetchone()[0]


def check(now, wallets: list[int]) -> Decimal:
    """What a correct tick left: returns the total charged."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT count(*), count(*) FILTER (
                       WHERE e.amount <> -round(m.rate * 60 / 3600, 6) OR e.seconds <> 60),
                       coalesce(sum(e.amount), 0)
                FROM billing_ledgerentry e JOIN billing_meter m ON m.id = e.meter_id
                WHERE e.wallet_id = ANY(%s)""",
            [wallets],
        )
        entries, wrong, total = cursor.fetchone()
        cursor.execute(
            """SELECT coalesce(sum(balance), 0), count(*) FILTER (WHERE balance <> (
                       SELECT coalesce(sum(e.amount), 0) FROM billing_ledgerentry e
                       WHERE e.wallet_id = w.id))
                FROM billing_wallet w WHERE w.id = ANY(%s)""",
            [wallets],
        )
        balances, unbalanced = cursor.fetchone()
        cursor.execute(
            """SELECT count(*) FROM billing_runinterval i JOIN billing_meter m
               ON m.id = i.meter_id WHERE m.reference LIKE %s AND i.billed_until <> %s""",
            [f"{PREFIX}%", now],
        )
        behind = cursor.fetchone()[0]
    assert entries == RESOURCES, f"{entries} entries for {RESOURCES} intervals"
    assert wrong == 0, f"{wrong} entries off the rounding rule"
    assert balances == total, f"balances {balances} != ledger {total}"
    assert unbalanced == 0, f"{unbalanced} wallets whose balance is not their entries' sum"
    assert behind == 0, f"{behind} intervals not billed up to now"
    return total


def run_ours(now, wallets: list[int]) -> tuple[float, Decimal]:
    started = time.perf_counter()
    result = billing_tick(now)
    elapsed = time.perf_counter() - started
    assert result.entries >= RESOURCES, result
    return elapsed, check(now, wallets)


def run_floor(now, wallets: list[int]) -> tuple[float, Decimal]:
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(FLOOR_SQL, {"now": now})
    elapsed = time.perf_counter() - started
    return elapsed, check(now, wallets)


def main() -> None:
    connection.ensure_connection()
    now = second_floor(timezone.now())
    started = time.perf_counter()
    print(f"billing tick: {RESOURCES} resources, {ORGS} wallets, {SOURCES} sources", flush=True)
    clean()
    started = phase("cleaned earlier runs", started)
    try:
        create(now)
        started = phase("created", started)
        other = others_due(now)
        if other:
            print(f"  warning: {other} other intervals in this database are due as well")
        wallets = bench_wallets(PREFIX)
        reset(now, wallets)
        # One untimed pass first: the first statement after the load pays for a cold cache.
        run_floor(now, wallets)
        reset(now, wallets)
        started = phase("warmed up", started)
        ticks, floors, totals = [], [], set()
        for run in range(RUNS):
            # Alternate which goes first, so a warm cache or a busy neighbour favours neither.
            order = (("tick", run_ours), ("floor", run_floor))
            for name, measure in order if run % 2 == 0 else reversed(order):
                elapsed, total = measure(now, wallets)
                (ticks if name == "tick" else floors).append(elapsed)
                totals.add(total)
                print(f"  run {run + 1} {name}: {elapsed:.2f} s (charged {total})", flush=True)
                reset(now, wallets)
        assert len(totals) == 1, f"the tick and the floor charged differently: {totals}"
    finally:
        started = time.perf_counter()
        clean()
        phase("removed the bench's rows", started)
    tick_s, floor_s = statistics.median(ticks), statistics.median(floors)
    print(f"tick median {tick_s:.2f} s, floor median {floor_s:.2f} s")
    print(
        json.dumps(
            {
                "bench": "billing_tick",
                "resources": RESOURCES,
                "tick_s": round(tick_s, 3),
                "floor_s": round(floor_s, 3),
                "ratio": round(tick_s / floor_s, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
