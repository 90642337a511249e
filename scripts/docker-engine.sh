#!/usr/bin/env bash
# The Docker Engine the environment tests drive (ARCHITECTURE.md §8): Debian's docker.io, the
# docker-registry (distribution v2) they push to and pull from on loopback, busybox-static,
# the root of the small test image, and debootstrap, the root of the Debian test images. Installed when missing and we are root with apt-get (CI);
# then dockerd is started, detached, when no engine answers. Idempotent: run it as often as you
# like. Locally, without the engine, the tests that need it skip; in CI (CI=true) this fails.
set -euo pipefail
LOG=${REMOTEGPU_DOCKERD_LOG:-/var/log/remotegpu-dockerd.log}
is_root() { [ "$(id -u)" = 0 ]; }
ci_or_note() {
  if [ "${CI:-}" = "true" ]; then
    echo "CI needs a Docker Engine: $1" >&2
    exit 1
  fi
  echo "note: $1; tests that drive Docker will be skipped" >&2
  exit 0
}

# A static docker CLI may sit in /usr/local/bin without any engine: look for dockerd itself.
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
[ -x /bin/busybox ] || missing+=(busybox-static)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if is_root && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (for the Docker tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # Without a service manager the packages' maintainer scripts start nothing ("could not
    # determine current runlevel"); dockerd is started below, the registry by the tests.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  elif [ "${CI:-}" = "true" ]; then
    echo "CI needs ${missing[*]} but cannot install them (not root or no apt-get)" >&2
    exit 1
  else
    echo "note: ${missing[*]} not installed; tests that need them will be skipped" >&2
  fi
fi

if docker info >/dev/null 2>&1; then
  exit 0
fi
command -v docker >/dev/null 2>&1 || ci_or_note "no docker CLI (install docker.io)"
command -v dockerd >/dev/null 2>&1 || ci_or_note "dockerd is not installed (install docker.io)"
is_root || ci_or_note "no Docker Engine answers and only root can start dockerd"

# An engine may be starting already (a previous run of this script): wait for it rather than
# start a second one, which would fail on its pid file (procps's pgrep may be absent).
pid=$(cat /var/run/docker.pid 2>/dev/null || true)
if [ -z "$pid" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" != dockerd ]; then
  echo "starting dockerd (log: $LOG)"
  mkdir -p "$(dirname "$LOG")"
  # setsid: its own session, so it outlives this script and the process group `make test` runs
  # in. Its stdin is closed, its output goes to the log only.
  setsid dockerd >>"$LOG" 2>&1 </dev/null &
  disown || true
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
tail -n 20 "$LOG" >&2 2>/dev/null || true
ci_or_note "dockerd did not answer within 30 s (see $LOG)"
