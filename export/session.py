"""onnxruntime sessions on a chosen device, and batched prediction: the one way every stage runs a model.

onnxruntime-gpu quietly falls back to the CPU when a CUDA or cuDNN library is missing, so the
providers a session actually runs are checked, not assumed. On a machine with no NVIDIA driver at
all, CUDA is not even tried: onnxruntime would print a block of "Failed to load library" errors
before falling back, where one line saying the CPU is used is the whole story. No TensorFlow here.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from job.models.contract import INPUT_NAME, OUTPUT_NAME, scale
from job.core.errors import DeviceUnavailable, ModelFileError

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
NVIDIA_DRIVER = "libcuda.so.1"  # the driver's user-space library: present wherever a GPU can be used


def nvidia_driver_present() -> bool:
    """Whether the NVIDIA driver's library loads: without it no CUDA provider can run."""
    try:
        ctypes.CDLL(NVIDIA_DRIVER)
    except OSError:
        return False
    return True



def open_session(data: bytes, device: str, where: str) -> ort.InferenceSession:
    """A session on the requested device: `cpu`, `gpu` (CUDA or fail) or `auto` (CUDA, else CPU with a warning)."""
    import onnxruntime as ort

    cuda_built = CUDA in ort.get_available_providers()
    driver = nvidia_driver_present()
    requested = [CUDA, CPU] if device != "cpu" and cuda_built and driver else [CPU]
    try:
        session = ort.InferenceSession(data, providers=requested)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        raise ModelFileError(f"model {where}: onnxruntime cannot load it ({str(e).strip().splitlines()[0]})") from None
    running = session.get_providers()
    if device != "cpu" and running[0] != CUDA:
        if not cuda_built:
            reason = f"this onnxruntime build ({ort.__version__}) has no {CUDA}"
        elif not driver:
            reason = f"no NVIDIA driver on this machine ({NVIDIA_DRIVER} not found)"
        else:
            reason = f"{CUDA} is not running (onnxruntime fell back to {running[0]}; its log above names the missing CUDA/cuDNN library)"
        if device == "gpu":
            raise DeviceUnavailable(f"validate.device=gpu: {reason}")
        _warn_once(f"validate.device=auto: {reason}; validating on the CPU")
    log.info("onnxruntime %s: execution providers in use: %s", ort.__version__, ", ".join(running))
    return session


@functools.cache
def _warn_once(message: str) -> None:
    """A run opens several sessions (parity, validation, publishing, variants): the CPU fallback is said once."""
    log.warning(message)


def predict(session: ort.InferenceSession, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, list[float]]:
    """Probabilities for uint8 NHWC `images`, and the seconds each batch's `run` took (after one warm-up)."""
    session.run([OUTPUT_NAME], {INPUT_NAME: scale(images[:batch_size])})  # allocations, kernel selection
    outputs, latencies = [], []
    for start in range(0, len(images), batch_size):
        batch = scale(images[start : start + batch_size])
        began = time.perf_counter()
        (probabilities,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        latencies.append(time.perf_counter() - began)
        outputs.append(probabilities)
    return np.concatenate(outputs), latencies
