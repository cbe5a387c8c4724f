"""The published repository in a real Triton Inference Server (2.51, CPU): what a serving team relies on.

The session's 2-epoch CNN goes through `cifar-job export`, `validate`, `publish` and `variants`
as a user runs them; tests/triton/server.py starts tritonserver on the result with
`--strict-model-config=true` (Triton must take our config.pbtxt as written). The C++ onnxruntime
backend is not on PyPI: tests/triton/onnxruntime_backend/model.py stands in for it and only runs
model.onnx; config, batching, labels and the classification extension are Triton's own.
Needs `bash tests/run.sh` (it installs the server); without it these tests skip, under CI=true they fail.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
import tritonclient.grpc
import tritonclient.http
from click.testing import CliRunner

from export.scores import measure_outputs
from export.v2_protocol import response as v2_response, shortened
from job.cli import main
from job.config.settings import load_config
from job.data.dataset import load_dataset
from job.models.contract import CLASS_COUNT, IMAGE_SHAPE, INPUT_NAME, OUTPUT_NAME, scale

from .conftest import CLASS_NAMES, REAL_ARCHIVE, REAL_SHA256, TRAINED_SLICE
from .onnx_models import fit_mean_colour, mean_colour_model
from .test_kserve import _docs_example
from .triton.server import StartFailed, Triton, require_triton, triton

FLOAT = "cifar10-cnn"
MODELS = (FLOAT, f"{FLOAT}-int8", f"{FLOAT}-fp16")
NO_GATE = ["--set", "gate.min_accuracy=0", "--set", "gate.min_weighted_f1=0"]
IMAGES = 32  # real test images sent per request
ATOL = 1e-5  # the same onnxruntime release on the same file and batch: equal up to float32 rounding


@pytest.fixture(scope="session", autouse=True)
def _installed() -> None:
    """Before the session's training: nothing here runs without the server."""
    require_triton()


def _cli(command: str, run: Path, root: Path, *extra: str):
    args = [command, "--data", str(REAL_ARCHIVE), "--checksum", f"sha256:{REAL_SHA256}", "--out", str(run), "--set", f"publish.root={root}"]
    return CliRunner().invoke(main, [*args, *extra])


