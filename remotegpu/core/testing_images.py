"""Test images too big to make at every run: built once per engine, tagged by a hash of what
goes into them, so a fresh clone (CI) on the same engine finds them ready.

- :func:`jupyter_image`: a Debian root from ``debootstrap`` (with rsync) and JupyterLab
  installed in a venv from wheels downloaded on the host (containers reach no network). About a
  minute the first time: debootstrap ~40 s, the wheels ~10 s, the install ~15 s.

Imported by tests only (root, ``debootstrap``, Debian's mirror and PyPI on the host).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from remotegpu.core.testing import require_real_part

if TYPE_CHECKING:
    import docker

DEBOOTSTRAP = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# rsync: the SSH gateway's tests copy with it (it has to be on both ends).
DEBIAN_PACKAGES = ("python3", "python3-venv", "rsync")
JUPYTERLAB = "jupyterlab==4.6.6"
JUPYTER_REPOSITORY = "remotegpu-test/jupyterlab"
JUPYTER_PORT = 8888
# The server takes its token from JUPYTER_TOKEN (the environment's, set by the control plane).
JUPYTER_COMMAND = [
    "/opt/jupyter/bin/jupyter",
    "lab",
    "--ip=0.0.0.0",
    f"--port={JUPYTER_PORT}",
    "--no-browser",
    "--allow-root",
    "--ServerApp.root_dir=/workspace",
]
INSTALL = (
    "python3 -m venv /opt/jupyter && "
    f"/opt/jupyter/bin/pip install --quiet --no-index --find-links /wheels '{JUPYTERLAB}'"
)


def _tag() -> str:
    inputs = [DEBIAN_SUITE, *DEBIAN_PACKAGES, JUPYTERLAB, INSTALL, *JUPYTER_COMMAND]
    return f"{JUPYTER_REPOSITORY}:{hashlib.sha256(repr(inputs).encode()).hexdigest()[:12]}"


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def jupyter_image(client: docker.DockerClient) -> str:
    """The tag of the JupyterLab test image, built if this engine lacks it."""
    import docker.errors

    tag = _tag()
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    require_real_part(
        Path(DEBOOTSTRAP).is_file(),
        "debootstrap",
        "install debootstrap (scripts/docker-engine.sh, run as root, does)",
    )
    with tempfile.TemporaryDirectory(prefix="rgpu-jupyter-") as work:
        root, wheels = Path(work) / "root", Path(work) / "wheels"
        _run(
            [
                DEBOOTSTRAP,
                "--variant=minbase",
                f"--include={','.join(DEBIAN_PACKAGES)}",
                DEBIAN_SUITE,
                str(root),
                DEBIAN_MIRROR,
            ],
            "debootstrap",
        )
        # Wheels for the image's Python (Debian bookworm: CPython 3.11 on this architecture).
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--dest",
                str(wheels),
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--platform",
                "manylinux2014_x86_64",
                "--platform",
                "manylinux_2_17_x86_64",
                "--platform",
                "manylinux_2_28_x86_64",
                JUPYTERLAB,
            ],
            "pip download",
        )
        base_repository, version = f"{JUPYTER_REPOSITORY}-base", tag.rsplit(":", 1)[1]
        base = f"{base_repository}:{version}"
        archive = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            client.api.import_image_from_stream(
                archive.stdout, repository=base_repository, tag=version
            )
        finally:
            archive.stdout.close()
            archive.wait()
        builder = client.containers.run(
            base,
            ["sh", "-c", INSTALL],
            detach=True,
            network_disabled=True,
            volumes={str(wheels): {"bind": "/wheels", "mode": "ro"}},
        )
        try:
            status = builder.wait(timeout=600)["StatusCode"]
            if status != 0:
                raise RuntimeError(builder.logs().decode(errors="replace")[-4000:])
            builder.commit(
                repository=JUPYTER_REPOSITORY,
                tag=version,
                changes=[
                    f"CMD {JUPYTER_COMMAND!r}".replace("'", '"'),
                    "WORKDIR /workspace",
                    "ENV PATH=/opt/jupyter/bin:/usr/local/bin:/usr/bin:/bin",
                ],
            )
        finally:
            builder.remove(force=True)
            client.images.remove(base, force=True)
    return tag
