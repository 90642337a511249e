"""The Docker driver: the container asked for (pinned, GPUs included), pull progress, and
idempotent operations against the real Docker Engine."""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import replace

import pytest

from remotegpu_agent.commands import CommandContext, execute
from remotegpu_agent.containers import (
    DockerDriver,
    PullProgress,
    container_name,
    spec_digest,
    split_reference,
    volume_name,
)
from remotegpu_agent.gpu import FakeBackend
from remotegpu_agent.protocol import EnvironmentRun, PortSpec, ProtocolError, parse_payload

GPU_A = "GPU-0d6c9b1e-58f0-7b2f-ffff-0123456789ab"
GPU_B = "GPU-9a8b7c6d-0000-1111-2222-333344445555"


def _spec(**changes) -> EnvironmentRun:
    spec = EnvironmentRun(
        environment_id=42,
        organization_id=7,
        image="registry.example.com/ml/pytorch:2.4",
        command=["sleep", "infinity"],
        env={"A": "1"},
        gpu_uuids=[GPU_A, GPU_B],
        nano_cpus=4 * 10**9,
        memory=16 * 2**30,
        pids_limit=4096,
        ports=[PortSpec(22, 40001), PortSpec(8888, 40002)],
    )
    return replace(spec, **changes)


def test_on_nvml_the_device_request_names_exactly_its_gpus():
    arguments = DockerDriver(gpu_backend="nvml", client=object()).create_arguments(
        _spec(), "rgpu-org-7", "rgpu-vol-42"
    )
    (request,) = arguments["device_requests"]
    assert dict(request) == {
        "Driver": "nvidia",
        "Count": 0,
        "DeviceIDs": [GPU_A, GPU_B],
        "Capabilities": [["gpu"]],
        "Options": {},
    }
    assert arguments["environment"]["REMOTEGPU_GPU_UUIDS"] == f"{GPU_A},{GPU_B}"
    assert "NVIDIA_VISIBLE_DEVICES" not in arguments["environment"]
    assert arguments["privileged"] is False
    assert arguments["security_opt"] == ["no-new-privileges:true"]
    assert arguments["pids_limit"] == 4096
    assert arguments["nano_cpus"] == 4 * 10**9
    assert arguments["mem_limit"] == arguments["memswap_limit"] == 16 * 2**30
    assert arguments["volumes"] == {"rgpu-vol-42": {"bind": "/workspace", "mode": "rw"}}
    assert arguments["network"] == "rgpu-org-7"
    assert arguments["ports"] == {"22/tcp": ("0.0.0.0", 40001), "8888/tcp": ("0.0.0.0", 40002)}
    assert arguments["labels"]["remotegpu.managed"] == "true"
    assert arguments["labels"]["remotegpu.environment"] == "42"
    assert arguments["name"] == container_name(42)


def test_a_cpu_only_container_on_nvml_sees_no_gpu():
    arguments = DockerDriver(gpu_backend="nvml", client=object()).create_arguments(
        _spec(gpu_uuids=[]), "n", "v"
    )
    assert arguments["device_requests"] == []
    assert arguments["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_the_fake_back_end_passes_uuids_as_variables_only_and_says_so():
    arguments = DockerDriver(gpu_backend="fake", client=object()).create_arguments(
        _spec(), "n", "v"
    )
    assert arguments["device_requests"] == []
    assert arguments["environment"]["REMOTEGPU_GPU_BACKEND"] == "fake"
    assert arguments["environment"]["REMOTEGPU_GPU_UUIDS"] == f"{GPU_A},{GPU_B}"


def test_spec_digest_ignores_the_registry_password():
    assert spec_digest(_spec()) == spec_digest(_spec(registry_auth={"password": "x"}))
    assert spec_digest(_spec()) != spec_digest(_spec(gpu_uuids=[GPU_A]))


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("busybox", ("busybox", "latest")),
        ("127.0.0.1:5000/team/img:v1", ("127.0.0.1:5000/team/img", "v1")),
        ("127.0.0.1:5000/team/img", ("127.0.0.1:5000/team/img", "latest")),
        ("img@sha256:" + "a" * 64, ("img@sha256:" + "a" * 64, "")),
    ],
)
def test_split_reference(reference, expected):
    assert split_reference(reference) == expected


