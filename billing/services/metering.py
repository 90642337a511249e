"""Metering: what runs is told to billing as meters and run intervals, and a tick every
minute charges every interval for the whole seconds since it was last billed.

Rules (docs/user-guide/billing.md says them to customers):

- Times are whole seconds: an interval's start is rounded up, its end and the tick's "now"
  down, so billed time never exceeds the time something ran.
- An interval on a source (a host) is billed no further than the source was last seen
  running. A source silent for longer than its allowed gap was offline: its open intervals
  end where it was last seen and start again where it is seen anew, so nothing is billed
  while a host is offline.
- Each charge is ``price per hour × seconds / 3600``, rounded half up to a millionth of the
  currency unit. One ledger entry per interval per tick, keyed ``usage:<interval>:<from>``
  under a unique index: a re-run tick charges nothing twice.
- The tick is one SQL statement: interval, entry and balance change commit together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from accounts.models import Organization

from ..choices import EntryKind
from ..models import Meter, RunInterval, Source
from .prices import TICK_LOCK, Quantities, rate_for
from .wallets import wallet_get


def second_floor(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def second_ceil(moment: datetime) -> datetime:
    if moment.microsecond:
        return moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment


def meter_open(
    *,
    reference: str,
    organization: Organization,
    label: str,
    quantities: Quantities,
    label_args: dict | None = None,
    at: datetime | None = None,
    source: str = "",
) -> Meter:
    """Start billing ``reference`` from ``at``: its meter (made or brought up to date with
    ``quantities`` and today's price) gets an open interval unless it has one. ``label``: a
    ``gettext_noop`` id with its ``label_args``, or a name."""
    at = second_ceil(at or timezone.now())
    rate = rate_for(quantities)
    wallet = wallet_get(organization)
    fields = {
        "organization": organization,
        "wallet": wallet,
        "kind": quantities.kind,
        "label": label[:200],
        "label_args": label_args or {},
        "region": quantities.region,
        "gpu_model": quantities.gpu_model,
        "gpu_count": quantities.gpu_count,
        "vcpu": quantities.vcpu,
        "memory_gib": quantities.memory_gib,
        "storage_gib": quantities.storage_gib,
        "rate": rate,
    }
    with transaction.atomic():
        meter, created = Meter.objects.select_for_update().get_or_create(
            reference=reference, defaults=fields
        )
        if not created:
            for name, value in fields.items():
                setattr(meter, name, value)
            meter.save()
        if not meter.intervals.filter(ended_at__isnull=True).exists():
            # Intervals never overlap: a run told to start before the last one ended (a
            # stale start time) starts where that one ended.
            last_end = meter.intervals.aggregate(end=Max("ended_at"))["end"]
            if last_end is not None and at < last_end:
                at = last_end
            source_row = None
            if source:
                # The agent reporting the run is a sighting of its host.
                source_row, _ = Source.objects.get_or_create(
                    key=source, defaults={"seen_until": at}
                )
            RunInterval.objects.create(
                meter=meter, source=source_row, started_at=at, billed_until=at, rate=rate
            )
    return meter


def meter_close(reference: str, at: datetime | None = None) -> int:
    """Stop billing ``reference`` at ``at``; the next tick charges the rest of its interval.
    An interval never ends before what was already billed of it."""
    at = second_floor(at or timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE billing_runinterval i
               SET ended_at = GREATEST(%s, i.billed_until)
               FROM billing_meter m
               WHERE m.id = i.meter_id AND m.reference = %s AND i.ended_at IS NULL""",
            [at, reference],
        )
        return cursor.rowcount


def meter_is_open(reference: str) -> bool:
    return RunInterval.objects.filter(meter__reference=reference, ended_at__isnull=True).exists()


