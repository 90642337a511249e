"""GPU back ends: where the agent's GPU figures come from.

Every back end answers ``inventory()`` (static facts, one ``GPUInfo`` per GPU) and ``sample()``
(figures now, one ``GPUSample`` per GPU) and has a ``name``. ``NvmlBackend`` reads real NVIDIA
GPUs through NVML; a host without a driver simply has no GPUs. ``FakeBackend`` invents GPUs for
machines that have none (tests, demos) and says so in every UUID.
"""

from __future__ import annotations

import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .protocol import GPUInfo, GPUSample

logger = logging.getLogger(__name__)

GIB = 1024**3
INIT_RETRY_SECONDS = 60.0


class GPUBackend:
    """The interface every back end implements."""

    name = ""

    def inventory(self) -> list[GPUInfo]:
        raise NotImplementedError

    def sample(self) -> list[GPUSample]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the back end holds (the NVML handle); safe to call twice."""


# NVML ---------------------------------------------------------------------------------------


def _text(value: str | bytes) -> str:
    """pynvml returns ``bytes`` in old releases and ``str`` in new ones."""
    return value.decode() if isinstance(value, bytes) else value


class NvmlBackend(GPUBackend):
    """Real NVIDIA GPUs through NVML (``pynvml``, from the nvidia-ml-py package).

    A host without the driver or ``libnvidia-ml`` has no GPUs: the failure is logged once and
    both lists are empty. A GPU that stops answering (fallen off the bus) is left out of the
    figures, so the inventory changes and the server hears about it.
    """

    name = "nvml"

    def __init__(self, retry_seconds: float = INIT_RETRY_SECONDS) -> None:
        import pynvml

        self._nvml = pynvml
        # pynvml raises this plain Exception when it wants a function the driver lacks.
        self._mismatch = getattr(pynvml, "NVMLLibraryMismatchError", pynvml.NVMLError)
        self._errors = (pynvml.NVMLError, self._mismatch)
        self._state = "new"  # new -> ready | unavailable (retried) -> closed
        self._retry_seconds = retry_seconds
        self._retry_at = 0.0
        self._problems: set[tuple[str, str]] = set()  # optional figures' failures, logged once
        self._process_calls: dict[str, list[str]] = {}  # per kind, the call names still tried

    def _ready(self) -> bool:
        """Initialise NVML, and again every ``retry_seconds`` while it fails: an agent that
        starts before the driver module loads, or during a driver upgrade, finds the GPUs
        once the driver is there, without a restart."""
        if self._state == "unavailable" and time.monotonic() >= self._retry_at:
            self._try_init(first=False)
        elif self._state == "new":
            self._try_init(first=True)
        return self._state == "ready"

    def _try_init(self, first: bool) -> None:
        try:
            self._nvml.nvmlInit()
        except (self._nvml.NVMLError, OSError) as exc:
            if first:
                logger.warning(
                    "NVML is not available (%s): reporting no GPUs, trying again every %d s",
                    exc,
                    self._retry_seconds,
                )
            self._state = "unavailable"
            self._retry_at = time.monotonic() + self._retry_seconds
        else:
            if not first:
                logger.warning("NVML is available now: reporting the GPUs")
            self._state = "ready"

    def _optional(self, default, call, *args):
        """A figure some GPUs or drivers cannot give: ECC on consumer cards, power on some
        boards, utilisation under MIG, process lists from a driver older than pynvml
        (FunctionNotFound), a field the agent may not read (NoPermission). The figure takes
        ``default`` (``None`` for a measurement: unknown) and the reason is logged once; a lost
        GPU still raises, so it drops out."""
        try:
            return call(*args)
        except self._nvml.NVMLError_GpuIsLost:
            raise
        except self._errors as exc:
            problem = (getattr(call, "__name__", repr(call)), str(exc))
            if problem not in self._problems:
                self._problems.add(problem)
                level = (
                    logging.DEBUG
                    if isinstance(exc, self._nvml.NVMLError_NotSupported)
                    else (logging.WARNING)
                )
                logger.log(level, "NVML %s failed (%s): reported as %r", *problem, default)
            return default

    def _handles(self) -> list[tuple[int, Any]]:
        if not self._ready():
            return []
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            logger.warning("NVML cannot count the GPUs: %s", exc)
            return []
        handles = []
        for index in range(count):
            try:
                handles.append((index, nvml.nvmlDeviceGetHandleByIndex(index)))
            except nvml.NVMLError as exc:
                logger.warning("GPU %d does not answer NVML: %s", index, exc)
        return handles

    def inventory(self) -> list[GPUInfo]:
        nvml = self._nvml
        handles = self._handles()
        if not handles:
            return []
        driver = _text(self._optional("", nvml.nvmlSystemGetDriverVersion))
        cuda = self._optional(0, nvml.nvmlSystemGetCudaDriverVersion)  # 12040 means 12.4
        gpus = []
        for index, handle in handles:
            try:
                capability = self._optional(None, nvml.nvmlDeviceGetCudaComputeCapability, handle)
                gpus.append(
                    GPUInfo(
                        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                        index=index,
                        name=_text(nvml.nvmlDeviceGetName(handle)),
                        memory_total=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                        driver_version=driver,
                        cuda_version=f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else "",
                        compute_capability="{}.{}".format(*capability) if capability else "",
                    )
                )
            except self._errors as exc:
                logger.warning("GPU %d left out of the inventory: %s", index, exc)
        return gpus

    def _sample_one(self, handle) -> GPUSample:
        """A figure the GPU or driver refuses is ``None`` (unknown), never an invented 0."""
        nvml = self._nvml
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = self._optional(None, nvml.nvmlDeviceGetUtilizationRates, handle)
        ecc = self._optional(
            None,
            nvml.nvmlDeviceGetTotalEccErrors,
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nvml.NVML_VOLATILE_ECC,
        )
        pids = self._running_pids(handle, "Compute") | self._running_pids(handle, "Graphics")
        temperature = self._optional(
            None, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
        )
        power_draw = self._optional(None, nvml.nvmlDeviceGetPowerUsage, handle)
        power_limit = self._optional(None, nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        return GPUSample(
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
            utilization=None if utilization is None else float(utilization.gpu),
            memory_used=int(memory.used),
            memory_total=int(memory.total),
            temperature=None if temperature is None else float(temperature),
            # NVML speaks milliwatts.
            power_draw=None if power_draw is None else power_draw / 1000,
            power_limit=None if power_limit is None else power_limit / 1000,
            ecc_errors=None if ecc is None else int(ecc),
            processes=len(pids),
        )

    def _running_pids(self, handle, kind: str) -> set[int]:
        """PIDs using the GPU. pynvml's plain call wants the newest NVML function (``_v3``,
        drivers from R510); an older driver lacks it, so ``_v2`` is tried next, and whichever
        answers is kept for later samples."""
        names = self._process_calls.setdefault(
            kind,
            [f"nvmlDeviceGet{kind}RunningProcesses", f"nvmlDeviceGet{kind}RunningProcesses_v2"],
        )
        while len(names) > 1:
            try:
                return {process.pid for process in getattr(self._nvml, names[0])(handle)}
            except (self._nvml.NVMLError_FunctionNotFound, self._mismatch):
                names.pop(0)  # this driver lacks it: the older call from now on
            except self._nvml.NVMLError_GpuIsLost:
                raise
            except self._nvml.NVMLError:
                break  # a list this GPU cannot give: taken below, where it is logged once
        processes = self._optional([], getattr(self._nvml, names[0]), handle)
        return {process.pid for process in processes}

    def sample(self) -> list[GPUSample]:
        samples = []
        for index, handle in self._handles():
            try:
                samples.append(self._sample_one(handle))
            except self._errors as exc:
                logger.warning("GPU %d left out of the sample: %s", index, exc)
        return samples

    def close(self) -> None:
        if self._state == "ready":
            self._nvml.nvmlShutdown()
        self._state = "closed"


# Fake ---------------------------------------------------------------------------------------

# What the control file may set, per GPU or for all of them.
STEERABLE = {
    "utilization": float,
    "temperature": float,
    "power_draw": float,
    "power_limit": float,
    "memory_used": int,
    "ecc_errors": int,
    "processes": int,
}
IDLE_POWER = 60.0
FAKE_NAMESPACE = uuid.UUID("8f2a4e0c-6d1b-4c39-9a57-2f0d4b6c1e55")


@dataclass
class _FakeGPU:
    utilization: float
    temperature: float
    power_draw: float
    memory_used: int


def _memory_of(model: str) -> int:
    """80 GiB for "NVIDIA A100-SXM4-80GB", 24 GiB for "... 24GB"; 80 GiB when the name is silent."""
    match = re.search(r"(\d+)\s*GB", model, re.IGNORECASE)
    return int(match.group(1)) * GIB if match else 80 * GIB


class FakeBackend(GPUBackend):
    """Invented GPUs that behave plausibly: a smooth random walk per GPU.

    UUIDs are ``GPU-fake-<uuid5(hostname, index)>``: stable across restarts, never mistaken for
    NVML's. Utilisation wanders between 0 and 100; temperature (30-80 °C) and power (idle to
    the limit) follow it; memory used wanders within the card. A JSON control file, re-read on
    every call, steers it::

        {"count": 4, "temperature": 92, "gpus": {"0": {"utilization": 100}}}

    ``count`` changes how many GPUs exist; a top-level figure applies to every GPU; ``gpus``
    sets figures per index. A missing file steers nothing; an unreadable one is logged.
    """

    name = "fake"

    def __init__(
        self,
        count: int = 2,
        model: str = "NVIDIA A100-SXM4-80GB",
        control_file: str | Path | None = None,
        hostname: str | None = None,
        power_limit: float = 400.0,
        seed: int | None = None,
    ) -> None:
        if count < 0:
            raise ValueError("count must be 0 or more")
        self.count = count
        self.model = model
        self.memory_total = _memory_of(model)
        self.power_limit = power_limit
        self.control_file = Path(control_file) if control_file else None
        self.hostname = hostname or socket.gethostname()
        self._random = random.Random(seed)
        self._gpus: dict[int, _FakeGPU] = {}
        self._lock = threading.Lock()  # the heartbeat and a command may sample at once
        self._last_control_problem = ""

    def uuid_of(self, index: int) -> str:
        return f"GPU-fake-{uuid.uuid5(FAKE_NAMESPACE, f'{self.hostname}/{index}')}"

    def _control(self) -> dict[str, Any]:
        if self.control_file is None:
            return {}
        try:
            control = json.loads(self.control_file.read_text())
            if not isinstance(control, dict):
                raise ValueError("expected a JSON object")
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            problem = f"fake GPU control file {self.control_file} ignored: {exc}"
            if problem != self._last_control_problem:
                logger.warning("%s", problem)
                self._last_control_problem = problem
            return {}
        self._last_control_problem = ""
        return control

    def _count(self, control: dict[str, Any]) -> int:
        count = control.get("count", self.count)
        return count if isinstance(count, int) and 0 <= count <= 64 else self.count

    def inventory(self) -> list[GPUInfo]:
        return [
            GPUInfo(
                uuid=self.uuid_of(index),
                index=index,
                name=self.model,
                memory_total=self.memory_total,
                driver_version="fake",
                cuda_version="12.4",
                compute_capability="8.0",
            )
            for index in range(self._count(self._control()))
        ]

    def _step(self, gpu: _FakeGPU) -> None:
        walk = self._random.gauss(0, 6) + (35 - gpu.utilization) * 0.05  # drifts back to ~35 %
        gpu.utilization = min(100.0, max(0.0, gpu.utilization + walk))
        target = 30 + gpu.utilization / 2
        gpu.temperature += (target - gpu.temperature) * 0.3 + self._random.gauss(0, 0.3)
        gpu.temperature = min(80.0, max(30.0, gpu.temperature))
        power = IDLE_POWER + (self.power_limit - IDLE_POWER) * gpu.utilization / 100
        gpu.power_draw = min(self.power_limit, max(0.0, power + self._random.gauss(0, 5)))
        memory = gpu.memory_used + int(self._random.gauss(0, 0.02) * self.memory_total)
        gpu.memory_used = min(self.memory_total, max(GIB // 2, memory))

    def _overrides(self, control: dict[str, Any], index: int) -> dict[str, Any]:
        per_gpu = control.get("gpus", {})
        mine = per_gpu.get(str(index), {}) if isinstance(per_gpu, dict) else {}
        values = {}
        for source in (control, mine if isinstance(mine, dict) else {}):
            for key, kind in STEERABLE.items():
                value = source.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values[key] = kind(value)
        return values

    def sample(self) -> list[GPUSample]:
        control = self._control()
        with self._lock:
            return [self._sample_one(index, control) for index in range(self._count(control))]

    def _sample_one(self, index: int, control: dict[str, Any]) -> GPUSample:
        gpu = self._gpus.get(index)
        if gpu is None:
            utilization = self._random.uniform(5, 60)
            gpu = self._gpus[index] = _FakeGPU(
                utilization=utilization,
                temperature=30 + utilization / 2,
                power_draw=IDLE_POWER,
                memory_used=int(self.memory_total * self._random.uniform(0.05, 0.5)),
            )
        self._step(gpu)
        overrides = self._overrides(control, index)
        # A steered figure becomes the walk's position, so letting go continues from it.
        for key in ("utilization", "temperature", "power_draw", "memory_used"):
            if key in overrides:
                setattr(gpu, key, overrides[key])
        return GPUSample(
            uuid=self.uuid_of(index),
            utilization=round(gpu.utilization, 1),
            memory_used=gpu.memory_used,
            memory_total=self.memory_total,
            temperature=round(gpu.temperature, 1),
            power_draw=round(gpu.power_draw, 1),
            power_limit=overrides.get("power_limit", self.power_limit),
            ecc_errors=overrides.get("ecc_errors", 0),
            processes=overrides.get("processes", 1 if gpu.utilization > 5 else 0),
        )


BACKENDS = ("nvml", "fake", "auto")


def get_backend(name: str, **options: Any) -> GPUBackend:
    """``nvml`` and ``auto`` read the real GPUs (none on a host without a driver); ``fake``
    invents them, with ``options`` passed to ``FakeBackend``."""
    if name in ("nvml", "auto"):
        return NvmlBackend()
    if name == "fake":
        return FakeBackend(**options)
    raise ValueError(f"unknown GPU back end {name!r}; choose one of {', '.join(BACKENDS)}")
