"""The model-level files of the serving repository: config.pbtxt read by Triton's own protobuf message, and labels.txt."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.model_config import config_pbtxt, labels_txt
from job.core.errors import ModelFileError

from .conftest import CLASS_NAMES
from .onnx_models import mean_colour_model

pytestmark = pytest.mark.fast

_TYPES = {onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32, onnx.TensorProto.FLOAT16: model_config_pb2.TYPE_FP16}


def assert_config_matches_graph(text: str, model: onnx.ModelProto, name: str) -> model_config_pb2.ModelConfig:
    """Parse `text` as Triton's ModelConfig (unknown fields or bad syntax raise) and compare it with the ONNX graph."""
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert (config.name, config.platform) == (name, "onnxruntime_onnx")
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    for declared, graph in ((config.input, model.graph.input), (config.output, model.graph.output)):
        assert len(declared) == len(graph)
        for entry, value in zip(declared, graph, strict=True):
            shape = value.type.tensor_type.shape.dim
            assert shape[0].dim_param and not shape[0].HasField("dim_value")  # dynamic batch: left out of dims
            assert (entry.name, entry.data_type, list(entry.dims)) == (value.name, _TYPES[value.type.tensor_type.elem_type], [d.dim_value for d in shape[1:]])
    assert [o.label_filename for o in config.output] == ["labels.txt"]
    return config


def test_config_pbtxt_is_a_triton_model_config_that_matches_the_graph() -> None:
    model = mean_colour_model(np.zeros((3, 10)), np.zeros(10))
    config = assert_config_matches_graph(config_pbtxt(model, "cifar10-cnn", 256, "test"), model, "cifar10-cnn")
    assert config.max_batch_size == 256 and list(config.input[0].dims) == [32, 32, 3] and list(config.output[0].dims) == [10]


def test_labels_are_the_class_names_in_output_order() -> None:
    assert labels_txt(CLASS_NAMES).splitlines() == CLASS_NAMES and labels_txt(CLASS_NAMES).endswith("truck\n")


@pytest.mark.parametrize("change", ["fixed batch", "renamed output"])
def test_a_graph_that_breaks_the_contract_gets_no_config(change: str) -> None:
    model = mean_colour_model(np.zeros((3, 10)), np.zeros(10), output_name="scores" if change == "renamed output" else "probabilities")
    if change == "fixed batch":
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(ModelFileError, match="model m: "):
        config_pbtxt(model, "cifar10-cnn", 256, "m")
