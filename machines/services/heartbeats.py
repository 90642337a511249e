"""Heartbeats are written in batches: one round of set-based SQL per flush, not a row per beat.

Each daphne process has one ``HeartbeatBatcher``. Consumers ``add`` parsed heartbeats (cheap,
in memory); a background task ``flush``es every ``FLUSH_INTERVAL`` seconds or at
``MAX_BATCH`` heartbeats: samples are inserted with ``ON CONFLICT DO NOTHING`` (a heartbeat
resent after a reconnect, or a restarted agent, is stored once, keyed by host and agent time),
and each host's and GPU's latest figures are updated with one ``UPDATE ... FROM (VALUES ...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection, transaction
from django.utils import timezone
from remotegpu_agent import protocol

from ..choices import HostStatus
from ..models import MAX_CLOCK_SKEW, Host

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5
MAX_BATCH = 2000


@dataclass
class PendingHeartbeat:
    host_id: int
    heartbeat: object  # remotegpu_agent.protocol.Heartbeat
    received_at: datetime


def heartbeat_time(heartbeat) -> datetime:
    """The agent's time of ``heartbeat``; ``ProtocolError`` when it is no time at all.

    Checked when the heartbeat arrives, so that one agent's impossible clock is refused to that
    agent instead of failing the batch that holds everybody's heartbeats.
    """
    try:
        return datetime.fromtimestamp(heartbeat.time, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise protocol.ProtocolError(f"heartbeat.time: {heartbeat.time!r} is not a time") from exc


# Figures no machine can report: (lowest, highest), None where there is no bound. A percentage
# above 100 or a negative amount is a broken agent, refused to it rather than drawn on a page.
HOST_FIGURE_RANGES = {
    "cpu_percent": (0, 100),
    "memory_used": (0, None),
    "memory_total": (0, None),
    "disk_used": (0, None),
    "disk_total": (0, None),
    "load1": (0, None),
}
GPU_FIGURE_RANGES = {
    "utilization": (0, 100),
    "memory_used": (0, None),
    "memory_total": (0, None),
    "power_draw": (0, None),
    "power_limit": (0, None),
    "ecc_errors": (0, None),
    "processes": (0, None),
}


def _check_ranges(where: str, figures, ranges: dict) -> None:
    for name, (lowest, highest) in ranges.items():
        value = getattr(figures, name)
        if value is None:  # a GPU figure the GPU cannot give
            continue
        if value < lowest or (highest is not None and value > highest):
            bounds = f"{lowest} to {highest}" if highest is not None else f"at least {lowest}"
            raise protocol.ProtocolError(f"{where}{name}: {value} is out of range ({bounds})")


def heartbeat_check(heartbeat) -> None:
    """Refuse (``ProtocolError``) a heartbeat whose time or figures are impossible.

    Checked when it arrives, so that one broken agent is told, and its figures never reach the
    batch that holds everybody's heartbeats or a page."""
    heartbeat_time(heartbeat)
    _check_ranges("heartbeat.", heartbeat, HOST_FIGURE_RANGES)
    for index, gpu in enumerate(heartbeat.gpus):
        _check_ranges(f"heartbeat.gpus[{index}].", gpu, GPU_FIGURE_RANGES)


def sample_time(heartbeat, received_at: datetime) -> tuple[datetime, float]:
    """When the sample was taken, and how far the agent's clock is behind the server's (in
    seconds, negative when ahead). The agent's time identifies a sample while its clock is
    near the server's; a clock off by more than ``MAX_CLOCK_SKEW`` (no NTP, a dead RTC) would
    put samples where rollups and retention never look, so the server's time stands in."""
    when = heartbeat_time(heartbeat)
    offset = (received_at - when).total_seconds()
    if abs(offset) > MAX_CLOCK_SKEW:
        when = received_at
    return when, round(offset, 1)


