"""What the agent does when the server sends a ``command``, by kind.

A handler is a plain function ``(payload, context) -> dict`` run in a worker thread, so a slow
one never stops the heartbeat. ``execute`` bounds it by its kind's time limit and the command's
deadline and turns any failure into a failed ``Outcome``: a command never crashes the agent.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, host
from .gpu import GPUBackend
from .protocol import VERSION

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 100
LOG_TAIL_MAX_BYTES = 64 * 1024  # keeps a diagnostics result far below the message size limit
LOG_LINE_MAX_CHARS = 1000


@dataclass
class CommandContext:
    """What handlers may use: the agent's GPU back end and settings."""

    backend: GPUBackend
    disk_path: str = "/"
    log_file: Path | None = None
    started_at: float = field(default_factory=time.time)


@dataclass
class Outcome:
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def ping(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    return {"pong": True, "time": time.time()}


def log_tail(path: Path | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of ``path`` (each cut to a sane length); [] without a file."""
    if path is None:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - LOG_TAIL_MAX_BYTES))
            data = handle.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    if len(data) == LOG_TAIL_MAX_BYTES and size > LOG_TAIL_MAX_BYTES:
        text = text[1:]  # the first line was cut in the middle
    return [line[:LOG_LINE_MAX_CHARS] for line in text[-lines:]]


def collect_diagnostics(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    now = time.time()
    return {
        "agent_version": __version__,
        "protocol_version": VERSION,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "agent_uptime_seconds": round(now - context.started_at, 1),
        "host_uptime_seconds": round(now - host.boot_time(), 1),
        "facts": asdict(host.host_facts(context.disk_path, context.backend.name)),
        "sample": asdict(host.host_sample(context.disk_path)),
        "gpu_backend": context.backend.name,
        "gpus": [asdict(gpu) for gpu in context.backend.inventory()],
        "gpu_samples": [asdict(sample) for sample in context.backend.sample()],
        "log_file": str(context.log_file or ""),
        "log_tail": log_tail(context.log_file),
    }


Handler = Callable[[dict[str, Any], CommandContext], dict[str, Any]]
HANDLERS: dict[str, Handler] = {"ping": ping, "collect_diagnostics": collect_diagnostics}
TIME_LIMITS: dict[str, float] = {"ping": 5.0, "collect_diagnostics": 30.0}


async def execute(
    kind: str, payload: dict[str, Any], context: CommandContext, deadline: float = 0.0
) -> Outcome:
    """Run one command in a worker thread, within its time limit and deadline (Unix seconds,
    0 for none). A handler that overruns is reported failed; its thread is left to finish."""
    handler = HANDLERS.get(kind)
    if handler is None:
        return Outcome(ok=False, error=f"unknown command kind {kind!r}")
    limit = TIME_LIMITS[kind]
    if deadline:
        remaining = deadline - time.time()
        if remaining <= 0:
            return Outcome(ok=False, error="the deadline passed before the agent could run it")
        limit = min(limit, remaining)
    try:
        result = await asyncio.wait_for(asyncio.to_thread(handler, payload, context), limit)
    except asyncio.TimeoutError:
        return Outcome(ok=False, error=f"{kind} did not finish within {limit:.1f} s")
    except Exception as exc:
        logger.exception("command %s failed", kind)
        return Outcome(ok=False, error=f"{kind} failed: {type(exc).__name__}: {exc}")
    return Outcome(ok=True, result=result)
