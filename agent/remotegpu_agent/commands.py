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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import __version__, host, tenants
from .containers import DockerDriver
from .gpu import GPUBackend
from .protocol import VERSION, EnvironmentRun, ProtocolError, parse_payload

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 100
LOG_TAIL_MAX_BYTES = 64 * 1024  # keeps a diagnostics result far below the message size limit
LOG_LINE_MAX_CHARS = 1000


@dataclass
class CommandContext:
    """What handlers may use: the agent's GPU back end, Docker and settings. ``progress``
    sends a ``command_progress`` for the command being run (set per command)."""

    backend: GPUBackend
    disk_path: str = "/"
    log_file: Path | None = None
    started_at: float = field(default_factory=time.time)
    docker: DockerDriver | None = None
    progress: Callable[[dict[str, Any]], None] | None = None

    @property
    def driver(self) -> DockerDriver:
        if self.docker is None:
            raise RuntimeError("this agent runs without Docker")
        return self.docker


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


def _environment_id(payload: dict[str, Any]) -> int:
    value = payload.get("environment_id")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ProtocolError("environment_id: expected a positive integer")
    return value


def image_pull(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    image = payload.get("image")
    if not isinstance(image, str) or not image:
        raise ProtocolError("image: expected a reference")
    auth = payload.get("registry_auth") or None
    return context.driver.image_pull(image, auth=auth, report=context.progress)


def environment_run(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    spec = parse_payload(EnvironmentRun, payload)
    return context.driver.run(spec, report=context.progress)


def environment_stop(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    return context.driver.stop(_environment_id(payload))


def environment_restart(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    return context.driver.restart(_environment_id(payload))


def environment_delete(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    return context.driver.delete(_environment_id(payload))


def environment_logs(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    tail = payload.get("tail", 100)
    if isinstance(tail, bool) or not isinstance(tail, int) or not 1 <= tail <= 10_000:
        raise ProtocolError("tail: expected 1 to 10000")
    return context.driver.logs(_environment_id(payload), tail)


def container_remove(payload: dict[str, Any], context: CommandContext) -> dict[str, Any]:
    container_id = payload.get("container_id")
    if not isinstance(container_id, str) or not container_id:
        raise ProtocolError("container_id: expected a container id")
    return context.driver.remove_container(container_id)


Handler = Callable[[dict[str, Any], CommandContext], dict[str, Any]]
HANDLERS: dict[str, Handler] = {
    "ping": ping,
    "collect_diagnostics": collect_diagnostics,
    "image_pull": image_pull,
    "environment_run": environment_run,
    "environment_stop": environment_stop,
    "environment_restart": environment_restart,
    "environment_delete": environment_delete,
    "environment_logs": environment_logs,
    "container_remove": container_remove,
    "tenant_create": tenants.tenant_create,
    "tenant_reclaim": tenants.tenant_reclaim,
}
# Kinds that may run again after the agent stopped in the middle of one: each finds and
# finishes what the interrupted try made (by label, by name) instead of making it twice.
RERUNNABLE = frozenset(
    {
        "image_pull",
        "environment_run",
        "environment_stop",
        "environment_delete",
        "environment_logs",
        "container_remove",
        "tenant_create",
        "tenant_reclaim",
    }
)
# Kinds that create, start, stop or remove containers: while one runs, the inventory waits
# (its result says what changed, and listing containers meanwhile slows dockerd's work down).
CONTAINER_CHANGING = frozenset(
    {
        "environment_run",
        "environment_stop",
        "environment_restart",
        "environment_delete",
        "container_remove",
        "tenant_reclaim",
    }
)
TIME_LIMITS: dict[str, float] = {
    "ping": 5.0,
    "collect_diagnostics": 30.0,
    "image_pull": 3600.0,
    "environment_run": 3600.0,  # may pull first; the command's deadline is the real bound
    "environment_stop": 60.0,
    "environment_restart": 60.0,
    "environment_delete": 60.0,
    "environment_logs": 15.0,
    "container_remove": 30.0,
    "tenant_create": 60.0,
    "tenant_reclaim": 600.0,  # removes every container and volume of the organisation here
}


async def execute(
    kind: str,
    payload: dict[str, Any],
    context: CommandContext,
    deadline: float = 0.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
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
    if progress is not None:
        context = replace(context, progress=progress)
    try:
        result = await asyncio.wait_for(asyncio.to_thread(handler, payload, context), limit)
    except asyncio.TimeoutError:
        return Outcome(ok=False, error=f"{kind} did not finish within {limit:.1f} s")
    except Exception as exc:
        logger.exception("command %s failed", kind)
        # The exception's class tells the server why (PullError: the image could not be had).
        return Outcome(
            ok=False,
            result={"exception": type(exc).__name__},
            error=f"{kind} failed: {type(exc).__name__}: {exc}",
        )
    return Outcome(ok=True, result=result)