def heartbeats_store(pending: list[PendingHeartbeat]) -> int:
    """Write a batch; returns how many heartbeats it held. Synchronous (runs in a thread)."""
    if not pending:
        return 0
    with connection.cursor() as cursor:
        host_ids, gpu_ids = _existing_rows(cursor, sorted({item.host_id for item in pending}))
        rows = _sample_rows([item for item in pending if item.host_id in host_ids], gpu_ids)
        with transaction.atomic():
            _store(cursor, host_ids, *rows)
            seen = {host_id: (row[1], host_ids[host_id]) for host_id, row in rows[2].items()}
            for listener in _stored_listeners:
                listener(seen)
    return len(pending)


# Called with {host id: (when its latest heartbeat of the batch arrived, its heartbeat
# interval in seconds)}, inside the batch's transaction (billing bills what runs on a host no
# further than it was seen).
_stored_listeners: list[Callable[[dict[int, tuple[datetime, float]]], object]] = []


def heartbeats_stored_listener(function: Callable[[dict[int, tuple[datetime, float]]], object]):
    _stored_listeners.append(function)
    return function


def _existing_rows(
    cursor, host_ids: list[int]
) -> tuple[dict[int, float], dict[tuple[int, str], int]]:
    """The hosts of the batch that still exist (with their heartbeat interval in seconds: the
    agent's own when it said one), and their GPUs' ids by (host, UUID), in one query. A host
    deleted in the admin keeps its socket until the next resync; its heartbeats are skipped
    here instead of failing everybody's batch on a foreign key. (A host deleted during the
    flush itself can still fail that one batch, which is logged and dropped; locking the rows
    for that rare case would take them in the reverse order of Django's cascading delete, and
    could deadlock instead.)"""
    cursor.execute(
        "SELECT h.id, coalesce(h.agent_heartbeat_interval, h.heartbeat_interval), g.id, g.uuid "
        "FROM machines_host h "
        "LEFT JOIN machines_gpu g ON g.host_id = h.id WHERE h.id = ANY(%s)",
        [host_ids],
    )
    existing, gpu_ids = {}, {}
    for host_id, interval, gpu_id, uuid in cursor.fetchall():
        existing[host_id] = interval
        if gpu_id is not None:
            gpu_ids[(host_id, uuid)] = gpu_id
    return existing, gpu_ids


def _sample_rows(pending: list[PendingHeartbeat], gpu_ids: dict[tuple[int, str], int]):
    host_samples, gpu_samples = [], []
    latest_host: dict[int, tuple] = {}
    latest_gpu: dict[int, tuple] = {}
    for item in pending:
        beat = item.heartbeat
        when, clock_offset = sample_time(beat, item.received_at)
        host_samples.append(
            (
                item.host_id,
                when,
                beat.cpu_percent,
                beat.memory_used,
                beat.memory_total,
                beat.disk_used,
                beat.disk_total,
                beat.load1,
            )
        )
        latest_host[item.host_id] = (
            item.host_id,
            item.received_at,
            beat.cpu_percent,
            beat.memory_used,
            beat.disk_used,
            clock_offset,
        )
        for sample in beat.gpus:
            gpu_id = gpu_ids.get((item.host_id, sample.uuid))
            if gpu_id is None:
                continue  # not in the inventory yet; the next inventory adds it
            gpu_samples.append(
                (
                    gpu_id,
                    when,
                    sample.utilization,
                    sample.memory_used,
                    sample.temperature,
                    sample.power_draw,
                    sample.ecc_errors,
                )
            )
            latest_gpu[gpu_id] = (
                gpu_id,
                sample.utilization,
                sample.memory_used,
                sample.temperature,
                sample.power_draw,
                sample.power_limit,
                sample.ecc_errors,
            )
    return host_samples, gpu_samples, latest_host, latest_gpu


