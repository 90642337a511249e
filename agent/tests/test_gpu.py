"""GPU back ends: the fake one's behaviour and steering, NVML on this host and on a simulated
library (the unit conversions a GPU-less CI machine could otherwise never check)."""

from __future__ import annotations

import itertools
import json
import logging
import time
from types import SimpleNamespace

import pynvml
import pytest

from remotegpu_agent import protocol
from remotegpu_agent.gpu import GIB, FakeBackend, NvmlBackend, get_backend

GPU_LOGGER = "remotegpu_agent.gpu"


def test_fake_gpus_are_stable_plausible_and_clearly_fake():
    backend = FakeBackend(count=3, hostname="node-1", seed=7)
    inventory = backend.inventory()
    assert [gpu.index for gpu in inventory] == [0, 1, 2]
    assert all(gpu.uuid.startswith("GPU-fake-") for gpu in inventory)
    assert len({gpu.uuid for gpu in inventory}) == 3
    assert {gpu.name for gpu in inventory} == {"NVIDIA A100-SXM4-80GB"}
    assert {gpu.memory_total for gpu in inventory} == {80 * GIB}
    # Derived from hostname and index: the same after a restart, different on another host.
    assert [gpu.uuid for gpu in FakeBackend(count=3, hostname="node-1").inventory()] == [
        gpu.uuid for gpu in inventory
    ]
    assert FakeBackend(count=1, hostname="node-2").inventory()[0].uuid != inventory[0].uuid
    assert backend.name == "fake"


def test_fake_figures_stay_in_range_and_change_over_time():
    backend = FakeBackend(count=2, seed=3)
    series = [backend.sample() for _ in range(300)]
    for samples in series:
        assert len(samples) == 2
        for sample in samples:
            assert 0 <= sample.utilization <= 100
            assert 30 <= sample.temperature <= 80
            assert 0 <= sample.power_draw <= sample.power_limit == 400
            assert 0 < sample.memory_used <= sample.memory_total == 80 * GIB
    utilizations = [samples[0].utilization for samples in series]
    temperatures = [samples[0].temperature for samples in series]
    assert len(set(utilizations)) > 50
    assert len(set(temperatures)) > 20
    assert max(utilizations) - min(utilizations) > 20
    # A walk, not noise: consecutive samples are close.
    assert max(abs(a - b) for a, b in itertools.pairwise(utilizations)) < 40
    # Temperature and power follow utilisation.
    hot = [s[0] for s in series if s[0].utilization > 60]
    cool = [s[0] for s in series if s[0].utilization < 20]
    if hot and cool:
        assert min(s.power_draw for s in hot) > max(s.power_draw for s in cool)


def test_fake_model_sets_name_and_memory():
    gpu = FakeBackend(count=1, model="NVIDIA GeForce RTX 4090 24GB").inventory()[0]
    assert gpu.name == "NVIDIA GeForce RTX 4090 24GB"
    assert gpu.memory_total == 24 * GIB


def test_control_file_steers_all_gpus_one_gpu_and_the_count(tmp_path):
    control = tmp_path / "control.json"
    backend = FakeBackend(count=2, control_file=control, seed=1)
    assert len(backend.sample()) == 2  # no file yet: nothing steered, no error

    control.write_text(json.dumps({"temperature": 92}))
    assert [sample.temperature for sample in backend.sample()] == [92.0, 92.0]

    control.write_text(
        json.dumps({"temperature": 50, "gpus": {"1": {"temperature": 92, "utilization": 100}}})
    )
    first, second = backend.sample()
    assert first.temperature == 50
    assert second.temperature == 92
    assert second.utilization == 100

    control.write_text(json.dumps({"count": 4, "gpus": {"3": {"ecc_errors": 2}}}))
    assert len(backend.inventory()) == 4
    samples = backend.sample()
    assert len(samples) == 4
    assert [sample.ecc_errors for sample in samples] == [0, 0, 0, 2]
    assert samples[3].uuid == backend.inventory()[3].uuid

    control.unlink()
    assert len(backend.inventory()) == 2


