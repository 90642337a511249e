#!/usr/bin/env bash
# Run a command with embedded PostgreSQL and Redis (unless DATABASE_URL / REDIS_URL are set),
# stopping them again afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -m remotegpu.core.embedded start >/dev/null
trap '$PY -m remotegpu.core.embedded stop' EXIT
"$@"
