"""The agent as a wheel this server serves, so a host being onboarded installs exactly the agent
that matches this control plane, from this control plane.

The wheel is built on first request from ``agent/`` (``pip wheel --no-deps
--no-build-isolation``: setuptools is one of the server's dependencies, so no index is needed)
into a cache folder keyed by a digest of the agent's sources: a changed agent gets a new wheel,
an unchanged one is built once.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils.translation import gettext as _

from remotegpu.core.errors import ApplicationError, NotFound

BUILD_TIMEOUT = 120  # seconds


class AgentBuildError(ApplicationError):
    code = "agent_build_failed"
    status_code = 500


@dataclass(frozen=True)
class AgentWheel:
    version: str
    filename: str
    path: Path


def agent_source_dir() -> Path:
    return Path(getattr(settings, "AGENT_SOURCE_DIR", settings.BASE_DIR / "agent"))


def _cache_dir() -> Path:
    return Path(getattr(settings, "AGENT_WHEEL_DIR", Path(settings.MEDIA_ROOT) / "agent"))


def _sources(source: Path) -> list[Path]:
    package = source / "remotegpu_agent"
    files = [path for path in package.rglob("*.py") if "__pycache__" not in path.parts]
    return [source / "pyproject.toml", *sorted(files)]


def agent_version() -> str:
    """The version ``agent/pyproject.toml`` declares: the one its wheel carries."""
    pyproject = agent_source_dir() / "pyproject.toml"
    try:
        return tomllib.loads(pyproject.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise NotFound(_("The agent's sources are not available on this server.")) from exc


def wheel_filename(version: str) -> str:
    return f"remotegpu_agent-{version}-py3-none-any.whl"


def _digest(source: Path) -> str:
    digest = hashlib.sha256()
    for path in _sources(source):
        digest.update(str(path.relative_to(source)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _build(source: Path, target: Path, filename: str) -> None:
    """Build in a copy of the sources, so the checkout gets no build/ or egg-info folders."""
    with tempfile.TemporaryDirectory(prefix="agent-wheel-") as work:
        copy = Path(work) / "src"
        copy.mkdir()
        shutil.copy2(source / "pyproject.toml", copy / "pyproject.toml")
        shutil.copytree(
            source / "remotegpu_agent",
            copy / "remotegpu_agent",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
        out = Path(work) / "out"
        try:
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "--no-deps",
                    "--no-build-isolation",
                    "--no-cache-dir",
                    "--disable-pip-version-check",
                    "--quiet",
                    "--wheel-dir",
                    str(out),
                    str(copy),
                ],
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise AgentBuildError(_("Building the agent's wheel timed out.")) from exc
        built = out / filename
        if result.returncode != 0 or not built.is_file():
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise AgentBuildError(
                _("Building the agent's wheel failed: %(detail)s") % {"detail": detail[0]}
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        shutil.copy2(built, partial)
        partial.replace(target)  # atomic: a reader sees the whole wheel or none


def agent_wheel_get(version: str) -> AgentWheel:
    """The agent's wheel for ``version`` (the current one only), built if not built yet."""
    current = agent_version()
    if version != current:
        raise NotFound(_("This server serves agent %(version)s only.") % {"version": current})
    source = agent_source_dir()
    filename = wheel_filename(current)
    folder = _cache_dir() / _digest(source)
    path = folder / filename
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # One build at a time, across processes; whoever waited finds the wheel built.
        with (folder / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.is_file():
                _build(source, path, filename)
    return AgentWheel(version=current, filename=filename, path=path)
