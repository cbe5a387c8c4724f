"""A real Triton Inference Server on 127.0.0.1, started by the tests on a model repository.

Everything comes from what tests/run.sh installs under .venv/tools: the tritonserver binary and
its Python backend from the nvidia-pytriton wheel, and the stub's own environment (numpy < 2,
onnxruntime). The stand-in onnxruntime backend (onnxruntime_backend/model.py) takes the place of
Triton's C++ one. Start-up is observable: `triton()` yields once the server is ready, or raises
StartFailed with the server's log when it exits or does not get ready in time; the server is
always stopped (its whole process group killed if it does not stop), and its log is attached to
whatever fails while it runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / ".venv" / "tools"
WHEEL = TOOLS / "triton"  # the unpacked nvidia-pytriton wheel
SERVER = WHEEL / "pytriton" / "tritonserver"
BINARY = SERVER / "bin" / "tritonserver"
STUB_ENV = TOOLS / "triton-stub-env"
STAND_IN = Path(__file__).parent / "onnxruntime_backend" / "model.py"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


class StartFailed(RuntimeError):
    """tritonserver exited, or was not ready in time, before serving; `log` is everything it wrote."""

    def __init__(self, reason: str, log: str) -> None:
        super().__init__(f"tritonserver {reason}; its log:\n{log}")
        self.log = log


@dataclass(frozen=True)
class Triton:
    """A running server: the V2 HTTP and gRPC endpoints (host:port) and its log file."""

    http: str
    grpc: str
    log: Path

    def http_client(self):
        import tritonclient.http

        return tritonclient.http.InferenceServerClient(self.http, connection_timeout=30, network_timeout=60)

    def grpc_client(self):
        import tritonclient.grpc

        return tritonclient.grpc.InferenceServerClient(self.grpc)


def require_triton() -> None:
    """Skip when tests/run.sh has not installed Triton; under CI=true that is a failure, not a skip."""
    missing = [path for path in (BINARY, STUB_ENV / "onnxruntime", STUB_ENV / "numpy") if not path.exists()]
    if missing:
        message = f"Triton Inference Server not installed ({missing[0]} missing): run `bash tests/run.sh`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def _backends(directory: Path) -> Path:
    """The backend directory: Triton's Python backend with its 3.11 stub, and the stand-in as `onnxruntime`."""
    python = directory / "python"
    shutil.copytree(SERVER / "backends" / "python", python)
    shutil.copy2(SERVER / "python_backend_stubs" / "3.11" / "triton_python_backend_stub", python)
    (directory / "onnxruntime").mkdir()
    shutil.copy2(STAND_IN, directory / "onnxruntime" / "model.py")
    return directory


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _ready(http: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=2) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (Triton unloads its models and exits), then SIGKILL for the whole group, stubs included."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the Python backend's stubs, should any outlive the server
    except ProcessLookupError:
        pass
    process.wait(STOP_TIMEOUT_S)


@contextmanager
def triton(repository: Path, workdir: Path, poll: bool = False, timeout: float = START_TIMEOUT_S) -> Iterator[Triton]:
    """tritonserver on `repository` with --strict-model-config=true; `poll` rescans it every second."""
    require_triton()
    workdir.mkdir(parents=True, exist_ok=True)
    backends = _backends(workdir / f"backends-{uuid.uuid4().hex[:8]}")
    http_port, grpc_port, metrics_port = _free_ports(3)
    command = [
        str(BINARY), "--model-repository", str(repository), "--backend-directory", str(backends),
        "--strict-model-config=true", "--exit-timeout-secs=5",
        "--http-address", "127.0.0.1", "--http-port", str(http_port),
        "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
        # Shared memory regions are named per server, so servers of other tests or workers never meet.
        f"--backend-config=python,shm-region-prefix-name=triton_test_{uuid.uuid4().hex[:12]}_",
    ]  # fmt: skip
    if poll:
        command += ["--model-control-mode=poll", "--repository-poll-secs=1"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(WHEEL / "nvidia_pytriton.libs"), "PYTHONPATH": str(STUB_ENV)}
    log = workdir / f"tritonserver-{http_port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    server = Triton(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", log)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(server.http):
            if process.poll() is not None:
                raise StartFailed(f"exited with {process.returncode} before it was ready", log.read_text(errors="replace"))
            if time.monotonic() > deadline:
                raise StartFailed(f"not ready after {timeout:.0f} s", log.read_text(errors="replace"))
            time.sleep(0.2)
        try:
            yield server
        except BaseException as failure:
            failure.add_note(f"tritonserver log ({log}):\n{log.read_text(errors='replace')}")
            raise
    finally:
        _stop(process)
