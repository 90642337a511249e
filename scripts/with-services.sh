#!/usr/bin/env bash
# Run a command with embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set).
# Services this script started are stopped afterwards; ones already running (make run) are left.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if $PY -m remotegpu.core.embedded running; then
  "$@"
else
  $PY -m remotegpu.core.embedded start >/dev/null
  trap '$PY -m remotegpu.core.embedded stop' EXIT
  "$@"
fi
