#!/usr/bin/env bash
# The real parts integration tests need: Chromium (Playwright drives it), OpenSSH's ssh-keygen,
# gettext's msgfmt, Prometheus's promtool (it checks the /metrics exposition) and OpenSSH's sshd
# (onboarding over SSH signs in to it on loopback as the dedicated user rgpu-onboard), and rsync
# (the SSH gateway's tests copy with it).
# Installed from Debian's packages when missing and we are root (CI always is); locally the tests
# that need a missing part skip with a message instead.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
command -v msgfmt >/dev/null 2>&1 || missing+=(gettext)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
if [ ${#missing[@]} -eq 0 ]; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} (for the integration tests)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
elif [ "${CI:-}" = "true" ]; then
  echo "CI needs ${missing[*]} but cannot install them (not root or no apt-get)" >&2
  exit 1
else
  echo "note: ${missing[*]} not installed; tests that need them will be skipped" >&2
fi
# The onboarding test's SSH user, made once; its password is random here and set again, at
# random, by the test itself (an account without one is locked, and sshd refuses it).
if [ "$(id -u)" = 0 ] && ! id rgpu-onboard >/dev/null 2>&1; then
  useradd --create-home --shell /bin/sh rgpu-onboard
  echo "rgpu-onboard:$(head -c 24 /dev/urandom | base64)" | chpasswd
fi
# The Docker Engine, registry and busybox the environment tests drive; dockerd started if needed.
bash "$(dirname "$0")/docker-engine.sh"