def test_pull_progress_folds_layers_and_bytes():
    reports = []
    progress = PullProgress("img:1", reports.append)
    progress.feed({"status": "Pulling from team/img", "id": "1"})
    progress.feed({"status": "Pulling fs layer", "id": "a"})
    progress.feed({"status": "Pulling fs layer", "id": "b"})
    progress.feed(
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 5, "total": 10}}
    )
    progress.feed({"status": "Pull complete", "id": "a"})
    progress.feed({"status": "Already exists", "id": "b"})
    figures = progress.figures()
    assert figures["layers_total"] == 2
    assert figures["layers_done"] == 2
    assert figures["bytes_done"] == figures["bytes_total"] == 10
    assert reports
    assert reports[0]["phase"] == "pulling"
    with pytest.raises(RuntimeError, match="manifest unknown"):
        progress.feed({"error": "manifest unknown"})


def test_payloads_are_checked_like_messages():
    with pytest.raises(ProtocolError, match="gpu_uuids"):
        parse_payload(
            EnvironmentRun,
            {"environment_id": 1, "organization_id": 1, "image": "x", "gpu_uuids": [1]},
        )
    with pytest.raises(ProtocolError, match="env"):
        parse_payload(
            EnvironmentRun,
            {"environment_id": 1, "organization_id": 1, "image": "x", "env": {"A": 1}},
        )
    with pytest.raises(ProtocolError, match="missing"):
        parse_payload(EnvironmentRun, {"environment_id": 1})


def test_commands_without_docker_fail_clearly():
    outcome = asyncio.run(
        execute("environment_stop", {"environment_id": 1}, CommandContext(FakeBackend(count=0)))
    )
    assert outcome.ok is False
    assert "without Docker" in outcome.error


# Against the real engine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine():
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a Docker Engine: {exc}")
        pytest.skip(f"no Docker Engine ({exc}); scripts/docker-engine.sh starts one")
    busybox = "/bin/busybox"
    if not os.path.exists(busybox):
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs busybox-static")
        pytest.skip("busybox-static is not installed")
    import io
    import tarfile

    from remotegpu_agent import containers  # noqa: F401  (the module under test)

    tag = "remotegpu-agent-test/busybox:1"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(busybox, arcname="bin/busybox")
            for applet in ("sh", "sleep"):
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        repository, version = tag.split(":")
        client.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=version)
    yield client, tag
    for container in client.containers.list(
        all=True, filters={"label": "remotegpu.organization=990001"}
    ):
        container.remove(force=True)
    for volume in client.volumes.list(filters={"label": "remotegpu.organization=990001"}):
        volume.remove(force=True)
    for network in client.networks.list(names=["rgpu-org-990001"]):
        network.remove()


def test_run_is_idempotent_and_stop_and_delete_tolerate_absence(engine):
    client, tag = engine
    environment_id = int(uuid.uuid4().int % 10**9)
    driver = DockerDriver(gpu_backend="fake", publish_address="127.0.0.1", client=client)
    spec = _spec(
        environment_id=environment_id,
        organization_id=990001,
        image=tag,
        command=["sleep", "600"],
        memory=64 * 2**20,
        nano_cpus=10**8,
        pids_limit=64,
        ports=[],
    )
    first = driver.run(spec)
    again = driver.run(spec)
    assert first["container_id"] == again["container_id"]
    assert first["state"] == "running"
    managed = [c for c in driver.managed_containers() if c.environment == str(environment_id)]
    assert len(managed) == 1
    # Another payload (other GPUs) replaces the container; the volume stays.
    replaced = driver.run(replace(spec, gpu_uuids=[GPU_A]))
    assert replaced["container_id"] != first["container_id"]
    assert client.volumes.get(volume_name(environment_id))
    assert driver.stop(environment_id) == {"container": "removed"}
    assert driver.stop(environment_id) == {"container": "absent"}
    assert driver.delete(environment_id) == {"container": "absent", "volume": "removed"}
    assert driver.delete(environment_id) == {"container": "absent", "volume": "absent"}
    unmanaged = client.containers.create(
        tag, ["sleep", "1"], labels={"remotegpu.organization": "990001"}
    )
    with pytest.raises(PermissionError):
        driver.remove_container(unmanaged.id)