def test_unreadable_control_file_is_logged_once_and_ignored(tmp_path, caplog):
    control = tmp_path / "control.json"
    control.write_text("{not json")
    backend = FakeBackend(count=1, control_file=control)
    with caplog.at_level(logging.WARNING, logger=GPU_LOGGER):
        for _ in range(3):
            assert len(backend.sample()) == 1
    assert len([r for r in caplog.records if "control file" in r.getMessage()]) == 1


def _nvml_loads() -> bool:
    try:
        pynvml.nvmlInit()
    except (pynvml.NVMLError, OSError):
        return False
    pynvml.nvmlShutdown()
    return True


def test_nvml_on_this_host(caplog):
    """Without a driver the host simply has no GPUs (logged once); with one, real GPUs."""
    backend = get_backend("auto")
    assert isinstance(backend, NvmlBackend)
    assert backend.name == "nvml"
    with caplog.at_level(logging.WARNING, logger=GPU_LOGGER):
        inventory, samples = backend.inventory(), backend.sample()
        backend.sample()
    backend.close()
    if _nvml_loads():
        assert inventory
        assert all(not gpu.uuid.startswith("GPU-fake-") for gpu in inventory)
        assert [s.uuid for s in samples] == [gpu.uuid for gpu in inventory]
        assert all(s.memory_total > 0 and 0 <= s.utilization <= 100 for s in samples)
    else:
        assert inventory == []
        assert samples == []
        assert len([r for r in caplog.records if "NVML" in r.getMessage()]) == 1


def test_nvml_figures_are_converted(monkeypatch):
    """A simulated H100 through the real NvmlBackend code: mW -> W, CUDA 12040 -> "12.4",
    ECC not supported -> None (unknown), processes counted once across compute and graphics."""

    memory = SimpleNamespace(total=80 * GIB, used=3 * GIB, free=77 * GIB)
    _simulated_gpu(
        monkeypatch,
        nvmlDeviceGetUUID=lambda handle: "GPU-5a1c2d3e-0000-1111-2222-333344445555",
        nvmlDeviceGetName=lambda handle: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda handle: memory,
        nvmlDeviceGetUtilizationRates=lambda handle: SimpleNamespace(gpu=55, memory=20),
        nvmlDeviceGetTemperature=lambda handle, sensor: 61,
        nvmlDeviceGetPowerUsage=lambda handle: 312_500,
        nvmlDeviceGetEnforcedPowerLimit=lambda handle: 700_000,
        nvmlDeviceGetTotalEccErrors=_failing(pynvml.NVML_ERROR_NOT_SUPPORTED),
        nvmlDeviceGetComputeRunningProcesses=lambda h: [
            SimpleNamespace(pid=1),
            SimpleNamespace(pid=2),
        ],
        nvmlDeviceGetGraphicsRunningProcesses=lambda h: [SimpleNamespace(pid=2)],
        nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlSystemGetCudaDriverVersion=lambda: 12040,
        nvmlDeviceGetCudaComputeCapability=lambda handle: (9, 0),
    )
    backend = NvmlBackend()
    (gpu,) = backend.inventory()
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.index == 0
    assert gpu.memory_total == 80 * GIB
    assert (gpu.driver_version, gpu.cuda_version, gpu.compute_capability) == (
        "550.54.15",
        "12.4",
        "9.0",
    )
    (sample,) = backend.sample()
    assert sample.uuid == gpu.uuid
    assert (sample.utilization, sample.temperature) == (55.0, 61.0)
    assert (sample.power_draw, sample.power_limit) == (312.5, 700.0)
    assert (sample.memory_used, sample.memory_total) == (3 * GIB, 80 * GIB)
    assert (sample.ecc_errors, sample.processes) == (None, 2)

    # A GPU that stops answering drops out of the figures instead of breaking the heartbeat.
    monkeypatch.setattr(
        pynvml,
        "nvmlDeviceGetMemoryInfo",
        lambda handle: (_ for _ in ()).throw(pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)),
    )
    assert backend.sample() == []
    assert backend.inventory() == []


