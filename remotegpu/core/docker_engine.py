"""``make run``'s Docker Engine: started when installed but not running (as root), then the
demo image built in it, so that a newcomer can start an environment at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from .busybox_image import busybox_image_build

DEMO_REPOSITORY = "remotegpu-demo/busybox"
START_TIMEOUT = 30.0
INSTALL_HINT = (
    "No Docker Engine answers on this machine: environments cannot run here until one does. "
    "Install it (Debian: apt-get install docker.io busybox-static) and run make run again."
)


def _client():
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception:  # no socket, refused, no permission: no engine for us
        return None
    return client


def engine_ensure(log_path: Path) -> tuple[object | None, str]:
    """A Docker client, starting ``dockerd`` (detached, logging to ``log_path``) when it is
    installed, not running and we are root; else ``None`` and what to do about it."""
    client = _client()
    if client is not None:
        return client, ""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        return None, INSTALL_HINT
    if os.geteuid() != 0:
        return (
            None,
            "dockerd is installed but not running; start it (sudo dockerd) to run environments.",
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [dockerd], stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        client = _client()
        if client is not None:
            return client, f"started dockerd (log: {log_path})"
        time.sleep(0.5)
    return None, f"dockerd did not answer within {START_TIMEOUT:.0f} s (see {log_path})"


def demo_image(client) -> tuple[str | None, str]:
    """The demo image's tag, built from busybox-static; ``None`` and why when it cannot be."""
    try:
        return busybox_image_build(client, DEMO_REPOSITORY), ""
    except FileNotFoundError as exc:
        return None, f"no demo image: {exc}"
