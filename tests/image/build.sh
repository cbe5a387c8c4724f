#!/usr/bin/env bash
# Build the image with buildah and run it the way the chart's pod does: the slow image check.
#
#   sudo bash tests/image/build.sh [gpu|cpu]        (default: cpu; IMAGE_WORK=/var/tmp/cifar-job-image;
#                                                    REUSE_IMAGE=1 skips the build when the tag exists)
#
# 1. Base: the Dockerfile's pinned python:3.11-slim-bookworm when its registry answers; otherwise
#    one made here with Debian's mmdebstrap (Debian's Python 3.11, the same major.minor and paths).
# 2. Build with `buildah bud --isolation chroot` (no daemon, no user namespaces needed), passing the
#    host's CA bundle and pip configuration as build secrets when they exist: the way to build
#    behind a TLS-intercepting proxy. Then check no layer holds them (tests/image/check_layers.py).
# 3. Run the image's own entrypoint and environment as uid 10001 on a read-only root, with a tmpfs
#    /tmp and a writable /data, doing a small `cifar-job run` on the CIFAR-10 archive to a published
#    model. podman/runc cannot run here, so the container is `buildah mount`ed and entered with
#    unshare (private mount and PID namespaces) + chroot.
# Needs root, ~8 GB (cpu) or ~25 GB (gpu; vfs stores every layer whole) under IMAGE_WORK.
# Prints `image-size-bytes=N`, `published=PATH` and `sbom-components=N` for tests/test_image.py.
set -euo pipefail
cd "$(dirname "$0")/../.."

VARIANT=${1:-cpu}
WORK=${IMAGE_WORK:-/var/tmp/cifar-job-image}
ARCHIVE=${CIFAR_ARCHIVE:-$PWD/../shared/data/cifar10/cifar-10-python.tar.gz}
ARCHIVE_SHA256=${CIFAR_ARCHIVE_SHA256:-none}
TAG=localhost/cifar-job:0.1.0-$VARIANT
# vfs: no overlay or fuse needed; its own storage root keeps the check apart from other images.
B=(buildah --storage-driver vfs --root "$WORK/storage" --runroot "$WORK/runroot")
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (buildah chroot isolation, mounts)" >&2; exit 1; }
[ -f "$ARCHIVE" ] || { echo "build.sh: no CIFAR-10 archive at $ARCHIVE (set CIFAR_ARCHIVE)" >&2; exit 1; }

missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "build.sh: installing ${missing[*]} from Debian (apt)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
mkdir -p "$WORK"

# 1. The base image.
PINNED=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
if timeout 60 "${B[@]}" pull -q "docker.io/library/$PINNED" >/dev/null 2>&1; then
  BASE=docker.io/library/$PINNED
else
  BASE=localhost/python:3.11-slim-bookworm
  if ! "${B[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    echo "build.sh: $PINNED cannot be pulled; making $BASE with mmdebstrap" >&2
    # passwd: groupadd/useradd for the image's user; python3.11-venv: `python -m venv` with pip.
    [ -s "$WORK/base.tar" ] || mmdebstrap --quiet --variant=apt \
      --include=python3.11,python3.11-venv,ca-certificates,passwd bookworm "$WORK/base.tar"
    c=$("${B[@]}" from scratch)
    "${B[@]}" add "$c" "$WORK/base.tar" /
    # The official image's `python` is on PATH at /usr/local/bin; the Dockerfile calls it so.
    "${B[@]}" run --isolation chroot "$c" -- ln -sf /usr/bin/python3.11 /usr/local/bin/python
    "${B[@]}" config --env PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
    "${B[@]}" commit -q "$c" "$BASE" >/dev/null
    "${B[@]}" rm "$c" >/dev/null
  fi
fi

# 2. Build. Secrets only when the host has them; pip.conf: $PIP_CONFIG_FILE, else /etc/pip.conf.
CA=/etc/ssl/certs/ca-certificates.crt
PIPCONF=${PIP_CONFIG_FILE:-/etc/pip.conf}
secrets=()
[ -s "$CA" ] && secrets+=(--secret "id=ca,src=$CA")
[ -s "$PIPCONF" ] && secrets+=(--secret "id=pipconf,src=$PIPCONF")
start=$(date +%s)
if [ -n "${REUSE_IMAGE:-}" ] && "${B[@]}" inspect --type image "$TAG" >/dev/null 2>&1; then
  echo "build.sh: REUSE_IMAGE set: using the existing $TAG" >&2
else
"${B[@]}" bud --isolation chroot --layers=false "${secrets[@]}" \
  --build-arg "PYTHON_IMAGE=$BASE" --build-arg "VARIANT=$VARIANT" -t "$TAG" .
fi
echo "build-seconds=$(( $(date +%s) - start ))"

