"""Production settings pass Django's deployment checklist and refuse to start insecurely."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[1]


def _manage(*args: str, **overrides: str | None) -> subprocess.CompletedProcess:
    """``manage.py`` under production settings, with nothing but the variables given here."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(ROOT)),
        "DJANGO_SETTINGS_MODULE": "remotegpu.settings.production",
        "SECRET_KEY": secrets.token_urlsafe(48),  # 64 characters
        "ALLOWED_HOSTS": "gpu.example.com",
        "DATABASE_URL": settings.DATABASE_URL,
        "REDIS_URL": settings.REDIS_URL,
    }
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_settings_pass_check_deploy():
    result = _manage("check", "--deploy", "--fail-level", "WARNING")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNINGS" not in output, output
    assert "System check identified no issues" in output, output


def test_collectstatic_builds_the_manifest_daphne_serves(tmp_path):
    """Every static file, vendored ones included, survives the manifest storage's checks (a
    file naming a missing file, such as an unvendored source map, would fail the deploy)."""
    result = _manage("collectstatic", "--no-input", STATIC_ROOT=str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]
    for name in ("machines/charts.js", "vendor/chartjs/chart.umd.js", "remotegpu/portal.css"):
        hashed = manifest[name]
        assert hashed != name
        assert (tmp_path / hashed).is_file()
        assert (tmp_path / f"{hashed}.gz").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"SECRET_KEY": None}, "SECRET_KEY must be set", id="no-secret-key"),
        pytest.param({"SECRET_KEY": ""}, "SECRET_KEY must be set", id="empty-secret-key"),
        pytest.param({"DEBUG": "true"}, "DEBUG must be off", id="debug-on"),
    ],
)
def test_production_settings_refuse_to_load(overrides, message):
    result = _manage("check", **overrides)
    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
