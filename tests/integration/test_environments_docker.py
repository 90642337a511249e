"""Environments end to end on real parts: daphne, a real agent driving the real Docker Engine,
images pulled from a real local registry, the API over HTTP with a real token."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from django.utils import timezone

from accounts.choices import Role
from accounts.services.tokens import token_create
from accounts.tests.factories import MembershipFactory
from environments.choices import EnvironmentStatus as S
from environments.choices import StatusReason
from environments.models import Environment, EnvironmentEvent, GPUAssignment, PortAllocation
from environments.services.reconciliation import environment_sweep
from environments.tests.factories import ImageFactory, SpecFactory
from machines.choices import HostStatus
from machines.models import Host
from machines.services.hosts import host_mark_offline_stale
from remotegpu.core.testing_docker import (
    busybox_image,
    image_with_unique_layer,
    remove_labelled,
    require_docker,
    start_registry,
)

from .conftest import START_TIMEOUT, docker_agent, start_agent, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

AGENT_DOWN_SECONDS = 120
SERVE = "mkdir -p /www && echo hello-from-env > /www/index.html && exec httpd -f -p 8080 -h /www"


@pytest.fixture(scope="module")
def docker_client():
    client = require_docker()
    yield client
    remove_labelled(client)


@pytest.fixture(scope="module")
def registry_image(docker_client, tmp_path_factory):
    """A busybox image with a never-seen layer, pushed to a real local registry, and no copy
    of it left in the engine: creating an environment from it really pulls."""
    registry = start_registry(tmp_path_factory.mktemp("registry"))
    base = busybox_image(docker_client)
    local = image_with_unique_layer(docker_client, base, "remotegpu-test/env-image")
    reference = registry.push(docker_client, local, "rgpu/env", "v1")
    docker_client.images.remove(reference)
    docker_client.images.remove(local)
    yield reference
    registry.stop(docker_client)


@pytest.fixture
def agent_host(daphne_server, docker_client, tmp_path):
    with docker_agent(daphne_server, tmp_path, f"docker-host-{tmp_path.name[-8:]}") as parts:
        yield parts


class API:
    def __init__(self, base_url: str, token: str):
        self.base_url = base_url
        self.token = token

    def __call__(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(  # noqa: S310 (loopback)
            self.base_url + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")


@pytest.fixture
def customer_api(daphne_server):
    membership = MembershipFactory(role=Role.OWNER)
    issued = token_create(user=membership.user, name="it", write_enabled=True)
    return API(daphne_server.base_url, issued.plaintext), membership.organization


def _wait_status(api, environment_id, status, agent, timeout=60):
    def reached():
        code, body = api("GET", f"/api/v1/environments/{environment_id}/")
        assert code == 200, body
        if body["status"] == S.FAILED and status != S.FAILED:
            pytest.fail(f"environment failed: {body['status_message']}\n{agent.output()}")
        return body if body["status"] == status else None

    return wait_until(reached, timeout=timeout, what=f"status {status}", process=agent)


def _http_text(port: int) -> str:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"http://127.0.0.1:{port}/index.html", timeout=3
    ) as response:
        return response.read().decode()


def _container(docker_client, environment_id):
    found = docker_client.containers.list(
        all=True, filters={"label": f"remotegpu.environment={environment_id}"}
    )
    return found[0] if found else None


def test_create_inspect_stop_start_delete_through_the_api(
    agent_host, customer_api, registry_image, docker_client
):
    host, agent, _, _ = agent_host
    api, organization = customer_api
    spec = SpecFactory(gpu_model="Fake GPU 80GB", gpu_count=1, vcpu=1, memory_gib=1)
    image = ImageFactory(
        reference=registry_image,
        command=["sh", "-c", SERVE],
        ports=[{"port": 8080, "role": "http", "name": "web"}],
    )
    gpu_model = host.gpus.first().model
    spec.gpu_model = gpu_model
    spec.save()

    code, body = api(
        "POST",
        "/api/v1/environments/",
        {
            "name": "web-1",
            "spec": spec.pk,
            "image": image.pk,
            "env": {"GREETING": "hi"},
            "ports": [{"port": 9000, "role": "tcp"}],
        },
    )
    assert code == 201, (body, _placement_state())
    environment_id = body["id"]
    running = _wait_status(api, environment_id, S.RUNNING, agent)

    # The pull was real and its progress reached the system log.
    messages = list(
        EnvironmentEvent.objects.filter(environment_id=environment_id).values_list(
            "message", flat=True
        )
    )
    assert any("Pulling" in message for message in messages), messages
    assert any("Image pulled" in message for message in messages), messages

    container = _container(docker_client, environment_id)
    attrs = container.attrs
    labels = attrs["Config"]["Labels"]
    assert labels["remotegpu.managed"] == "true"
    assert labels["remotegpu.organization"] == str(organization.pk)
    assert labels["remotegpu.gpus"] == running["gpus"][0]["uuid"]
    config = attrs["HostConfig"]
    assert config["Memory"] == 1024**3
    assert config["NanoCpus"] == 10**9
    assert config["PidsLimit"] > 0
    assert config["Privileged"] is False
    assert "no-new-privileges:true" in config["SecurityOpt"]
    assert config["NetworkMode"] == f"rgpu-org-{organization.pk}"
    mounts = attrs["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [
        ("volume", f"rgpu-vol-{environment_id}", "/workspace")
    ]
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["GREETING"] == "hi"
    assert env["REMOTEGPU_GPU_UUIDS"] == running["gpus"][0]["uuid"]
    assert env["REMOTEGPU_GPU_BACKEND"] == "fake"
    ports = {p["container_port"]: p["host_port"] for p in running["ports"]}
    assert set(ports) == {8080, 9000}
    bindings = config["PortBindings"]
    assert bindings["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(ports[8080])}]
    assert env["REMOTEGPU_PORT_8080"] == str(ports[8080])

    # A server inside answers on the published port.
    assert wait_until(
        lambda: _try_http(ports[8080]), timeout=10, what="the server in the container"
    ).strip() == ("hello-from-env")

    # Logs, read from the host now.
    code, logs = api("GET", f"/api/v1/environments/{environment_id}/logs/?tail=50")
    assert code == 200, logs
    assert isinstance(logs["lines"], list)

    # A file in /workspace survives stop and start.
    assert container.exec_run(["sh", "-c", "echo kept > /workspace/note"]).exit_code == 0
    code, body = api("POST", f"/api/v1/environments/{environment_id}/stop/")
    assert code == 202, body
    _wait_status(api, environment_id, S.STOPPED, agent)
    assert _container(docker_client, environment_id) is None
    assert not GPUAssignment.objects.filter(
        environment_id=environment_id, released_at__isnull=True
    ).exists()
    code, body = api("POST", f"/api/v1/environments/{environment_id}/start/", {})
    assert code == 202, body
    _wait_status(api, environment_id, S.RUNNING, agent)
    container = _container(docker_client, environment_id)
    assert container.exec_run(["cat", "/workspace/note"]).output.strip() == b"kept"

    # Delete: nothing of it is left on the engine, and its GPUs and ports are free.
    code, body = api("DELETE", f"/api/v1/environments/{environment_id}/")
    assert code == 202, body
    wait_until(
        lambda: Environment.objects.filter(pk=environment_id, status=S.DELETED).exists(),
        timeout=30,
        what="deleted",
        process=agent,
    )
    assert _container(docker_client, environment_id) is None
    assert not docker_client.volumes.list(filters={"name": f"rgpu-vol-{environment_id}"})
    assert not GPUAssignment.objects.filter(
        environment_id=environment_id, released_at__isnull=True
    ).exists()
    assert not PortAllocation.objects.filter(environment_id=environment_id).exists()


def _try_http(port: int) -> str | None:
    try:
        return _http_text(port)
    except (OSError, urllib.error.URLError):
        return None


def _running_environment(api, agent, host, registry_image, name, gpu_count=1):
    model = host.gpus.first().model if gpu_count else ""
    spec = SpecFactory(gpu_model=model, gpu_count=gpu_count, vcpu=1, memory_gib=1)
    image = ImageFactory(reference=registry_image, command=["sh", "-c", SERVE])
    code, body = api(
        "POST", "/api/v1/environments/", {"name": name, "spec": spec.pk, "image": image.pk}
    )
    assert code == 201, (body, _placement_state())
    _wait_status(api, body["id"], S.RUNNING, agent)
    return body["id"]


def test_a_container_removed_by_hand_marks_its_environment_lost(
    agent_host, customer_api, registry_image, docker_client
):
    host, agent, _, _ = agent_host
    api, _ = customer_api
    environment_id = _running_environment(api, agent, host, registry_image, "lost-1")
    _container(docker_client, environment_id).remove(force=True)
    environment = wait_until(
        lambda: Environment.objects.filter(pk=environment_id, status=S.FAILED).first(),
        timeout=30,
        what="the environment marked lost",
        process=agent,
    )
    assert environment.status_reason == StatusReason.LOST
    assert not GPUAssignment.objects.filter(
        environment_id=environment_id, released_at__isnull=True
    ).exists()


def test_out_of_balance_stops_its_real_container_after_the_grace_period(
    agent_host, customer_api, registry_image, docker_client, settings
):
    """Billing on real parts: a real run is charged from the agent's report, the balance runs
    out, and after the grace period the real container is gone while its volume stays."""
    from datetime import timedelta
    from decimal import Decimal

    from billing.choices import EntryKind, PriceResource
    from billing.models import Price
    from billing.services.balance import balances_check
    from billing.services.metering import billing_tick
    from billing.services.wallets import wallet_get, wallet_post

    host, agent, _, _ = agent_host
    api, organization = customer_api
    settings.BILLING_GRACE_SECONDS = 300
    Price.objects.create(resource=PriceResource.GPU_HOUR, amount=Decimal("36"))
    wallet_post(wallet_get(organization), kind=EntryKind.RECHARGE, amount=Decimal(36), key="it")
    environment_id = _running_environment(api, agent, host, registry_image, "broke-1")
    container = _container(docker_client, environment_id)
    volume = container.attrs["Mounts"][0]["Name"]

    # The hour it paid for, spent at once (an adjustment), and what the run used since.
    wallet_post(
        wallet_get(organization), kind=EntryKind.ADJUSTMENT, amount=Decimal(-36), key="it-spent"
    )
    later = timezone.now()
    billing_tick(later)
    assert wallet_get(organization).balance <= 0
    assert balances_check(later)["depleted"] == 1
    assert balances_check(later + timedelta(seconds=301))["stopped"] == 1
    environment = _wait_status(api, environment_id, S.STOPPED, agent)
    assert environment["status_reason"] == StatusReason.OUT_OF_BALANCE
    assert _container(docker_client, environment_id) is None
    assert docker_client.volumes.get(volume).name == volume


def test_an_unknown_labelled_container_is_removed_after_the_grace_period(
    agent_host, docker_client, settings
):
    host, agent, _, _ = agent_host
    settings.ENVIRONMENT_ORPHAN_GRACE_SECONDS = 1
    orphan = docker_client.containers.run(
        busybox_image(docker_client),
        ["sleep", "600"],
        detach=True,
        labels={"remotegpu.managed": "true", "remotegpu.environment": "987654321"},
    )
    from environments.models import OrphanContainer

    wait_until(
        lambda: OrphanContainer.objects.filter(host=host, container_id=orphan.id).exists(),
        timeout=20,
        what="the orphan noticed",
        process=agent,
    )
    time.sleep(1.2)
    assert environment_sweep()["orphans_removed"] == 1

    def gone():
        import docker.errors

        try:
            docker_client.containers.get(orphan.id)
        except docker.errors.NotFound:
            return True
        return False

    wait_until(gone, timeout=30, what="the orphan removed", process=agent)


def test_the_agent_down_for_two_minutes_comes_back_to_the_right_state(
    agent_host, customer_api, registry_image, docker_client, tmp_path
):
    """Down for two minutes (the issue's figure): long past the host's offline mark and the
    sweep's grace periods, which run meanwhile as beat would run them."""
    host, agent, state, control = agent_host
    api, _ = customer_api
    environment_id = _running_environment(api, agent, host, registry_image, "steady-1")
    agent.stop()
    down_until = time.monotonic() + AGENT_DOWN_SECONDS
    while time.monotonic() < down_until:
        host_mark_offline_stale()
        environment_sweep()
        time.sleep(5)
    assert Host.objects.get(pk=host.pk).status == HostStatus.OFFLINE
    assert Environment.objects.get(pk=environment_id).status == S.RUNNING
    restarted = start_agent(
        state, control, tmp_path, name="agent-again", extra_args=("--publish-address", "127.0.0.1")
    )
    try:
        wait_until(
            lambda: Host.objects.filter(
                pk=host.pk, connected=True, status=HostStatus.ONLINE
            ).exists(),
            timeout=START_TIMEOUT,
            what="the agent back, its host online",
            process=restarted,
        )
        time.sleep(3)  # an inventory or two after reconnecting
        environment = Environment.objects.get(pk=environment_id)
        assert environment.status == S.RUNNING
        containers = docker_client.containers.list(
            all=True, filters={"label": f"remotegpu.environment={environment_id}"}
        )
        assert len(containers) == 1
        assert containers[0].status == "running"
    finally:
        restarted.stop()


def test_another_organisations_container_cannot_reach_it(
    agent_host, customer_api, registry_image, docker_client, daphne_server
):
    host, agent, _, _ = agent_host
    api, _ = customer_api
    mine = _running_environment(api, agent, host, registry_image, "target-1", gpu_count=0)
    neighbour = MembershipFactory(role=Role.OWNER)
    other_api = API(
        daphne_server.base_url,
        token_create(user=neighbour.user, name="it", write_enabled=True).plaintext,
    )
    theirs = _running_environment(other_api, agent, host, registry_image, "prober-1", gpu_count=0)
    target = _container(docker_client, mine)
    network = next(iter(target.attrs["NetworkSettings"]["Networks"].values()))
    # Only the verdict on stdout: nc's own complaint ("timed out") would interleave with it.
    address = network["IPAddress"]
    probe = [
        "sh",
        "-c",
        f"nc -w 2 {address} 8080 </dev/null >/dev/null 2>&1 && echo open || echo closed",
    ]
    assert _container(docker_client, theirs).exec_run(probe).output.strip() == b"closed"

    # This host has two cores: the prober makes room for a container of the same organisation,
    # which does reach it.
    assert other_api("DELETE", f"/api/v1/environments/{theirs}/")[0] == 202
    wait_until(
        lambda: Environment.objects.filter(pk=theirs, status=S.DELETED).exists(),
        timeout=30,
        what="the prober deleted",
        process=agent,
    )
    same_org = _running_environment(api, agent, host, registry_image, "friend-1", gpu_count=0)
    assert _container(docker_client, same_org).exec_run(probe).output.strip() == b"open"
    # The other organisation's API does not show it either.
    code, _ = other_api("GET", f"/api/v1/environments/{mine}/")
    assert code == 404
    code, _ = other_api("POST", f"/api/v1/environments/{mine}/stop/")
    assert code == 404


def test_the_agent_killed_while_provisioning_ends_with_it_running_once(
    agent_host, customer_api, registry_image, docker_client, tmp_path
):
    import os
    import signal

    from machines.choices import CommandStatus
    from machines.models import AgentCommand

    host, agent, state, control = agent_host
    api, _ = customer_api
    spec = SpecFactory(gpu_model=host.gpus.first().model, gpu_count=1, vcpu=1, memory_gib=1)
    image = ImageFactory(reference=registry_image, command=["sh", "-c", SERVE])
    code, body = api(
        "POST", "/api/v1/environments/", {"name": "crash-1", "spec": spec.pk, "image": image.pk}
    )
    assert code == 201, (body, _placement_state())
    # kill -9 as soon as the agent has the command (it may be pulling, creating or done).
    wait_until(
        lambda: AgentCommand.objects.filter(
            payload__environment_id=body["id"],
            status__in=[CommandStatus.ACKED, CommandStatus.SUCCEEDED],
        ).exists(),
        timeout=20,
        what="the agent to have the command",
        process=agent,
    )
    os.killpg(agent.popen.pid, signal.SIGKILL)
    agent.popen.wait()
    restarted = start_agent(
        state,
        control,
        tmp_path,
        name="agent-after-kill",
        extra_args=("--publish-address", "127.0.0.1"),
    )
    try:
        _wait_status(api, body["id"], S.RUNNING, restarted)
        containers = docker_client.containers.list(
            all=True, filters={"label": f"remotegpu.environment={body['id']}"}
        )
        assert len(containers) == 1
        assert containers[0].status == "running"
    finally:
        restarted.stop()


def test_a_celery_worker_killed_during_provisioning_changes_nothing(
    agent_host, customer_api, registry_image, docker_client, celery_worker
):
    """Provisioning needs no Celery task (one transaction, then the agent): a worker killed
    with -9 the moment a create is accepted loses nothing and duplicates nothing."""
    import os
    import signal

    host, agent, _, _ = agent_host
    api, _ = customer_api
    spec = SpecFactory(gpu_model=host.gpus.first().model, gpu_count=1, vcpu=1, memory_gib=1)
    image = ImageFactory(reference=registry_image, command=["sh", "-c", SERVE])
    code, body = api(
        "POST", "/api/v1/environments/", {"name": "worker-1", "spec": spec.pk, "image": image.pk}
    )
    assert code == 201, (body, _placement_state())
    os.killpg(celery_worker.popen.pid, signal.SIGKILL)
    _wait_status(api, body["id"], S.RUNNING, agent)
    containers = docker_client.containers.list(
        all=True, filters={"label": f"remotegpu.environment={body['id']}"}
    )
    assert len(containers) == 1
    assert Environment.objects.filter(name="worker-1").count() == 1


def _restart_dockerd() -> None:
    """Stop the engine (SIGTERM, as a service manager does) and start it again, detached."""
    import os
    import signal
    import subprocess
    from pathlib import Path

    pid = int(Path("/var/run/docker.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    with open("/var/log/remotegpu-dockerd.log", "ab") as log:
        subprocess.Popen(
            ["dockerd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )


def test_dockerd_restarted_every_environment_ends_in_a_true_state(
    agent_host, customer_api, registry_image, docker_client
):
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.skip("restarting dockerd needs root and dockerd")
    host, agent, _, _ = agent_host
    api, _ = customer_api
    running = _running_environment(api, agent, host, registry_image, "survivor-1")
    stopped = _running_environment(api, agent, host, registry_image, "parked-1", gpu_count=0)
    assert api("POST", f"/api/v1/environments/{stopped}/stop/")[0] == 202
    _wait_status(api, stopped, S.STOPPED, agent)

    _restart_dockerd()
    client = wait_until(lambda: _engine(), timeout=60, what="dockerd back")
    # The running one comes back with the engine (restart policy unless-stopped), and the
    # database agrees with what runs; the stopped one stays stopped, with its volume.
    container = wait_until(
        lambda: next(
            (
                c
                for c in client.containers.list(
                    filters={"label": f"remotegpu.environment={running}"}
                )
                if c.status == "running"
            ),
            None,
        ),
        timeout=60,
        what="the environment's container running again",
        process=agent,
    )
    wait_until(
        lambda: Host.objects.filter(pk=host.pk, containers_known=True).exists(),
        timeout=30,
        what="the agent to list containers again",
        process=agent,
    )
    time.sleep(3)  # inventories after the restart
    assert Environment.objects.get(pk=running).status == S.RUNNING
    assert Environment.objects.get(pk=stopped).status == S.STOPPED
    assert container.labels["remotegpu.environment"] == str(running)
    assert client.volumes.get(f"rgpu-vol-{stopped}")


def _engine():
    import docker

    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:  # the engine is still starting: keep waiting
        return None
    return client


def _placement_state() -> dict:
    """What placement saw, for the message of a create refused when it should not be."""
    from machines.models import HostGPUModel

    return {
        "hosts": list(
            Host.objects.values("name", "status", "connected", "cpu_cores", "memory_total")
        ),
        "gpu_counts": list(HostGPUModel.objects.values("host_id", "model", "healthy")),
        "environments": list(Environment.objects.values("name", "status", "host_id")),
    }


def test_jupyterlab_opens_with_its_token_and_only_with_it(agent_host, customer_api, docker_client):
    """The issue's Jupyter image: Debian from debootstrap, JupyterLab from wheels downloaded on
    the host. The environment's own token opens it; no token, no way in."""
    from urllib.parse import urlsplit

    from remotegpu.core.testing_images import jupyter_image

    _host, agent, _, _ = agent_host
    api, _ = customer_api
    image = ImageFactory(
        reference=jupyter_image(docker_client),
        command=[],  # the image's own: jupyter lab on 8888
        ports=[{"port": 8888, "role": "jupyter"}],
    )
    spec = SpecFactory(gpu_model="", gpu_count=0, vcpu=1, memory_gib=2)
    code, body = api(
        "POST", "/api/v1/environments/", {"name": "lab-1", "spec": spec.pk, "image": image.pk}
    )
    assert code == 201, body
    body = _wait_status(api, body["id"], S.RUNNING, agent)
    url = urlsplit(body["jupyter_url"])
    token = url.query.removeprefix("token=")
    assert url.path == "/lab"
    assert len(token) >= 32
    base = f"http://127.0.0.1:{url.port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path: str) -> tuple[int, str]:
        try:
            with opener.open(base + path, timeout=5) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, ""
        except OSError:
            return 0, ""  # not listening yet

    status = wait_until(
        lambda: get(f"/api/status?token={token}")[0] == 200 or None,
        timeout=90,
        what="JupyterLab answering",
        process=agent,
    )
    assert status
    code, page = get(f"/lab?token={token}")
    assert code == 200
    assert "JupyterLab" in page
    assert get("/api/status")[0] == 403
    assert get("/api/status?token=wrong-token")[0] == 403
