# cifar-job: `cifar-job run` (train, export, validate, publish) on NVIDIA GPUs or on CPU.
#
#   docker build -t cifar-job:0.1.0 .                                 (GPU image, the default)
#   docker build --build-arg VARIANT=cpu -t cifar-job:0.1.0-cpu .     (CPU image: no CUDA wheels)
#   docker run --rm --gpus all -v "$PWD/runs:/data" -e CIFAR_JOB_OUT=/data/run cifar-job:0.1.0
#
# Behind a TLS-intercepting proxy, pass the CA bundle and pip's configuration as build secrets
# (never written into a layer): --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt
# --secret id=pipconf,src=/etc/pip.conf. tests/image/build.sh does this with buildah.
#
# CUDA: one major, 12, for both frameworks. TensorFlow 2.21's [and-cuda] wheels bring CUDA 12.9
# and cuDNN 9 for CUDA 12; onnxruntime-gpu 1.26.0 is the newest release built for CUDA 12
# (1.27 and later link CUDA 13). The CUDA 12 and 13 runtimes could coexist, but cuDNN cannot:
# nvidia-cudnn-cu12 and nvidia-cudnn-cu13 install the same nvidia/cudnn/lib/libcudnn.so.9, and
# one process (`run` trains, then validates) loads only one libcudnn.so.9. CUDA 12 also runs
# on older node drivers (R525 and later; CUDA 13 needs R580). No CUDA base image is needed:
# the libraries come as pinned wheels and the node's driver is mounted by the NVIDIA runtime.
# VARIANT=cpu installs .ci/image-requirements-cpu.txt instead: the same versions without the
# CUDA and cuDNN wheels, for CPU-only nodes (TensorFlow and onnxruntime run on their CPU kernels).
#
# Reproducible: the base image by digest, every Python package by version and hash
# (.ci/image-requirements.txt and .ci/image-requirements-cpu.txt, compiled from pyproject.toml
# with its mlflow extra, the MLflow client, and .ci/image.in / .ci/image-cpu.in by the command in
# each file's header).
# The base digest is that of the multi-architecture index of python:3.11.14-slim-bookworm. To
# update it: `crane digest python:3.11.14-slim-bookworm` (or `docker buildx imagetools inspect`,
# `skopeo inspect --format '{{.Digest}}' docker://python:3.11.14-slim-bookworm`), put tag and
# digest below, build, and rerun the image check (tests/image/build.sh).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
# gpu (CUDA 12 wheels) or cpu (none).
ARG VARIANT=gpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Dependencies first, in their own layer: rebuilt only when the lock changes. With them, in its own
# environment, the SBOM generator (cyclonedx-bom, from its own hashed lock), which runs once below.
COPY .ci/image-requirements.txt /tmp/requirements-gpu.txt
COPY .ci/image-requirements-cpu.txt /tmp/requirements-cpu.txt
COPY .ci/sbom-requirements.txt /tmp/requirements-sbom.txt
# The CA bundle and pip.conf are secrets: mounted for this step only when the build passes them,
# so a proxy's CA or an index's credentials never reach a layer. Environment variables beat
# pip.conf, so PIP_CERT points pip at the mounted bundle whatever the config's `cert` says.
RUN --mount=type=secret,id=ca,target=/run/secrets/ca.crt \
    --mount=type=secret,id=pipconf,target=/run/secrets/pip.conf \
    case "${VARIANT}" in gpu|cpu) ;; *) echo "VARIANT must be gpu or cpu, not '${VARIANT}'" >&2; exit 2 ;; esac \
 && if [ -s /run/secrets/pip.conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip.conf; fi \
 && if [ -s /run/secrets/ca.crt ]; then export PIP_CERT=/run/secrets/ca.crt; fi \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps --require-hashes -r "/tmp/requirements-${VARIANT}.txt" \
 && python -m venv /opt/sbom-tool \
 && /opt/sbom-tool/bin/pip install --no-cache-dir --no-deps --require-hashes -r /tmp/requirements-sbom.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY job ./job
COPY export ./export
# job/kube/chart links here: the chart is installed into the package with it.
COPY charts/cifar-job ./charts/cifar-job
# The project itself, built with the lock's setuptools; then prove the environment is consistent,
# drop the installer, which the runtime does not need, and write the SBOM: CycloneDX JSON of every
# Python package in /opt/venv, cifar-job included. The runtime finds it through CIFAR_SBOM and names
# it, with its sha256, in every model card and sidecar (export/software.py).
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -m pip uninstall --yes pip \
 && mkdir -p /opt/cifar-job \
 && /opt/sbom-tool/bin/cyclonedx-py environment --output-reproducible --of JSON -o /opt/cifar-job/sbom.cdx.json /opt/venv

FROM ${PYTHON_IMAGE}
ARG VARIANT=gpu
LABEL org.opencontainers.image.title="cifar-job" \
      org.opencontainers.image.version="0.1.0-${VARIANT}" \
      org.opencontainers.image.description="Train the reference CIFAR-10 CNN, export, validate and publish it as ONNX" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 cifar \
 && useradd --system --uid 10001 --gid cifar --home-dir /home/cifar --create-home --shell /usr/sbin/nologin cifar
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/cifar-job/sbom.cdx.json /opt/cifar-job/sbom.cdx.json
# onnxruntime's CUDA provider finds the pip-installed CUDA libraries through LD_LIBRARY_PATH
# (TensorFlow finds the same ones through its RUNPATH); /usr/local/nvidia/lib64 is where GKE
# mounts the node's driver.
ENV PATH=/opt/venv/bin:/usr/local/nvidia/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cufft/lib:/opt/venv/lib/python3.11/site-packages/nvidia/curand/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib:/opt/venv/lib/python3.11/site-packages/nvidia/nvjitlink/lib:/usr/local/nvidia/lib64 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    MPLBACKEND=Agg \
    CIFAR_SBOM=/opt/cifar-job/sbom.cdx.json
USER 10001:10001
WORKDIR /home/cifar
ENTRYPOINT ["cifar-job"]
CMD ["run"]
