"""What training computes in: reduced precision only where the hardware has instructions for it.

`train.mixed_precision` pays on GPUs (float16) and on CPUs with bfloat16 instructions (x86's
AVX512-BF16 or AMX, Arm's BF16). Other CPUs emulate bfloat16: on an AVX2-only AMD EPYC,
`cifar-job bench` measured airbench/wide at 3.9 training images/s in bfloat16 against 54.2 in
float32, so there training computes in float32 and says so. Variables stay float32 either way,
so a checkpoint resumes under either precision.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CPU_INFO = Path("/proc/cpuinfo")  # Linux; elsewhere absent, and the CPU counts as lacking bfloat16
CPU_INFO_BYTES = 1 << 16  # the first processor's block, flags included, is a few KiB
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 `flags`; Arm's `Features` say bf16


def has_bfloat16_instructions(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo text names a bfloat16 instruction set on its flags (x86) or Features (Arm) line."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and BFLOAT16_FLAGS.intersection(value.split()):
            return True
    return False


def _cpuinfo() -> str:
    try:
        with open(CPU_INFO, encoding="ascii", errors="replace") as f:
            return f.read(CPU_INFO_BYTES)
    except OSError:
        return ""


def reduced_dtype(device: str) -> str:
    """The device's reduced-precision float: float16 on GPUs, bfloat16 on CPUs (emulated or not)."""
    return "float16" if "GPU" in device else "bfloat16"


def compute_dtype(mixed: bool, devices: list[str]) -> str:
    """The dtype layers compute in: float16 on GPUs and bfloat16 on CPUs that have it, when mixed precision is asked; else float32."""
    if not mixed:
        return "float32"
    reduced = reduced_dtype(devices[0])
    if reduced == "float16" or has_bfloat16_instructions(_cpuinfo()):
        return reduced
    log.warning("train.mixed_precision: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16, bf16), so training computes in float32, faster here")
    return "float32"


@contextlib.contextmanager
def precision_policy(keras: Any, dtype: str) -> Iterator[None]:
    """Build the model computing in `dtype` (compute_dtype's), variables in float32.

    The policy is global in Keras, so it is restored at once: models built later in the same
    process (the best-weights copy, export) compute in float32, as they are served.
    """
    previous = keras.mixed_precision.global_policy()
    if dtype != "float32":
        keras.mixed_precision.set_global_policy(f"mixed_{dtype}")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
