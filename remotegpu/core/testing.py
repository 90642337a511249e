"""Shared test helpers (imported by tests only)."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_real_part(available: bool, what: str, install_hint: str) -> None:
    """Skip locally when a real part is missing; fail in CI, where a skip would hide it."""
    if available:
        return
    message = f"{what} is not available: {install_hint}"
    if in_ci():
        pytest.fail(f"CI requires {message}", pytrace=False)
    pytest.skip(message)


def require_executable(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    require_real_part(path is not None, name, install_hint)
    return path  # type: ignore[return-value]