def sources_seen(seen: dict[str, tuple[datetime, float]]) -> int:
    """Sources (hosts) reported running: ``{key: (when, allowed gap in seconds)}``. One that
    was silent for more than its gap was offline meanwhile: its open intervals end where it
    was last seen and open again now. Returns how many intervals were split so."""
    if not seen:
        return 0
    keys = sorted(seen)
    times = [second_floor(seen[key][0]) for key in keys]
    gaps = [float(seen[key][1]) for key in keys]
    split = 0
    # One statement in the common case: the upsert, and (from the snapshot before it) the
    # sources whose silence was long enough to be an outage.
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute(
            """WITH v AS (SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::float8[])
                          AS v(key, at, gap)),
               gapped AS (SELECT s.id, s.seen_until, v.at FROM billing_source s
                          JOIN v ON v.key = s.key
                          WHERE v.at - s.seen_until > v.gap * interval '1 second'),
               upserted AS (INSERT INTO billing_source (key, seen_until)
                            SELECT key, at FROM v
                            ON CONFLICT (key) DO UPDATE SET seen_until =
                                GREATEST(billing_source.seen_until, excluded.seen_until))
               SELECT * FROM gapped ORDER BY id""",
            [keys, times, gaps],
        )
        for source_id, last_seen, now_seen in cursor.fetchall():
            # What stopped during the silence ran, as far as anyone knows, until it began.
            cursor.execute(
                """UPDATE billing_runinterval SET ended_at = GREATEST(%s, billed_until)
                   WHERE source_id = %s AND ended_at > %s""",
                [last_seen, source_id, last_seen],
            )
            cursor.execute(
                """UPDATE billing_runinterval SET ended_at = GREATEST(%s, billed_until)
                   WHERE source_id = %s AND ended_at IS NULL AND started_at < %s
                   RETURNING meter_id, rate""",
                [last_seen, source_id, now_seen],
            )
            resumed = cursor.fetchall()
            RunInterval.objects.bulk_create(
                RunInterval(
                    meter_id=meter_id,
                    source_id=source_id,
                    started_at=now_seen,
                    billed_until=now_seen,
                    rate=rate,
                )
                for meter_id, rate in resumed
            )
            split += len(resumed)
    return split


# The whole tick: one statement. ``due`` finds what each interval owes up to ``now``; the
# update moves billed_until (re-reading the row, so an end set meanwhile is respected); the
# insert writes one entry per interval, skipping keys already there; the last update moves
# each wallet by the sum of its new entries.
TICK_SQL = f"""
WITH due AS (
    SELECT i.id, i.billed_until AS f,
           LEAST(%(now)s, COALESCE(i.ended_at, %(now)s), COALESCE(s.seen_until, %(now)s)) AS t
    FROM billing_runinterval i
    LEFT JOIN billing_source s ON s.id = i.source_id
    WHERE i.billed_until < LEAST(%(now)s, COALESCE(i.ended_at, %(now)s),
                                 COALESCE(s.seen_until, %(now)s))
), billed AS (
    UPDATE billing_runinterval i
    SET billed_until = LEAST(due.t, COALESCE(i.ended_at, due.t))
    FROM due
    WHERE i.id = due.id AND i.billed_until = due.f
      AND LEAST(due.t, COALESCE(i.ended_at, due.t)) > due.f
    RETURNING i.id, i.meter_id, i.rate, due.f, i.billed_until AS t
), charged AS (
    INSERT INTO billing_ledgerentry
        (wallet_id, kind, amount, currency, idempotency_key, description, description_args,
         created_at, meter_id, interval_id, period_start, period_end, seconds, rate)
    SELECT m.wallet_id, '{EntryKind.USAGE}',
           -round(b.rate * extract(epoch FROM b.t - b.f)::bigint / 3600, 6),
           w.currency, 'usage:' || b.id || ':' || extract(epoch FROM b.f)::bigint,
           m.label, m.label_args, %(now)s, m.id, b.id, b.f, b.t,
           extract(epoch FROM b.t - b.f)::bigint, b.rate
    FROM billed b
    JOIN billing_meter m ON m.id = b.meter_id
    JOIN billing_wallet w ON w.id = m.wallet_id
    WHERE b.rate > 0
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING wallet_id, amount
), moved AS (
    UPDATE billing_wallet w
    SET balance = w.balance + c.total, updated_at = %(now)s
    FROM (SELECT wallet_id, sum(amount) AS total FROM charged GROUP BY wallet_id) c
    WHERE w.id = c.wallet_id
    RETURNING w.id
)
SELECT (SELECT count(*) FROM billed), (SELECT count(*) FROM charged),
       (SELECT coalesce(sum(amount), 0) FROM charged), (SELECT count(*) FROM moved)
"""


@dataclass(frozen=True)
class TickResult:
    now: datetime
    intervals: int
    entries: int
    amount: object
    wallets: int


def billing_tick(now: datetime | None = None, *, wait: bool = True) -> TickResult | None:
    """Charge every running (and newly ended) interval up to ``now``, in one transaction.
    Ticks take turns on an advisory lock; with ``wait=False`` a tick that finds another
    running returns None (that one charges the same seconds)."""
    now = second_floor(now or timezone.now())
    with transaction.atomic(), connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [TICK_LOCK])
        else:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [TICK_LOCK])
            if not cursor.fetchone()[0]:
                return None
        cursor.execute(TICK_SQL, {"now": now})
        intervals, entries, amount, wallets = cursor.fetchone()
    return TickResult(now=now, intervals=intervals, entries=entries, amount=amount, wallets=wallets)


def billed_seconds(reference: str) -> int:
    """Seconds charged so far for ``reference``, over all its intervals."""
    total = 0
    for started, billed in RunInterval.objects.filter(meter__reference=reference).values_list(
        "started_at", "billed_until"
    ):
        total += math.floor((billed - started).total_seconds())
    return total