def _simulated_gpu(monkeypatch, **overrides):
    """One simulated A100 behind pynvml's functions, with ``overrides`` by function name."""
    memory = SimpleNamespace(total=80 * GIB, used=GIB, free=79 * GIB)
    fake = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda index: f"handle-{index}",
        "nvmlDeviceGetUUID": lambda handle: "GPU-11111111-2222-3333-4444-555555555555",
        "nvmlDeviceGetName": lambda handle: "NVIDIA A100-SXM4-80GB",
        "nvmlDeviceGetMemoryInfo": lambda handle: memory,
        "nvmlDeviceGetUtilizationRates": lambda handle: SimpleNamespace(gpu=5, memory=1),
        "nvmlDeviceGetTemperature": lambda handle, sensor: 40,
        "nvmlDeviceGetPowerUsage": lambda handle: 100_000,
        "nvmlDeviceGetEnforcedPowerLimit": lambda handle: 400_000,
        "nvmlDeviceGetTotalEccErrors": lambda handle, kind, counter: 0,
        "nvmlDeviceGetGraphicsRunningProcesses": lambda handle: [],
        "nvmlSystemGetDriverVersion": lambda: "470.82.01",
        "nvmlSystemGetCudaDriverVersion": lambda: 11040,
        "nvmlDeviceGetCudaComputeCapability": lambda handle: (8, 0),
    } | overrides
    for name, function in fake.items():
        function.__name__ = name  # as pynvml's own functions are named in the log
        monkeypatch.setattr(pynvml, name, function)


def _failing(code):
    def call(*args):
        raise pynvml.NVMLError(code)

    return call


def test_nvml_figures_a_driver_cannot_give_do_not_drop_the_gpu(monkeypatch, caplog):
    """Real drivers refuse single figures in more ways than NotSupported: a process list from a
    driver older than pynvml (FunctionNotFound), power behind permissions (NoPermission). The
    GPU stays in the figures with that one figure unknown (None), and each reason is logged
    once, not every heartbeat."""
    _simulated_gpu(
        monkeypatch,
        nvmlDeviceGetName=lambda handle: "NVIDIA H200",
        nvmlDeviceGetUtilizationRates=lambda handle: SimpleNamespace(gpu=7, memory=1),
        nvmlDeviceGetTemperature=lambda handle, sensor: 33,
        nvmlDeviceGetPowerUsage=_failing(pynvml.NVML_ERROR_NO_PERMISSION),
        nvmlDeviceGetEnforcedPowerLimit=lambda handle: 700_000,
        nvmlDeviceGetComputeRunningProcesses=_failing(pynvml.NVML_ERROR_NOT_SUPPORTED),
        nvmlDeviceGetGraphicsRunningProcesses=_failing(pynvml.NVML_ERROR_NO_PERMISSION),
        nvmlSystemGetDriverVersion=_failing(pynvml.NVML_ERROR_UNKNOWN),
        nvmlSystemGetCudaDriverVersion=lambda: 12080,
        nvmlDeviceGetCudaComputeCapability=lambda handle: (9, 0),
    )
    backend = NvmlBackend()
    with caplog.at_level(logging.WARNING, logger=GPU_LOGGER):
        (gpu,) = backend.inventory()
        samples = [backend.sample() for _ in range(3)]
    assert (gpu.name, gpu.driver_version, gpu.cuda_version) == ("NVIDIA H200", "", "12.8")
    for (sample,) in samples:
        assert (sample.utilization, sample.temperature) == (7.0, 33.0)
        assert (sample.power_draw, sample.power_limit, sample.processes) == (None, 700.0, 0)
    warnings = [record.getMessage() for record in caplog.records if record.name == GPU_LOGGER]
    # Driver version, power and the graphics list: once each (NotSupported is only debug).
    assert len(warnings) == 3, warnings
    assert any("nvmlDeviceGetGraphicsRunningProcesses" in warning for warning in warnings)


