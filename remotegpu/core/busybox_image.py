"""A tiny image made from Debian's ``busybox-static``: the demo's image (``make run``) and the
tests'. Built with ``docker import`` (no network, no registry), tagged by a hash of its inputs
so that an engine that already holds it never builds it again.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = (
    "sh", "ls", "cat", "echo", "sleep", "mkdir", "httpd", "nc", "env", "id", "touch", "rm",
    "printf", "test", "true", "false", "ps", "kill", "date", "head", "tail", "grep", "wc",
)  # fmt: skip
# Bumped when the image's layout (the files besides the applets) changes: a new tag follows.
_LAYOUT = "1"


def busybox_tag(repository: str) -> str:
    digest = hashlib.sha256(BUSYBOX.read_bytes())
    digest.update(("\n".join(BUSYBOX_APPLETS) + "\n" + _LAYOUT).encode())
    return f"{repository}:{digest.hexdigest()[:12]}"


def _tar_add(tar: tarfile.TarFile, name: str, *, data: bytes | None = None, **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0  # the same input gives the same layer
    for key, value in attrs.items():
        setattr(info, key, value)
    if data is not None:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def _rootfs() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "etc", "root", "www"):
            _tar_add(tar, directory, type=tarfile.DIRTYPE, mode=0o755)
        _tar_add(tar, "tmp", type=tarfile.DIRTYPE, mode=0o1777)
        _tar_add(tar, "bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755)
        for applet in BUSYBOX_APPLETS:
            _tar_add(tar, f"bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        _tar_add(tar, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", mode=0o644)
        _tar_add(tar, "etc/group", data=b"root:x:0:\n", mode=0o644)
    return buffer.getvalue()


def busybox_image_build(client, repository: str) -> str:
    """``repository:<hash>`` (and ``repository:latest``), imported into the engine unless it
    holds it already. The image has ``/bin`` (busybox and ``BUSYBOX_APPLETS``), ``/etc/passwd``
    for root, an empty ``/www`` and ``/tmp``; its command is ``/bin/sh``. Raises
    ``FileNotFoundError`` without ``/bin/busybox`` (Debian's ``busybox-static``)."""
    import docker

    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} (install busybox-static)")
    tag = busybox_tag(repository)
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        _, version = tag.split(":")
        client.api.import_image_from_data(
            _rootfs(), repository=repository, tag=version, changes=['CMD ["/bin/sh"]']
        )
        image = client.images.get(tag)
    if f"{repository}:latest" not in image.tags:
        image.tag(repository, "latest")
    return tag
