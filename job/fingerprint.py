"""The identity of a loaded data set's content: what binds a model to the data it was trained on.

Training records it, export stamps it into the model, and validation and publishing refuse
to measure a model on any other test set unless the user says so explicitly. It hashes the
decoded arrays, not the archive, so an archive and its extracted directory agree, and a
different split seed, limit or archive does not.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from job.data import CifarData


def dataset_fingerprint(data: CifarData) -> str:
    """sha256 over the class names and every split's images and labels, in a fixed order."""
    digest = hashlib.sha256(json.dumps(list(data.class_names)).encode())
    for array in (data.train_images, data.train_labels, data.val_images, data.val_labels, data.test_images, data.test_labels):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array))
    return digest.hexdigest()
