"""Real Docker parts for tests (ARCHITECTURE.md §8): the engine, a small image, a registry.

- :func:`require_docker` gives a Docker SDK client, or skips (locally) / fails (CI) the test.
- :func:`busybox_image` builds, once per engine, a tiny image from Debian's ``busybox-static``.
- :func:`start_registry` runs Debian's ``docker-registry`` (distribution v2) on loopback, with or
  without htpasswd auth; Docker treats 127.0.0.0/8 registries as insecure-allowed, so the engine
  needs no configuration to push to and pull from it.
- :func:`remove_labelled` force-removes what tests (or the code under test) created.

``scripts/docker-engine.sh`` (run by ``make test``) installs these parts and starts ``dockerd``.
Imported by tests only; it imports no app of the project.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from remotegpu.core.busybox_image import BUSYBOX, busybox_image_build
from remotegpu.core.testing import require_real_part

if TYPE_CHECKING:
    import docker

ENGINE_HINT = "scripts/docker-engine.sh, run as root, installs it and starts dockerd"
BUSYBOX_REPOSITORY = "remotegpu-test/busybox"
REGISTRY_BINARY = Path("/usr/bin/docker-registry")
MANAGED_LABEL = "remotegpu.managed"
START_TIMEOUT = 15.0


def require_docker() -> docker.DockerClient:
    """A client of the local Docker Engine; skips locally (fails in CI) when none answers."""
    try:
        import docker
    except ImportError:  # pragma: no cover - the agent's dependencies include it
        require_real_part(False, "the docker Python SDK", "pip install 'docker>=7.1'")
        raise
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as exc:  # no socket, connection refused, permission denied, ...
        require_real_part(False, f"a Docker Engine ({exc})", f"install docker.io ({ENGINE_HINT})")
        raise
    return client


def busybox_image(client: docker.DockerClient) -> str:
    """The tag of a small image made from ``busybox-static`` (built when the engine lacks it;
    see ``remotegpu.core.busybox_image``). ``remotegpu-test/busybox:latest`` points at it too."""
    require_real_part(BUSYBOX.is_file(), str(BUSYBOX), f"install busybox-static ({ENGINE_HINT})")
    return busybox_image_build(client, BUSYBOX_REPOSITORY)


def image_with_unique_layer(
    client: docker.DockerClient, base: str, repository: str, labels: dict[str, str] | None = None
) -> str:
    """``base`` plus a 256 KiB layer of random bytes that no engine has seen before, so that
    pulling it moves real bytes (a pull of layers the engine holds shows no progress)."""
    container = client.containers.run(
        base,
        ["sh", "-c", "head -c 262144 /dev/urandom > /payload"],
        detach=True,
        labels=labels or {},
    )
    try:
        if container.wait(timeout=30)["StatusCode"] != 0:
            raise RuntimeError(container.logs().decode(errors="replace"))
        container.commit(repository=repository, tag="1")
    finally:
        container.remove(force=True)
    return f"{repository}:1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _htpasswd_line(username: str, password: str) -> str:
    import bcrypt  # paramiko's dependency; the caller checks it is there

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    return f"{username}:{hashed}\n"


def _http_status(url: str) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass
class LocalRegistry:
    """A ``docker-registry`` process serving ``address`` (``127.0.0.1:PORT``) over plain HTTP."""

    address: str
    root: Path
    process: subprocess.Popen
    username: str | None = None
    password: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def auth_config(self) -> dict[str, str] | None:
        """For the SDK's ``auth_config=`` (``None`` when the registry takes anyone)."""
        if self.username is None:
            return None
        return {"username": self.username, "password": self.password or ""}

    def log(self) -> str:
        return (self.root / "registry.log").read_text(errors="replace")

    def push(self, client: docker.DockerClient, local_tag: str, repository: str, tag: str) -> str:
        """Push ``local_tag`` here as ``repository:tag``; returns ``ADDRESS/repository:tag``."""
        remote_repository = f"{self.address}/{repository}"
        client.images.get(local_tag).tag(remote_repository, tag)
        reference = f"{remote_repository}:{tag}"
        errors = [
            item.get("errorDetail", {}).get("message") or item["error"]
            for item in client.images.push(
                remote_repository, tag=tag, stream=True, decode=True, auth_config=self.auth_config
            )
            if "error" in item
        ]
        if errors:
            raise RuntimeError(f"pushing {reference} failed: {'; '.join(errors)}")
        return reference

    def remove_local_tags(self, client: docker.DockerClient) -> None:
        """Untag, in the engine, every image tag naming this registry (pushed or pulled)."""
        import docker

        for image in client.images.list():
            for image_tag in image.tags:
                if image_tag.startswith(f"{self.address}/"):
                    with contextlib.suppress(docker.errors.NotFound):
                        client.images.remove(image_tag, force=True)

    def stop(self, client: docker.DockerClient | None = None) -> None:
        """Stop the registry; with ``client``, also drop the engine's tags that name it."""
        if client is not None:
            self.remove_local_tags(client)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_registry(
    tmp_dir: Path | str, *, username: str | None = None, password: str | None = None
) -> LocalRegistry:
    """Run ``docker-registry serve`` on a free loopback port, its storage and log in ``tmp_dir``.

    With ``username`` and ``password`` it takes only them (htpasswd, basic auth; this needs the
    ``bcrypt`` module, and skips without it). Returns once ``GET /v2/`` answers. Stop it with
    :meth:`LocalRegistry.stop`.
    """
    require_real_part(
        REGISTRY_BINARY.is_file(), str(REGISTRY_BINARY), f"install docker-registry ({ENGINE_HINT})"
    )
    root = Path(tmp_dir)
    root.mkdir(parents=True, exist_ok=True)
    auth = ""
    if username is not None:
        try:
            import bcrypt  # noqa: F401
        except ImportError:
            import pytest

            pytest.skip("an htpasswd registry needs the bcrypt module (pip install bcrypt)")
        (root / "htpasswd").write_text(_htpasswd_line(username, password or ""))
        auth = f"auth:\n  htpasswd:\n    realm: remotegpu-test\n    path: {root / 'htpasswd'}\n"
    last_error = ""
    for _attempt in range(3):  # another process may take the free port before the registry does
        port = _free_port()
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n" + auth
        )
        with (root / "registry.log").open("ab") as log:
            process = subprocess.Popen(
                [str(REGISTRY_BINARY), "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        registry = LocalRegistry(f"127.0.0.1:{port}", root, process, username, password)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            # 200 without auth, 401 with it: either way the registry is serving.
            if _http_status(f"{registry.url}/v2/") in (200, 401):
                return registry
            time.sleep(0.1)
        registry.stop()
        last_error = registry.log()[-2000:]
    raise RuntimeError(f"docker-registry did not start:\n{last_error}")


def remove_labelled(client: docker.DockerClient, label: str = MANAGED_LABEL) -> int:
    """Force-remove the containers, volumes and ``rgpu-`` networks carrying ``label``.

    ``label`` is a key (any value) or ``key=value``. Returns how many objects were removed.
    """
    import docker

    filters = {"label": label}
    removed = 0
    for container in client.containers.list(all=True, filters=filters):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
            removed += 1
    for network in client.networks.list(filters=filters):
        if network.name.startswith("rgpu-"):
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()
                removed += 1
    for volume in client.volumes.list(filters=filters):
        with contextlib.suppress(docker.errors.NotFound):
            volume.remove(force=True)
            removed += 1
    return removed
