"""Which software measured a model: the container image it ran in, and that image's SBOM.

A model should be traceable to the exact software that trained and measured it. The image cannot
know its own reference or digest, so the chart passes it in IMAGE_ENV (`repository@sha256:...`
when the values pin a digest); the Dockerfile generates a CycloneDX SBOM of the image's Python
environment at build time and names it in SBOM_ENV. Outside the image neither is set and the
record says so (null), rather than guess.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from job.core.bounded import read_bounded
from job.core.errors import ModelFileError

log = logging.getLogger(__name__)

IMAGE_ENV = "CIFAR_IMAGE"
SBOM_ENV = "CIFAR_SBOM"
MAX_SBOM_BYTES = 64 << 20  # a few hundred packages are a few MiB of CycloneDX JSON


def runtime() -> dict[str, Any]:
    """`{"image": reference or None, "sbom": {"path", "sha256", "format"} or None}` for metrics.json, the card and the sidecar."""
    return {"image": os.environ.get(IMAGE_ENV) or None, "sbom": _sbom(os.environ.get(SBOM_ENV))}


def _sbom(path: str | None) -> dict[str, str] | None:
    if not path:
        return None
    try:
        data = read_bounded(Path(path), MAX_SBOM_BYTES, ModelFileError, f"SBOM {path} ({SBOM_ENV})")
    except ModelFileError as e:
        log.warning("%s; the model's record names no SBOM", e)
        return None
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "format": "CycloneDX JSON"}
