# cifar-job: `cifar-job run` (train, export, validate, publish) on NVIDIA GPUs or on CPU.
#
#   docker build -t cifar-job:0.1.0 .            (or: buildah bud -t cifar-job:0.1.0 .)
#   docker run --rm --gpus all -v "$PWD/runs:/data" -e CIFAR_JOB_OUT=/data/run cifar-job:0.1.0
#
# CUDA: one major, 12, for both frameworks. TensorFlow 2.21's [and-cuda] wheels bring CUDA 12.9
# and cuDNN 9 for CUDA 12; onnxruntime-gpu 1.26.0 is the newest release built for CUDA 12
# (1.27 and later link CUDA 13). The CUDA 12 and 13 runtimes could coexist, but cuDNN cannot:
# nvidia-cudnn-cu12 and nvidia-cudnn-cu13 install the same nvidia/cudnn/lib/libcudnn.so.9, and
# one process (`run` trains, then validates) loads only one libcudnn.so.9. CUDA 12 also runs
# on older node drivers (R525 and later; CUDA 13 needs R580). No CUDA base image is needed:
# the libraries come as pinned wheels and the node's driver is mounted by the NVIDIA runtime.
# The same image runs on CPU: TensorFlow and onnxruntime fall back when no GPU is visible.
#
# Reproducible: the base image by version (pin its digest with @sha256 for releases), every
# Python package by version and hash (.ci/image-requirements.txt, compiled from pyproject.toml
# and .ci/image.in by the command in its header).

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Dependencies first, in their own layer: rebuilt only when the lock changes.
COPY .ci/image-requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --no-deps --require-hashes -r /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY job ./job
COPY export ./export
# The project itself, built with the lock's setuptools; then prove the environment is
# consistent and drop the installer, which the runtime does not need.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/python -m pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="cifar-job" \
      org.opencontainers.image.description="Train the reference CIFAR-10 CNN, export, validate and publish it as ONNX" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 cifar \
 && useradd --system --uid 10001 --gid cifar --home-dir /home/cifar --create-home --shell /usr/sbin/nologin cifar
COPY --from=build /opt/venv /opt/venv
# onnxruntime's CUDA provider finds the pip-installed CUDA libraries through LD_LIBRARY_PATH
# (TensorFlow finds the same ones through its RUNPATH); /usr/local/nvidia/lib64 is where GKE
# mounts the node's driver.
ENV PATH=/opt/venv/bin:/usr/local/nvidia/bin:$PATH \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cufft/lib:/opt/venv/lib/python3.11/site-packages/nvidia/curand/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib:/opt/venv/lib/python3.11/site-packages/nvidia/nvjitlink/lib:/usr/local/nvidia/lib64 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    MPLBACKEND=Agg
USER 10001:10001
WORKDIR /home/cifar
ENTRYPOINT ["cifar-job"]
CMD ["run"]
