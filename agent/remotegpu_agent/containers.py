"""Environments as Docker containers on this host, driven through the Docker SDK.

Everything the agent creates carries ``remotegpu.*`` labels, so it can always tell its own
containers, volumes and networks from the host's others, and report exactly those. Every
operation is idempotent: a resent command finds what the first one made instead of making it
twice, and Docker's "not found" on stop or delete means the work is already done.

Tenants share hosts, so containers are never privileged, mount no host path (only their named
volume at ``/workspace``), run with ``no-new-privileges`` and a pids limit, and sit on one
Docker network per organisation: a container cannot open a connection to another
organisation's containers on the same host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from .protocol import ContainerInfo, EnvironmentRun

logger = logging.getLogger(__name__)

LABEL_MANAGED = "remotegpu.managed"
LABEL_ENVIRONMENT = "remotegpu.environment"
LABEL_ORGANIZATION = "remotegpu.organization"
LABEL_SPEC = "remotegpu.spec"
LABEL_GPU_BACKEND = "remotegpu.gpu_backend"
LABEL_GPUS = "remotegpu.gpus"
MANAGED_FILTER = {"label": f"{LABEL_MANAGED}=true"}
WORKSPACE = "/workspace"
STOP_TIMEOUT = 10  # seconds a container gets to exit on SIGTERM before SIGKILL
PROGRESS_EVERY = 0.5  # seconds between pull progress reports
MAX_IMAGES_REPORTED = 500
LOG_LINE_MAX_CHARS = 4000

Progress = Callable[[dict[str, Any]], None]


def container_name(environment_id: int) -> str:
    return f"rgpu-env-{environment_id}"


def volume_name(environment_id: int) -> str:
    return f"rgpu-vol-{environment_id}"


def network_name(organization_id: int) -> str:
    return f"rgpu-org-{organization_id}"


def split_reference(reference: str) -> tuple[str, str]:
    """``registry:5000/team/image:tag`` -> (``registry:5000/team/image``, ``tag``); no tag is
    ``latest``; a digest stays with the repository."""
    if "@" in reference:
        return reference, ""
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:  # the colon was a registry port, not a tag
        return reference, "latest"
    return name, tag


def spec_digest(spec: EnvironmentRun) -> str:
    """What a container was made from: a resent command with the same spec finds it as is,
    a changed one (other GPUs after a stop) replaces it."""
    content = {k: v for k, v in asdict(spec).items() if k != "registry_auth"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


class PullProgress:
    """Folds Docker's pull stream (one item per layer event) into layers and bytes."""

    def __init__(self, reference: str, report: Progress | None):
        self.reference = reference
        self.report = report
        self.layers: dict[str, dict[str, int | bool]] = {}
        self.reported_at = 0.0

    def feed(self, item: dict[str, Any]) -> None:
        if "error" in item:
            raise PullError(str(item.get("error") or item.get("errorDetail")))
        layer = item.get("id")
        status = str(item.get("status", ""))
        if not layer or status.startswith(("Pulling from", "Digest", "Status")):
            return
        entry = self.layers.setdefault(layer, {"current": 0, "total": 0, "done": False})
        detail = item.get("progressDetail") or {}
        if status == "Downloading" and detail.get("total"):
            entry["current"] = int(detail.get("current", 0))
            entry["total"] = int(detail["total"])
        elif status in ("Download complete", "Pull complete", "Already exists"):
            entry["current"] = entry["total"]
            entry["done"] = status != "Download complete" or entry["done"]
        now = time.monotonic()
        if self.report is not None and now - self.reported_at >= PROGRESS_EVERY:
            self.reported_at = now
            self.report(self.figures())

    def figures(self) -> dict[str, Any]:
        return {
            "phase": "pulling",
            "image": self.reference,
            "layers_total": len(self.layers),
            "layers_done": sum(1 for entry in self.layers.values() if entry["done"]),
            "bytes_done": sum(int(entry["current"]) for entry in self.layers.values()),
            "bytes_total": sum(int(entry["total"]) for entry in self.layers.values()),
        }


class PullError(RuntimeError):
    """The registry would not give the image; the message says why."""


class DockerUnavailable(RuntimeError):
    """No Docker Engine answers on this host."""


