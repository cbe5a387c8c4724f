"""Small real ONNX models with the serving signature, built with onnx.helper, for validate and publish tests.

A linear classifier on each image's mean colour: onnxruntime runs it on real CIFAR-10 images
in milliseconds, its weights can be fitted in numpy, and numpy recomputes its predictions
independently, so the tests can check validation's numbers rather than trust them.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from job.models.contract import INPUT_LAYOUT, INPUT_SCALING, OUTPUT_MEANING, PIXEL_MAX


def mean_colour_model(weights: np.ndarray, bias: np.ndarray, output_name: str = "probabilities", trained_on: str = "") -> onnx.ModelProto:
    """images [N, 32, 32, 3] -> softmax(mean colour @ weights + bias) [N, 10]; `trained_on` is the data set's fingerprint,
    as export stamps it (CifarData.fingerprint)."""
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["colour"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["colour", "weights"], ["logits_nobias"]),
        helper.make_node("Add", ["logits_nobias", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [output_name], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mean_colour",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 10])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "weights"),
            numpy_helper.from_array(bias.astype(np.float32), "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in {
        "class_names": json.dumps(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]),
        "architecture": "mean_colour: ReduceMean -> MatMul -> Softmax (test model)",
        "input_layout": INPUT_LAYOUT,
        "input_scaling": INPUT_SCALING,
        "output_meaning": OUTPUT_MEANING,
        "dataset_fingerprint": trained_on,
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def fit_mean_colour(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit of one-hot labels on [mean colour, 1]: a weak but real classifier."""
    features = np.hstack([mean_colours(images), np.ones((len(images), 1))])
    solution, *_ = np.linalg.lstsq(features, np.eye(10)[labels], rcond=None)
    return solution[:3], solution[3]


def mean_colours(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float64) / PIXEL_MAX).mean(axis=(1, 2))


def predict_numpy(images: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The model's top class per image, computed without onnxruntime."""
    return (mean_colours(images) @ weights + bias).argmax(axis=1)
