"""A stand-in for Triton's C++ onnxruntime backend, which PyPI does not distribute (test infrastructure).

A model whose config says `platform: "onnxruntime_onnx"` is served by the backend named
`onnxruntime`; when `<backend-dir>/onnxruntime/` holds no libtriton_onnxruntime.so, Triton runs
this `model.py` there with its Python backend instead. All it does is run
`<model>/<version>/model.onnx` with onnxruntime on the CPU: reading config.pbtxt, batching, label
files and the classification extension stay Triton's, so the tests exercise Triton, not us.

The Python backend's stub embeds the system Python in isolated mode, which ignores PYTHONPATH: the
stub's own environment (numpy < 2, onnxruntime), which tests/triton/server.py passes there, is put
on sys.path here, before anything imports numpy (triton_python_backend_utils does).
"""

import json
import os
import sys
from pathlib import Path

sys.path[:0] = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path and path not in sys.path]

import onnxruntime as ort  # noqa: E402 (the stub's environment is on sys.path only now)
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        model = Path(args["model_repository"]) / args["model_version"] / (config["default_model_filename"] or "model.onnx")
        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        """One response per request, each request's tensors (batch dimension included) run as they came."""
        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            results = self.session.run(self.outputs, feeds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in zip(self.outputs, results)]))
        return responses
