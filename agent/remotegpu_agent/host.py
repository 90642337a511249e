"""Facts and figures about the machine the agent runs on (everything except its GPUs)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from . import __version__
from .protocol import HostFacts

DOCKER_TIMEOUT = 3.0
DOCKER_CACHE_SECONDS = 300.0

# psutil measures CPU use between two calls; the first one only starts the clock.
psutil.cpu_percent(interval=None)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def os_name(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "PRETTY_NAME":
                return value.strip().strip('"')
    except OSError:
        pass
    return platform.platform()


_docker_cache: tuple[float, str] | None = None


def docker_version() -> str:
    """The Docker Engine's version, or "" without a reachable daemon. Cached for five minutes:
    the inventory is rebuilt every heartbeat and the daemon rarely changes version."""
    global _docker_cache
    now = time.monotonic()
    if _docker_cache is not None and now - _docker_cache[0] < DOCKER_CACHE_SECONDS:
        return _docker_cache[1]
    try:
        completed = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=DOCKER_TIMEOUT,
            check=False,
        )
        version = completed.stdout.strip() if completed.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    _docker_cache = (now, version)
    return version


def host_facts(disk_path: str = "/", gpu_backend: str = "") -> HostFacts:
    return HostFacts(
        hostname=socket.gethostname(),
        cpu_model=cpu_model(),
        cpu_cores=psutil.cpu_count(logical=True) or 0,
        memory_total=psutil.virtual_memory().total,
        disk_total=psutil.disk_usage(disk_path).total,
        os=os_name(),
        kernel=platform.release(),
        docker_version=docker_version(),
        agent_version=__version__,
        gpu_backend=gpu_backend,
    )


@dataclass
class HostSample:
    cpu_percent: float
    memory_used: int
    memory_total: int
    disk_used: int
    disk_total: int
    load1: float


def host_sample(disk_path: str = "/") -> HostSample:
    """The host's figures now. CPU use is averaged since the previous call."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(disk_path)
    return HostSample(
        cpu_percent=psutil.cpu_percent(interval=None),
        # "available" counts reclaimable cache as free, as people expect.
        memory_used=memory.total - memory.available,
        memory_total=memory.total,
        disk_used=disk.used,
        disk_total=disk.total,
        load1=os.getloadavg()[0],
    )


def boot_time() -> float:
    return psutil.boot_time()