def test_nvml_process_lists_fall_back_to_v2_on_drivers_before_r510(monkeypatch, caplog):
    """pynvml's plain call wants ``..._v3``, which R470 lacks, and its wrapper then raises
    NVMLLibraryMismatchError, a plain Exception: the back end asks ``_v2`` instead, from then
    on, and the heartbeat keeps its GPU."""
    function_pointer = pynvml._nvmlGetFunctionPointer

    def pointer(name):
        if name == "nvmlDeviceGetComputeRunningProcesses_v3":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return function_pointer(name)

    v2_calls = []

    def compute_v2(handle):
        v2_calls.append(handle)
        return [SimpleNamespace(pid=41), SimpleNamespace(pid=42)]

    _simulated_gpu(monkeypatch, nvmlDeviceGetComputeRunningProcesses_v2=compute_v2)
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer", pointer)
    backend = NvmlBackend()
    with caplog.at_level(logging.WARNING, logger=GPU_LOGGER):
        first, second = backend.sample(), backend.sample()
    assert [sample.processes for sample in first + second] == [2, 2]
    assert len(v2_calls) == 2
    # Only the back end's own records: another test's leftovers may log meanwhile.
    assert [record for record in caplog.records if record.name == GPU_LOGGER] == []


def test_nvml_is_tried_again_until_the_driver_loads(monkeypatch):
    """An agent that starts before the nvidia module has loaded finds the GPUs later, without
    a restart, and says so once."""
    attempts = []

    def init():
        attempts.append(1)
        if len(attempts) == 1:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    _simulated_gpu(monkeypatch, nvmlInit=init)
    backend = NvmlBackend(retry_seconds=0.05)
    assert backend.inventory() == []
    assert backend.inventory() == []  # not yet time to try again
    assert len(attempts) == 1
    time.sleep(0.06)
    assert [gpu.name for gpu in backend.inventory()] == ["NVIDIA A100-SXM4-80GB"]
    assert len(backend.sample()) == 1
    assert len(attempts) == 2


def test_a_gpu_without_a_temperature_sensor_keeps_its_other_figures(monkeypatch):
    _simulated_gpu(
        monkeypatch,
        nvmlDeviceGetTemperature=_failing(pynvml.NVML_ERROR_NOT_SUPPORTED),
        nvmlDeviceGetComputeRunningProcesses=lambda handle: [],
    )
    (sample,) = NvmlBackend().sample()
    assert (sample.temperature, sample.utilization, sample.power_draw) == (None, 5.0, 100.0)


@pytest.mark.parametrize(
    "code",
    [
        pynvml.NVML_ERROR_NOT_SUPPORTED,
        pynvml.NVML_ERROR_NO_PERMISSION,
        pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        pynvml.NVML_ERROR_UNKNOWN,
    ],
)
def test_figures_a_gpu_refuses_are_unknown_not_zero(monkeypatch, code):
    """Temperature, power, utilisation and ECC that NVML refuses are None, never an invented
    0, and stay None through the protocol to the server."""
    _simulated_gpu(
        monkeypatch,
        nvmlDeviceGetUtilizationRates=_failing(code),
        nvmlDeviceGetTemperature=_failing(code),
        nvmlDeviceGetPowerUsage=_failing(code),
        nvmlDeviceGetEnforcedPowerLimit=_failing(code),
        nvmlDeviceGetTotalEccErrors=_failing(code),
        nvmlDeviceGetComputeRunningProcesses=lambda handle: [],
    )
    (sample,) = NvmlBackend().sample()
    unknown = (
        sample.utilization,
        sample.temperature,
        sample.power_draw,
        sample.power_limit,
        sample.ecc_errors,
    )
    assert unknown == (None, None, None, None, None)
    assert (sample.memory_used, sample.memory_total) == (GIB, 80 * GIB)
    beat = protocol.Heartbeat(
        time=1.0, cpu_percent=1.0, memory_used=1, memory_total=2, disk_used=1, disk_total=2
    )
    beat.gpus = [sample]
    (parsed,) = protocol.parse(protocol.dump(beat)).gpus
    assert parsed == sample


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown GPU back end"):
        get_backend("rocm")
