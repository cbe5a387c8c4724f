"""The Dockerfile: hadolint, the image's shape, its two lock files (GPU, CPU) and its build secrets.

These read the files only; tests/test_image.py (slow) builds the image with buildah and runs it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from .k8s_tools import K8S, ROOT, load_docs

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCK = (ROOT / ".ci" / "image-requirements.txt").read_text()
PINS = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", LOCK, flags=re.M))


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_hadolint_passes() -> None:
    done = subprocess.run([str(Path(sys.executable).with_name("hadolint")), "--failure-threshold", "info", "-"],
                          input=DOCKERFILE, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_multi_stage_with_pinned_base_images() -> None:
    steps = instructions(DOCKERFILE)
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a.split()[0]) for op, a in steps if op == "FROM"]
    assert len(bases) >= 2
    for base in bases:
        name, _, tag = base.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+-\S+", tag) or "@sha256:" in base, f"{base}: not pinned to a version"
    python = re.search(r"python:(\d+\.\d+)", bases[-1]).group(1)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f">={python}" in requires and f"python{python}/site-packages/nvidia" in DOCKERFILE


def test_final_stage_runs_cifar_job_as_the_charts_non_root_user_without_build_tools() -> None:
    final = dict(final_stage())
    assert final["ENTRYPOINT"] == '["cifar-job"]' and final["CMD"] == '["run"]'
    uid = int(final["USER"].split(":")[0])
    job = next(d for d in load_docs((K8S / "job.yaml").read_text()) if d["kind"] == "Job")
    assert uid != 0 and job["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    runs = " ".join(a for op, a in final_stage() if op == "RUN")
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", runs)
    assert "pip uninstall --yes pip" in DOCKERFILE  # the installer stays in the build stage


def test_build_context_holds_exactly_what_copy_needs() -> None:
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert ignore[0] == "*", "the context must start empty and list what it needs"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    sources = {src.rstrip("/") for op, a in instructions(DOCKERFILE) if op == "COPY" and "--from" not in a for src in a.split()[:-1]}
    assert sources == allowed
    assert all((ROOT / s).exists() for s in sources)


def test_lock_pins_every_dependency_with_hashes_on_one_cuda_major() -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.split("\n", 2)[2].strip())
    assert blocks and all("--hash=sha256:" in b for b in blocks) and len(blocks) == len(PINS)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = [Requirement(r) for r in project["dependencies"] + extras["gpu"] + extras["mlflow"]]  # the image tracks to MLflow when told to
    pins = {normalise(name): version for name, version in PINS.items()}
    for req in wanted:
        assert normalise(req.name) in pins, f"{req.name} is not pinned in .ci/image-requirements.txt"
        assert req.specifier.contains(pins[normalise(req.name)]), f"{req.name}=={pins[normalise(req.name)]} breaks {req}"
    cuda = {name for name in pins if name.startswith("nvidia-")}
    assert cuda and all(name.endswith("-cu12") for name in cuda), f"not all CUDA 12: {sorted(cuda)}"
    # A local `pip install -e .` must resolve the onnxruntime-gpu line the image uses (CUDA 12), not a newer one built for CUDA 13.
    (onnxruntime,) = [req for req in wanted if normalise(req.name) == "onnxruntime-gpu"]
    locked = Version(pins["onnxruntime-gpu"])
    assert not onnxruntime.specifier.contains(f"{locked.major}.{locked.minor + 1}.0"), f"{onnxruntime} admits a release past the image's {locked}"
    # The library directories onnxruntime's CUDA provider is pointed at come from those packages.
    for directory in re.findall(r"site-packages/nvidia/(\w+)/lib", DOCKERFILE):
        assert f"nvidia-{directory.replace('_', '-')}-cu12" in pins, directory


CPU_LOCK = (ROOT / ".ci" / "image-requirements-cpu.txt").read_text()
CPU_PINS = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", CPU_LOCK, flags=re.M))


def test_default_base_is_pinned_by_digest_with_how_to_update_it() -> None:
    args = dict(a.split("=", 1) for op, a in instructions(DOCKERFILE) if op == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", args["PYTHON_IMAGE"])
    assert "To\n# update it:" in DOCKERFILE or "to update it" in DOCKERFILE.lower()


def test_cpu_variant_is_the_gpu_lock_without_the_cuda_wheels() -> None:
    """Both images run the same versions; the CPU one leaves out exactly the nvidia-* (CUDA, cuDNN) wheels."""
    blocks = re.split(r"\n(?=[A-Za-z0-9])", CPU_LOCK.split("\n", 2)[2].strip())
    assert blocks and all("--hash=sha256:" in b for b in blocks) and len(blocks) == len(CPU_PINS)
    cuda = {name for name in PINS if name.startswith("nvidia-")}
    assert cuda and CPU_PINS == {name: version for name, version in PINS.items() if name not in cuda}
    assert re.search(r"ARG VARIANT=gpu", DOCKERFILE) and '-r "/tmp/requirements-${VARIANT}.txt"' in DOCKERFILE
    values = load_docs((ROOT / "charts" / "cifar-job" / "values-dev.yaml").read_text())[0]
    assert values["gpu"]["count"] == 0 and values["image"]["tag"].endswith("-cpu")  # the dev environment runs the CPU image


def test_proxy_ca_and_pip_config_are_build_secrets_not_layers() -> None:
    """Behind a TLS-intercepting proxy the build needs the host's CA and pip.conf: as secret mounts of the
    one RUN that installs, never COPY/ADD, ARG or ENV (tests/image/build.sh checks the built layers)."""
    steps = instructions(DOCKERFILE)
    installs = [a for op, a in steps if op == "RUN" and "--require-hashes" in a]
    assert len(installs) == 1
    assert "--mount=type=secret,id=ca," in installs[0] and "--mount=type=secret,id=pipconf," in installs[0]
    for op, a in steps:
        if op in ("COPY", "ADD", "ARG", "ENV"):
            assert not re.search(r"pip\.conf|\.crt|\.pem|PIP_CERT|PIP_CONFIG_FILE|PIP_INDEX_URL", a), f"{op} {a}"
