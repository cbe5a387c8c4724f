"""onnxruntime sessions on a chosen device, and batched prediction: the one way every stage runs a model.

onnxruntime-gpu quietly falls back to the CPU when a CUDA or cuDNN library is missing, so the
providers a session actually runs are checked, not assumed. No TensorFlow here.
"""

from __future__ import annotations

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



def open_session(data: bytes, device: str, where: str) -> ort.InferenceSession:
    """A session on the requested device: `cpu`, `gpu` (CUDA or fail) or `auto` (CUDA, else CPU with a warning)."""
    import onnxruntime as ort

    cuda_built = CUDA in ort.get_available_providers()
    requested = [CUDA, CPU] if device != "cpu" and cuda_built else [CPU]
    try:
        session = ort.InferenceSession(data, providers=requested)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/RuntimeException types
        raise ModelFileError(f"model {where}: onnxruntime cannot load it ({str(e).strip().splitlines()[0]})") from None
    running = session.get_providers()
    if device != "cpu" and running[0] != CUDA:
        reason = (
            f"{CUDA} is not running (onnxruntime fell back to {running[0]}; its log above names the missing CUDA/cuDNN library)"
            if cuda_built
            else f"this onnxruntime build ({ort.__version__}) has no {CUDA}"
        )
        if device == "gpu":
            raise DeviceUnavailable(f"validate.device=gpu: {reason}")
        log.warning("validate.device=auto: %s; validating on the CPU", reason)
    log.info("onnxruntime %s: execution providers in use: %s", ort.__version__, ", ".join(running))
    return session


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
