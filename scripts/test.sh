#!/usr/bin/env bash
# `make test`: install the real parts the tests use (in CI), start embedded services, run the
# static checks and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
bash scripts/install-test-deps.sh
export DJANGO_SETTINGS_MODULE=remotegpu.settings.test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec bash scripts/with-services.sh bash -c '
  .venv/bin/python manage.py makemigrations --check --dry-run >/dev/null &&
  .venv/bin/python -m pytest "$@"' pytest "$@"
