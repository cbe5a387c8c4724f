"""The airbench architecture end to end on a slice: trained, exported with its test-time views inside the ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from click.testing import CliRunner

from export.modelfile import metadata
from job.cli import main
from job.config.settings import load_config
from job.models.contract import scale
from job.data.dataset import load_dataset
from job.models.registry import build_model

from .conftest import train_args
from .test_recipes import views


def test_airbench_trains_and_exports_its_test_timeviews_inside_the_onnx_graph(real_archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    slice_ = ["--set", "model.name=airbench", "--set", "train.epochs=1", "--set", "train.batch_size=128", "--set", "data.train_limit=1000", "--set", "export.parity_images=200"]
    assert CliRunner().invoke(main, train_args(out, *slice_)).exit_code == 0
    export = CliRunner().invoke(main, ["export", *train_args(out, *slice_)[1:]])
    assert export.exit_code == 0, export.output
    onnx_model = (out / "model.onnx").read_bytes()
    stamped = metadata(onnx.load_from_string(onnx_model))
    assert stamped["test_time_augmentation"] == "flip_translate" and stamped["architecture"].startswith("airbench: ")

    config = load_config(env={}, overrides={"model.name": "airbench", "data.source": str(real_archive), "data.checksum": None})
    images = scale(load_dataset(config.data).test_images[:32])
    trained = build_model("airbench")
    trained.load_weights(out / "best.weights.h5")
    weights = [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    expected = sum(w * trained.predict(v, verbose=0) for w, v in zip(weights, views(images)))
    session = ort.InferenceSession(onnx_model, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": images})[0], expected, atol=1e-4)