class DockerDriver:
    """The host's Docker Engine, as environments need it. Thread-safe: commands run in worker
    threads, and creating an organisation's network is serialised."""

    def __init__(self, *, gpu_backend: str, publish_address: str = "0.0.0.0", client=None):
        self.gpu_backend = gpu_backend
        self.publish_address = publish_address
        self._client = client
        self._network_lock = threading.Lock()
        self._networks: set[str] = set()  # networks known to exist (they are never removed)

    @property
    def client(self):
        if self._client is None:
            try:
                import docker

                self._client = docker.from_env(timeout=60)
                self._client.ping()
            except Exception as exc:
                self._client = None
                raise DockerUnavailable(f"no Docker Engine answers: {exc}") from exc
        return self._client

    # Reports ---------------------------------------------------------------------------------

    def managed_containers(self) -> list[ContainerInfo]:
        """Every container with our labels, whatever its state (from the list call alone)."""
        containers = self.client.api.containers(all=True, filters=MANAGED_FILTER)
        reports = []
        for item in containers:
            labels = item.get("Labels") or {}
            names = item.get("Names") or [""]
            reports.append(
                ContainerInfo(
                    id=item["Id"][:64],
                    name=names[0].lstrip("/")[:200],
                    environment=str(labels.get(LABEL_ENVIRONMENT, ""))[:64],
                    state=str(item.get("State", ""))[:20],
                    image=str(item.get("Image", ""))[:300],
                    created=int(item.get("Created", 0)),
                )
            )
        return sorted(reports, key=lambda report: report.name)

    def image_tags(self) -> list[str]:
        """References of the images this host holds (placement prefers hosts that have one)."""
        tags: list[str] = []
        for image in self.client.api.images():
            tags.extend(tag for tag in image.get("RepoTags") or [] if tag != "<none>:<none>")
        return sorted(tags)[:MAX_IMAGES_REPORTED]

    def events(self, stop: threading.Event) -> Iterator[dict[str, Any]]:
        """Docker's events for our containers until ``stop`` is set (the caller's thread)."""
        stream = self.client.events(decode=True, filters={"type": "container", **MANAGED_FILTER})
        try:
            for event in stream:
                if stop.is_set():
                    return
                yield event
        finally:
            stream.close()

    # Images ----------------------------------------------------------------------------------

    def image_present(self, reference: str) -> bool:
        import docker.errors

        try:
            self.client.api.inspect_image(reference)
        except docker.errors.ImageNotFound:
            return False
        return True

    def image_pull(
        self, reference: str, *, auth: dict[str, str] | None = None, report: Progress | None = None
    ) -> dict[str, Any]:
        """Pull ``reference`` (layers and bytes go to ``report`` as they move)."""
        import docker.errors

        repository, tag = split_reference(reference)
        progress = PullProgress(reference, report)
        try:
            stream = self.client.api.pull(
                repository, tag or None, stream=True, decode=True, auth_config=auth or None
            )
            for item in stream:
                progress.feed(item)
        except docker.errors.APIError as exc:
            raise PullError(exc.explanation or str(exc)) from exc
        figures = progress.figures()
        figures["phase"] = "pulled"
        if report is not None:
            report(figures)
        return figures

    # Environments ----------------------------------------------------------------------------

    def _find(self, environment_id: int):
        containers = self.client.containers.list(
            all=True,
            filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_ENVIRONMENT}={environment_id}"]},
        )
        return containers[0] if containers else None

    def _network(self, organization_id: int) -> str:
        name = network_name(organization_id)
        with self._network_lock:
            if name in self._networks:
                return name
            if not self.client.networks.list(names=[name]):
                self.client.networks.create(
                    name,
                    driver="bridge",
                    check_duplicate=True,
                    labels={LABEL_MANAGED: "true", LABEL_ORGANIZATION: str(organization_id)},
                )
            self._networks.add(name)
        return name

    def _volume(self, spec: EnvironmentRun) -> str:
        """Docker's volume create is idempotent: an existing volume of that name is kept."""
        name = volume_name(spec.environment_id)
        self.client.api.create_volume(
            name,
            labels={
                LABEL_MANAGED: "true",
                LABEL_ENVIRONMENT: str(spec.environment_id),
                LABEL_ORGANIZATION: str(spec.organization_id),
            },
        )
        return name

    def _gpu_settings(self, spec: EnvironmentRun) -> tuple[list, dict[str, str]]:
        """Device requests and variables for the GPUs: on ``nvml`` the NVIDIA runtime gets
        exactly these UUIDs; the ``fake`` back end has no devices to give, so the container
        only learns the UUIDs from its variables (``REMOTEGPU_GPU_BACKEND=fake`` says so)."""
        import docker.types

        env = {
            "REMOTEGPU_GPU_UUIDS": ",".join(spec.gpu_uuids),
            "REMOTEGPU_GPU_BACKEND": self.gpu_backend,
        }
        if self.gpu_backend != "nvml":
            return [], env
        if not spec.gpu_uuids:
            # CUDA images default to every GPU under the NVIDIA runtime: a CPU-only
            # environment must see none.
            env["NVIDIA_VISIBLE_DEVICES"] = "void"
            return [], env
        request = docker.types.DeviceRequest(
            driver="nvidia", device_ids=list(spec.gpu_uuids), capabilities=[["gpu"]]
        )
        return [request], env

    def create_arguments(self, spec: EnvironmentRun, network: str, volume: str) -> dict:
        """The container as ``containers.create`` takes it (pinned by a test)."""
        device_requests, gpu_env = self._gpu_settings(spec)
        return {
            "image": spec.image,
            "command": spec.command or None,
            "name": container_name(spec.environment_id),
            "hostname": container_name(spec.environment_id),
            "labels": {
                LABEL_MANAGED: "true",
                LABEL_ENVIRONMENT: str(spec.environment_id),
                LABEL_ORGANIZATION: str(spec.organization_id),
                LABEL_SPEC: spec_digest(spec),
                LABEL_GPU_BACKEND: self.gpu_backend,
                LABEL_GPUS: ",".join(spec.gpu_uuids),
            },
            "environment": {**spec.env, **gpu_env},
            "device_requests": device_requests,
            "nano_cpus": spec.nano_cpus or None,
            "mem_limit": spec.memory or None,
            "memswap_limit": spec.memory or None,  # no swap beyond the memory asked for
            "pids_limit": spec.pids_limit,
            "shm_size": spec.shm_size or None,
            "privileged": False,
            "security_opt": ["no-new-privileges:true"],
            "init": True,  # reaps zombies of whatever the image runs
            "restart_policy": {"Name": "unless-stopped"},
            "volumes": {volume: {"bind": WORKSPACE, "mode": "rw"}},
            "network": network,
            "ports": {
                f"{port.container_port}/{port.protocol}": (self.publish_address, port.host_port)
                for port in spec.ports
            },
            "detach": True,
        }

    def run(self, spec: EnvironmentRun, *, report: Progress | None = None) -> dict[str, Any]:
        """Make the environment's container run: pull if needed, create it (once), start it.
        A container made from another spec (other GPUs after a stop) is replaced; the volume
        stays."""
        import docker.errors

        existing = self._find(spec.environment_id)
        if existing is not None and existing.labels.get(LABEL_SPEC) != spec_digest(spec):
            existing.remove(force=True)
            existing = None
        pulled = None
        if existing is None:
            if not self.image_present(spec.image):
                pulled = self.image_pull(spec.image, auth=spec.registry_auth, report=report)
            if report is not None:
                report({"phase": "creating"})
            network = self._network(spec.organization_id)
            volume = self._volume(spec)
            try:
                existing = self.client.containers.create(
                    **self.create_arguments(spec, network, volume)
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a concurrent try made it; use that one
                    raise
                existing = self._find(spec.environment_id)
                if existing is None:
                    raise
        if existing.status != "running":
            existing.start()  # raises if it cannot: a started container is running
        return {
            "time": time.time(),
            "container_id": existing.id,
            "state": "running",
            "pulled": pulled,
        }

    def restart(self, environment_id: int) -> dict[str, Any]:
        container = self._find(environment_id)
        if container is None:
            raise LookupError("the environment has no container on this host")
        container.restart(timeout=STOP_TIMEOUT)
        return {"time": time.time(), "container_id": container.id}

    def stop(self, environment_id: int) -> dict[str, Any]:
        """Stop and remove the container; the volume (``/workspace``) stays."""
        import docker.errors

        container = self._find(environment_id)
        if container is None:
            return {"container": "absent"}
        try:
            container.stop(timeout=STOP_TIMEOUT)
            container.remove(force=True)
        except docker.errors.NotFound:
            return {"container": "absent"}
        return {"container": "removed"}

    def delete(self, environment_id: int) -> dict[str, Any]:
        """Remove the container and its volume: nothing of the environment is left."""
        import docker.errors

        result = self.stop(environment_id)
        try:
            self.client.volumes.get(volume_name(environment_id)).remove(force=True)
            result["volume"] = "removed"
        except docker.errors.NotFound:
            result["volume"] = "absent"
        return result

    def remove_container(self, container_id: str) -> dict[str, Any]:
        """Remove one managed container by id (an orphan); its volume goes with it when no
        environment of the control plane owns it."""
        import docker.errors

        try:
            container = self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return {"container": "absent"}
        if container.labels.get(LABEL_MANAGED) != "true":
            raise PermissionError("not a container this agent manages")
        container.remove(force=True)
        return {"container": "removed"}

    def logs(self, environment_id: int, tail: int) -> dict[str, Any]:
        container = self._find(environment_id)
        if container is None:
            return {"lines": [], "container": "absent"}
        raw = container.logs(tail=tail, timestamps=True)
        lines = raw.decode("utf-8", errors="replace").splitlines()
        return {"lines": [line[:LOG_LINE_MAX_CHARS] for line in lines[-tail:]]}