def _store(cursor, host_ids, host_samples, gpu_samples, latest_host, latest_gpu) -> None:
    """Samples inserted, latest figures updated: four set-based statements for the batch."""
    _insert_unnest(
        cursor,
        "machines_hostsample",
        [
            "host_id",
            "time",
            "cpu_percent",
            "memory_used",
            "memory_total",
            "disk_used",
            "disk_total",
            "load1",
        ],
        ["bigint", "timestamptz", "float8", "bigint", "bigint", "bigint", "bigint", "float8"],
        host_samples,
    )
    _insert_unnest(
        cursor,
        "machines_gpusample",
        [
            "gpu_id",
            "time",
            "utilization",
            "memory_used",
            "temperature",
            "power_draw",
            "ecc_errors",
        ],
        ["bigint", "timestamptz", "float8", "bigint", "float8", "float8", "bigint"],
        gpu_samples,
    )
    _update_from_values(
        cursor,
        "machines_host",
        ["id", "last_seen_at", "cpu_percent", "memory_used", "disk_used", "clock_offset"],
        ["bigint", "timestamptz", "float8", "bigint", "bigint", "float8"],
        list(latest_host.values()),
    )
    _update_from_values(
        cursor,
        "machines_gpu",
        [
            "id",
            "utilization",
            "memory_used",
            "temperature",
            "power_draw",
            "power_limit",
            "ecc_errors",
        ],
        ["bigint", "float8", "bigint", "float8", "float8", "float8", "bigint"],
        list(latest_gpu.values()),
    )
    # Offline detection may have fired while the socket stayed up (a slow flush, a database
    # hiccup): a heartbeat proves the host is there. Operator states are left alone.
    Host.objects.filter(pk__in=host_ids, status=HostStatus.OFFLINE).update(
        status=HostStatus.ONLINE, status_reason="", status_changed_at=timezone.now(), connected=True
    )


def _insert_unnest(cursor, table, columns, types, rows) -> None:
    """``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING``: one statement and one
    parameter per column for any number of rows; a sample already stored is skipped."""
    if not rows:
        return
    arrays = ", ".join(f"%s::{kind}[]" for kind in types)
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608  (our names, not input)
        f"SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
    )
    cursor.execute(sql, [list(column) for column in zip(*rows, strict=True)])


def _update_from_values(cursor, table, columns, types, rows) -> None:
    """``UPDATE table SET c = v.c ... FROM unnest(arrays) v WHERE table.id = v.id``: one
    statement for any number of rows. Table and column names are ours, never input."""
    if not rows:
        return
    arrays = ", ".join(f"%s::{kind}[]" for kind in types)
    assignments = ", ".join(f"{column} = v.{column}" for column in columns[1:])
    sql = (
        f"UPDATE {table} SET {assignments} "  # noqa: S608
        f"FROM unnest({arrays}) AS v({', '.join(columns)}) WHERE {table}.id = v.id"
    )
    cursor.execute(sql, [list(column) for column in zip(*rows, strict=True)])


class HeartbeatBatcher:
    """Collects heartbeats in memory and writes them in batches from one background task."""

    def __init__(self, store=heartbeats_store):
        self._pending: list[PendingHeartbeat] = []
        self._store = store
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None
        self._writing: asyncio.Future | None = None

    def add(self, host_id: int, heartbeat, received_at: datetime) -> None:
        self._pending.append(PendingHeartbeat(host_id, heartbeat, received_at))
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run())
        if len(self._pending) >= MAX_BATCH and self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        from channels.db import database_sync_to_async

        store = database_sync_to_async(self._store)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), FLUSH_INTERVAL)
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._writing = asyncio.ensure_future(store(batch))
            try:
                await self._writing
            except Exception:
                # A failed batch is logged and dropped: heartbeats are a stream, the next one
                # carries the same figures, and holding them would grow memory without bound.
                logger.exception("could not store %d heartbeats", len(batch))

    async def flush(self) -> None:
        """Write whatever is pending now, after the batch being written, if any (tests,
        shutdown): once it returns, every heartbeat added before is in the database."""
        from channels.db import database_sync_to_async

        writing = self._writing
        if (
            writing is not None
            and not writing.done()
            and writing.get_loop() is asyncio.get_running_loop()
        ):
            with contextlib.suppress(Exception):  # the background task logs its failures
                await asyncio.shield(writing)
        batch, self._pending = self._pending, []
        if batch:
            await database_sync_to_async(self._store)(batch)


batcher = HeartbeatBatcher()