@pytest.fixture(scope="module")
def published(trained_run: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The session's training, copied, through export -> validate -> publish -> variants, every version signed with a
    P-256 key made here (its public half beside the repository, `public.pem`): (run, repository root)."""
    base = tmp_path_factory.mktemp("triton")
    run, root = shutil.copytree(trained_run, base / "run"), base / "models"
    key = ec.generate_private_key(ec.SECP256R1())
    (base / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (base / "public.pem").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    signed = ["--set", f"publish.signing_key={base / 'key.pem'}"]
    for command, extra in [("export", []), ("validate", ["--device", "cpu", *NO_GATE]), ("publish", ["--device", "cpu", *NO_GATE, *signed]),
                           ("variants", ["--device", "cpu", *NO_GATE, *signed, "--set", "variants.max_accuracy_drop=0.1"])]:  # fmt: skip
        result = _cli(command, run, root, *TRAINED_SLICE, *extra)
        assert result.exit_code == 0, f"{command}: {result.output}"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(MODELS)
    return run, root


@pytest.fixture(scope="module")
def served(published: tuple[Path, Path], tmp_path_factory) -> Iterator[Triton]:
    """One server on the published repository for the tests that only ask it."""
    with triton(published[1], tmp_path_factory.mktemp("tritonserver")) as server:
        yield server


@pytest.fixture
def repository(published: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the published repository that a test may change."""
    return shutil.copytree(published[1], tmp_path / "models")


@pytest.fixture(scope="module")
def real_images() -> tuple[np.ndarray, object]:
    """IMAGES real test images (uint8 NHWC), and the data set whose test split they are."""
    data = load_dataset(load_config(env={}, overrides={"data.source": str(REAL_ARCHIVE), "data.train_limit": 1000, "data.test_limit": IMAGES}).data)
    return data.test_images, data


def _validate_probabilities(model: Path, data) -> np.ndarray:
    """What `cifar-job validate` computes for these images: its own onnxruntime session and batching (CPU)."""
    _, probabilities = measure_outputs(model.read_bytes(), data, "cpu", load_config(env={}).validate_.batch_size, str(model))
    return probabilities


def _input(protocol, images: np.ndarray):
    """The images as the V2 input tensor, for `protocol` (tritonclient.http or tritonclient.grpc)."""
    tensor = protocol.InferInput(INPUT_NAME, [len(images), *IMAGE_SHAPE], "FP32")
    tensor.set_data_from_numpy(scale(images))
    return tensor


def _all_ready(server: Triton, root: Path) -> None:
    """Every model directory of `root` is a model the server has READY, at its newest version."""
    client = server.http_client()
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    for model_dir in (p for p in root.iterdir() if p.is_dir()):
        newest = str(max(int(p.name) for p in model_dir.iterdir() if p.name.isdigit()))
        assert client.is_model_ready(model_dir.name), index.get(model_dir.name)
        assert index[model_dir.name]["state"] == "READY" and index[model_dir.name]["version"] == newest, index[model_dir.name]


def test_every_published_model_is_ready_under_strict_model_config(served: Triton, published) -> None:
    """Signed versions included: the signature and the gate record sit in the version directory, which Triton leaves alone."""
    _, root = published
    verified = CliRunner().invoke(main, ["verify", str(root), "--public-key", str(root.parent / "public.pem")])
    assert verified.exit_code == 0 and verified.stdout.count("verified ") == len(MODELS), verified.output
    _all_ready(served, root)
    client = served.http_client()
    for name in MODELS:
        config = client.get_model_config(name)
        assert (config["name"], config["platform"], config["backend"]) == (name, "onnxruntime_onnx", "onnxruntime")
        assert [o["label_filename"] for o in config["output"]] == ["labels.txt"]


@pytest.mark.parametrize("name", MODELS)
def test_http_and_grpc_answer_what_validate_computes(served: Triton, published, real_images, name: str) -> None:
    images, data = real_images
    expected = _validate_probabilities(published[1] / name / "1" / "model.onnx", data)
    http = served.http_client().infer(name, [_input(tritonclient.http, images)], outputs=[tritonclient.http.InferRequestedOutput(OUTPUT_NAME)])
    grpc = served.grpc_client().infer(name, [_input(tritonclient.grpc, images)], outputs=[tritonclient.grpc.InferRequestedOutput(OUTPUT_NAME)], client_timeout=60)
    for protocol, answer in (("http", http), ("grpc", grpc)):
        probabilities = answer.as_numpy(OUTPUT_NAME)
        assert probabilities.shape == (IMAGES, CLASS_COUNT) and probabilities.dtype == np.float32, protocol
        assert (probabilities.argmax(1) == expected.argmax(1)).all(), protocol
        np.testing.assert_allclose(probabilities, expected, atol=ATOL, err_msg=protocol)


@pytest.mark.parametrize("protocol", [tritonclient.http, tritonclient.grpc])
def test_the_classification_extension_names_classes_from_labels_txt(served: Triton, published, real_images, protocol) -> None:
    images, data = real_images
    top1 = _validate_probabilities(published[1] / FLOAT / "1" / "model.onnx", data).argmax(1)
    client = served.http_client() if protocol is tritonclient.http else served.grpc_client()
    answer = client.infer(FLOAT, [_input(protocol, images)], outputs=[protocol.InferRequestedOutput(OUTPUT_NAME, class_count=3)])
    rows = answer.as_numpy(OUTPUT_NAME)
    assert rows.shape == (IMAGES, 3)
    for row, expected in zip(rows, top1, strict=True):
        entries = [entry.decode().split(":") for entry in row]  # "score:index:label", best first
        assert [float(score) for score, _, _ in entries] == sorted((float(score) for score, _, _ in entries), reverse=True)
        assert all(label == CLASS_NAMES[int(index)] for _, index, label in entries)
        assert (int(entries[0][1]), entries[0][2]) == (expected, CLASS_NAMES[expected])


# --- the docs' KServe V2 example ----------------------------------------------------------------------


def _as_docs_show(answer: dict) -> dict:
    """A V2 response with each float as the shortest decimals of its float32 value, as the docs show them."""
    return {**answer, "outputs": [{**o, "data": [float(np.format_float_positional(np.float32(v), unique=True)) for v in o["data"]]} for o in answer["outputs"]]}


def _shape(answer: dict) -> dict:
    """Everything but the numbers: keys, names, version, datatype, shape, and how many values."""
    return {**answer, "outputs": [{**o, "data": len(o["data"])} for o in answer["outputs"]]}


def test_the_docs_kserve_example_is_what_triton_answers_to_its_request(served: Triton, published) -> None:
    """The docs' request, sent as their curl line sends it (JSON over HTTP), to the published 2-epoch CNN.

    The docs' numbers come from this test's model on one run: training is not bitwise reproducible,
    so what is checked is the response's shape (keys, model name and version, output name, datatype,
    shape, count) against the docs, and that Triton's numbers are the ones `cifar-job v2-request --onnx`
    prints for the same model, which is how the docs tell a user to compute them.
    """
    shown_request, shown_response = _docs_example()
    printed = CliRunner().invoke(main, ["v2-request", "--data", str(REAL_ARCHIVE), "--checksum", f"sha256:{REAL_SHA256}", "--full"])
    assert printed.exit_code == 0, printed.output
    full = printed.stdout.splitlines()[0]
    assert shortened(json.loads(full)) == shown_request  # the docs' request, whole

    post = urllib.request.Request(f"http://{served.http}/v2/models/{FLOAT}/infer", data=full.encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=60) as answer:
        triton_said = _as_docs_show(json.loads(answer.read()))
    onnxruntime_said = v2_response(published[1] / FLOAT / "1" / "model.onnx", json.loads(full))
    # In Triton's order of keys too: the docs show its answer as it comes.
    assert json.dumps(_shape(triton_said)) == json.dumps(_shape(shown_response)), f"not the docs' response; Triton answered:\n{json.dumps(triton_said)}"
    assert triton_said == _as_docs_show(onnxruntime_said)


# --- the repository as publishing changes it ------------------------------------------------------------


@pytest.fixture(scope="module")
def full_data():
    """The whole real data set: the mean-colour models are fitted and measured on it (10,000 test images)."""
    return load_dataset(load_config(env={}, overrides={"data.source": str(REAL_ARCHIVE)}).data)


def _mean_colour_run(data, tmp_path: Path, name: str, fitted: bool) -> Path:
    """A run directory holding a mean-colour model (tests/onnx_models.py) of `data`: fitted (weak), or always 'airplane'."""
    weights, bias = fit_mean_colour(data.train_images, data.train_labels) if fitted else (np.zeros((3, 10)), np.eye(10)[0])
    run = tmp_path / name
    run.mkdir()
    onnx.save(mean_colour_model(weights, bias, trained_on=data.fingerprint), run / "model.onnx")
    return run


def test_poll_mode_serves_a_new_version_without_a_restart_and_no_request_fails_meanwhile(repository: Path, real_images, full_data, tmp_path: Path) -> None:
    images, data = real_images
    version2 = _mean_colour_run(full_data, tmp_path, "v2", fitted=True)
    expected = {"1": _validate_probabilities(repository / FLOAT / "1" / "model.onnx", data), "2": _validate_probabilities(version2 / "model.onnx", data)}
    assert np.abs(expected["1"] - expected["2"]).max() > 0.01  # the answers tell the versions apart
    answers, failures, stop = [], [], threading.Event()

    def ask(server: Triton) -> None:
        client = server.grpc_client()
        while not stop.is_set():
            try:
                result = client.infer(FLOAT, [_input(tritonclient.grpc, images)], client_timeout=30)
                answers.append((result.get_response().model_version, result.as_numpy(OUTPUT_NAME)))
            except Exception as failure:  # any failed request is the finding, whatever its type
                failures.append(repr(failure))

    with triton(repository, tmp_path / "server", poll=True) as server:
        asking = threading.Thread(target=ask, args=(server,), daemon=True)
        asking.start()
        try:
            time.sleep(2)  # answers from version 1 first
            result = _cli("publish", version2, repository, "--device", "cpu", *NO_GATE)
            assert result.exit_code == 0 and "(version 2," in result.stdout, result.output
            deadline = time.monotonic() + 60
            while not any(version == "2" for version, _ in answers[-3:]) and time.monotonic() < deadline and asking.is_alive():
                time.sleep(0.2)
            time.sleep(1)
        finally:
            stop.set()
            asking.join(60)
        metadata_now = server.http_client().get_model_metadata(FLOAT)
    assert not failures, failures[:3]
    seen = [version for version, _ in answers]
    assert seen[0] == "1" and seen[-1] == "2" and metadata_now["versions"] == ["2"], (seen, metadata_now)
    assert seen == sorted(seen), "after version 2 answered, version 1 answered again"
    for version, probabilities in answers:
        np.testing.assert_allclose(probabilities, expected[version], atol=ATOL, err_msg=f"version {version}")


def test_after_failed_publishes_and_variants_the_repository_still_loads(repository: Path, full_data, tmp_path: Path) -> None:
    worse, weak = _mean_colour_run(full_data, tmp_path, "worse", fitted=False), _mean_colour_run(full_data, tmp_path, "weak", fitted=True)
    gate_fails = _cli("publish", worse, repository, "--device", "cpu")  # the default gate: accuracy 0.1 is far below it
    assert gate_fails.exit_code == 6 and "quality gate failed" in gate_fails.output, gate_fails.output
    assert _cli("publish", weak, repository, "--device", "cpu", *NO_GATE).exit_code == 0
    # Calibrated on one image, INT8 clips almost every colour of the mean-colour model: its own gate refuses it.
    variant_fails = _cli("variants", weak, repository, "--device", "cpu", "--set", "variants.calibration_images=1", "--set", "variants.enabled=[int8]")
    assert variant_fails.exit_code == 0 and "int8 NOT published" in variant_fails.stdout, variant_fails.output
    assert sorted(p.name for p in (repository / FLOAT).iterdir() if p.name.isdigit()) == ["1", "2"]

    with triton(repository, tmp_path / "server") as server:
        _all_ready(server, repository)


@pytest.mark.parametrize("breakage", ["config.pbtxt removed", "empty variant directory"])
def test_the_server_refuses_a_repository_with_a_model_directory_it_cannot_load(repository: Path, tmp_path: Path, breakage: str) -> None:
    """The negative control: the harness sees a start-up failure, so the READY tests above can fail."""
    if breakage == "config.pbtxt removed":
        (repository / FLOAT / "config.pbtxt").unlink()
    else:
        shutil.rmtree(repository / f"{FLOAT}-int8")
        (repository / f"{FLOAT}-int8").mkdir()
    with pytest.raises(StartFailed) as refused, triton(repository, tmp_path / "server"):
        pass
    assert "failed to load all models" in refused.value.log
