"""Reduced-precision copies of the float model: INT8 for CPUs, FP16 for GPUs, both keeping the float32 serving signature.

INT8: onnxruntime's static quantization in QDQ format (what Triton's and KServe's onnxruntime
read, and what onnxruntime fuses into integer kernels), weights int8 per output channel,
activations uint8: on x86 onnxruntime's u8s8 kernels measured about twice the throughput of
s8s8 here at the same accuracy. Weights use 7 bits (reduce_range): on x86 CPUs without VNNI the
u8s8 kernels add pairs of products in 16 bits, which full-range weights can saturate, so a
model measured on one CPU scored otherwise on another (the reference model: 77.92 % INT8 on
AVX-512 hosts, 76.67 % on an AVX2-only one; with 7-bit weights 78.16 % there). Activation ranges
are calibrated (min/max) on a fixed, seeded sample of the *training* split only, so no test
image ever shapes the model it then grades.

FP16: `onnxruntime.transformers.float16` (shipped with onnxruntime itself: no extra dependency,
and the same release that validates the result) with `keep_io_types=True`, so the graph takes
and returns float32 like the float model and clients change nothing. onnxconverter-common's
converter is the same code, packaged separately.

Both conversions are deterministic: the same float model gives the same bytes, so a rerun finds
an already published variant by its sha256.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from job.models.contract import INPUT_NAME, scale
from job.data.dataset import CifarData

if TYPE_CHECKING:
    import onnx

CALIBRATION_BATCH = 64


def calibration_images(data: CifarData, count: int, seed: int) -> np.ndarray:
    """A seeded sample of the training split (at most all of it), in a fixed order."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(data.train_images), size=min(count, len(data.train_images)), replace=False)
    return data.train_images[np.sort(chosen)]


def to_int8(model: onnx.ModelProto, images: np.ndarray) -> bytes:
    """Static QDQ quantization calibrated on `images` (uint8 NHWC, scaled here as the model expects)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(images[i : i + CALIBRATION_BATCH] for i in range(0, len(images), CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: scale(batch)}

    with tempfile.TemporaryDirectory(prefix="cifar-job-int8-") as work:  # quantize_static reads and writes files
        source, target = Path(work) / "float.onnx", Path(work) / "int8.onnx"
        source.write_bytes(model.SerializeToString())
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(max(quiet, logging.ERROR))  # its "consider pre-processing" hint, on the root logger
        try:
            quantize_static(
                source, target, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
            )  # fmt: skip
        finally:
            logging.getLogger().setLevel(quiet)
        return target.read_bytes()


def to_fp16(model: onnx.ModelProto) -> bytes:
    """Weights and compute in float16; float32 inputs and outputs (casts at the edges)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    converted = convert_float_to_float16(copy, keep_io_types=True)
    OnnxModel.graph_topological_sort(converted.graph, is_deterministic=True)  # the input casts are appended last; the checker wants order
    return converted.SerializeToString()
