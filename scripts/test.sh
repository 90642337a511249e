#!/usr/bin/env bash
# `make test`: install the real parts the tests use (in CI), start embedded services, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
bash scripts/install-test-deps.sh
export DJANGO_SETTINGS_MODULE=remotegpu.settings.test
$PY -m remotegpu.core.embedded start >/dev/null
trap '$PY -m remotegpu.core.embedded stop' EXIT
.venv/bin/ruff check .
.venv/bin/ruff format --check .
$PY manage.py makemigrations --check --dry-run --settings=remotegpu.settings.test >/dev/null
$PY -m pytest "$@"