# The secrets must be in no layer and nowhere in the image's config or history.
inspect=$("${B[@]}" inspect --type image "$TAG")
for needle in /run/secrets "$CA" "$PIPCONF"; do
  if grep -qF "$needle" <<< "$inspect"; then echo "build.sh: '$needle' is in the image's config" >&2; exit 1; fi
done
rm -rf "$WORK/oci"
"${B[@]}" push -q --disable-compression "$TAG" "oci:$WORK/oci:check" >/dev/null
base_layers=$("${B[@]}" inspect --type image --format '{{len .OCIv1.RootFS.DiffIDs}}' "$BASE")
python3 tests/image/check_layers.py "$WORK/oci" "$base_layers" "$CA" "$PIPCONF"
rm -rf "$WORK/oci"
"${B[@]}" images "$TAG"

# 3. Run the entrypoint as the pod does. /data stands for the claim (owned by uid 10001).
data=$WORK/data
rm -rf "$data" && mkdir -p "$data" && cp "$ARCHIVE" "$data/cifar-10-python.tar.gz" && chown -R 10001:10001 "$data"
c=$("${B[@]}" from -q "$TAG")
trap '"${B[@]}" umount "$c" >/dev/null 2>&1; "${B[@]}" rm "$c" >/dev/null 2>&1 || true' EXIT
rootfs=$("${B[@]}" mount "$c")
mkdir -p "$rootfs/data" "$rootfs/proc" "$rootfs/dev" "$rootfs/tmp"   # mount points, as a runtime makes them
# The image's own environment, entrypoint and user, from its OCI config.
config() { "${B[@]}" inspect --type image "$TAG" | python3 -c "import json,sys; c=json.load(sys.stdin)['OCIv1']['config']; $1"; }
mapfile -t env < <(config 'print("\n".join(c["Env"]))')
mapfile -t entrypoint < <(config 'print("\n".join(c["Entrypoint"]))')
user=$(config 'print(c["User"])')
[ "$user" = 10001:10001 ] || { echo "build.sh: the image runs as '$user', not 10001:10001" >&2; exit 1; }
start=$(date +%s)
env -i "${env[@]}" HOME=/tmp CIFAR_JOB_OUT=/data/runs/check CIFAR_JOB_DATA_CACHE_DIR=/data/cache \
  CIFAR_JOB_PUBLISH_ROOT=/data/models ROOTFS="$rootfs" DATA="$data" \
  unshare --mount --pid --fork --propagation private /bin/sh -ec '
    root=$(mktemp -d)
    mount --bind "$ROOTFS" "$root" && mount -o remount,bind,ro "$root"
    mount -t tmpfs -o size=1g,mode=1777 tmpfs "$root/tmp"
    mount --bind "$DATA" "$root/data"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    if touch "$root/usr/.probe" 2>/dev/null; then echo "build.sh: the root is writable" >&2; exit 1; fi
    exec chroot --userspec=10001:10001 "$root" "$@"
  ' sh "${entrypoint[@]}" run --data /data/cifar-10-python.tar.gz --checksum "$ARCHIVE_SHA256" --epochs 1 \
      --set data.train_limit=500 --set data.test_limit=200 --set export.parity_images=50 \
      --set gate.min_accuracy=0 --set gate.min_weighted_f1=0
echo "run-seconds=$(( $(date +%s) - start ))"
model=$(find "$data/models" -name model.onnx -path '*/[0-9]*/model.onnx' | head -n 1)
[ -n "$model" ] || { echo "build.sh: no published model under $data/models" >&2; exit 1; }
[ "$(stat -c %u "$model")" = 10001 ] || { echo "build.sh: $model is not owned by uid 10001" >&2; exit 1; }
echo "published=$model"
# The image's SBOM lists what it runs, and the published sidecar names that very file by its sha256.
python3 - "$rootfs/opt/cifar-job/sbom.cdx.json" "$(dirname "$model")/metadata.json" <<'PY'
import hashlib, json, sys
raw = open(sys.argv[1], "rb").read()
sbom, runtime = json.loads(raw), json.load(open(sys.argv[2]))["provenance"]["runtime"]
missing = {"cifar-job", "tensorflow", "onnxruntime-gpu", "model-signing"} - {c["name"] for c in sbom["components"]}
assert sbom["bomFormat"] == "CycloneDX" and not missing, f"the SBOM lacks {missing}"
expected = {"path": "/opt/cifar-job/sbom.cdx.json", "sha256": hashlib.sha256(raw).hexdigest(), "format": "CycloneDX JSON"}
assert runtime["sbom"] == expected, f"the sidecar names {runtime['sbom']}, not the image's SBOM"
print(f"sbom-components={len(sbom['components'])}")
PY
