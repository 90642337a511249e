"""The real Docker parts the environment tests stand on (remotegpu.core.testing_docker).

A Docker Engine with cgroup limits, volumes and published ports; the busybox image; a loopback
registry pushed to and pulled from (with and without htpasswd). Skipped locally without
``docker.io`` (``scripts/docker-engine.sh`` installs it and starts dockerd), failed in CI.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid

import pytest

from remotegpu.core.testing_docker import (
    MANAGED_LABEL,
    busybox_image,
    image_with_unique_layer,
    remove_labelled,
    require_docker,
    start_registry,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def client():
    client = require_docker()
    yield client
    client.close()


@pytest.fixture(scope="module")
def image(client):
    return busybox_image(client)


@pytest.fixture
def label(client):
    """A label value of this test's own, so teardown removes only what the test made."""
    value = f"test-{uuid.uuid4().hex[:8]}"
    yield {MANAGED_LABEL: value}
    remove_labelled(client, f"{MANAGED_LABEL}={value}")


def _selector(label: dict[str, str]) -> str:
    return "{}={}".format(*next(iter(label.items())))


def test_busybox_image_is_reused_and_tagged_latest(client, image):
    assert busybox_image(client) == image
    assert image.startswith("remotegpu-test/busybox:")
    assert client.images.get("remotegpu-test/busybox:latest").id == client.images.get(image).id


def test_container_runs_with_limits_and_a_volume(client, image, label):
    volume = client.volumes.create(name=f"rgpu-{label[MANAGED_LABEL]}", labels=label)
    writer = client.containers.run(
        image,
        [
            "sh",
            "-c",
            "echo hello > /data/greeting; cat /sys/fs/cgroup/memory.max 2>/dev/null"
            " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes",
        ],
        detach=True,
        labels=label,
        mem_limit="64m",
        pids_limit=50,
        nano_cpus=500_000_000,
        volumes={volume.name: {"bind": "/data", "mode": "rw"}},
    )
    assert writer.wait(timeout=30)["StatusCode"] == 0
    # The limit is the kernel's, seen from inside the container, not only the engine's record.
    assert int(writer.logs().decode().split()[-1]) == 64 * MIB
    host_config = client.api.inspect_container(writer.id)["HostConfig"]
    assert host_config["Memory"] == 64 * MIB
    assert host_config["PidsLimit"] == 50
    assert host_config["NanoCpus"] == 500_000_000

    reader = client.containers.run(
        image, ["cat", "/d/greeting"], detach=True, labels=label, volumes=[f"{volume.name}:/d"]
    )
    assert reader.wait(timeout=30)["StatusCode"] == 0
    assert reader.logs() == b"hello\n"


def test_published_port_answers_http_from_the_host(client, image, label):
    container = client.containers.run(
        image,
        ["sh", "-c", "echo served > /www/index.html && exec httpd -f -p 8080 -h /www"],
        detach=True,
        labels=label,
        ports={"8080/tcp": ("127.0.0.1", None)},
    )
    container.reload()
    binding = container.ports["8080/tcp"][0]
    assert binding["HostIp"] == "127.0.0.1"
    url = f"http://127.0.0.1:{binding['HostPort']}/index.html"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 10
    while True:
        try:
            with opener.open(url, timeout=2) as response:
                assert response.read() == b"served\n"
                break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_registry_push_then_pull_with_progress(client, image, label, tmp_path):
    registry = start_registry(tmp_path / "registry")
    local = image_with_unique_layer(
        client, image, f"remotegpu-test/payload-{label[MANAGED_LABEL]}", label
    )
    try:
        reference = registry.push(client, local, "rgpu/payload", "v1")
        assert reference == f"{registry.address}/rgpu/payload:v1"
        client.images.remove(reference)
        client.images.remove(local)

        repository, tag = reference.rsplit(":", 1)
        items = list(client.api.pull(repository, tag=tag, stream=True, decode=True))
        assert not [item for item in items if "error" in item], items
        statuses = {item.get("status") for item in items}
        # The busybox layer is there already; the new one is fetched, with byte counts.
        assert {"Already exists", "Pull complete"} <= statuses, items
        assert any(
            item.get("status") == "Downloading" and item["progressDetail"].get("total")
            for item in items
        ), items
        assert f"Status: Downloaded newer image for {reference}" in statuses

        output = client.containers.run(reference, ["wc", "-c", "/payload"], labels=label)
        assert output.split()[0] == b"262144"
    finally:
        registry.stop(client)
        if local in {tag for each in client.images.list() for tag in each.tags}:
            client.images.remove(local)
    # stop(client) dropped the engine's tags naming the registry.
    tags = {tag for each in client.images.list() for tag in each.tags}
    assert not [tag for tag in tags if tag.startswith(registry.address)]


def test_registry_with_htpasswd_takes_only_its_user(client, image, tmp_path):
    import docker

    registry = start_registry(tmp_path / "registry", username="rgpu", password="s3cret-pw")
    try:
        reference = registry.push(client, image, "rgpu/busybox", "auth")
        repository, tag = reference.rsplit(":", 1)
        client.images.remove(reference)
        with pytest.raises(docker.errors.APIError, match="no basic auth credentials"):
            client.images.pull(repository, tag=tag)
        pulled = client.images.pull(repository, tag=tag, auth_config=registry.auth_config)
        assert reference in pulled.tags
    finally:
        registry.stop(client)


def test_remove_labelled_leaves_nothing_labelled(client, image, label):
    selector = _selector(label)
    network = client.networks.create(f"rgpu-{label[MANAGED_LABEL]}", labels=label)
    volume = client.volumes.create(name=f"rgpu-{label[MANAGED_LABEL]}", labels=label)
    client.containers.run(
        image,
        ["sleep", "600"],
        detach=True,
        labels=label,
        network=network.name,
        volumes={volume.name: {"bind": "/data", "mode": "rw"}},
    )
    client.containers.create(image, ["true"], labels=label)

    assert remove_labelled(client, selector) == 4
    assert client.containers.list(all=True, filters={"label": selector}) == []
    assert client.volumes.list(filters={"label": selector}) == []
    assert client.networks.list(filters={"label": selector}) == []
