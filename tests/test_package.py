"""The installed package, not the checkout: a wheel carries the Helm chart, so `cifar-job k8s render` works anywhere."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from job.kube import chart

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment holding the built wheel (not an editable install); its dependencies come from this one's."""
    work = tmp_path_factory.mktemp("package")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "wheel"), str(ROOT)], check=True, timeout=600)
    subprocess.run([sys.executable, "-m", "venv", str(work / "env")], check=True, timeout=120)
    python = work / "env" / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout
    # This environment's site-packages as a plain path: its packages import, but its .pth files (the editable
    # install of this checkout among them) are not processed, so `job` can only come from the wheel.
    (Path(site.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next((work / "wheel").glob("cifar_job-*.whl"))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    return work


def test_a_wheel_renders_the_chart_from_outside_the_checkout(installed: Path) -> None:
    env_bin = installed / "env" / "bin"
    where = subprocess.run([env_bin / "python", "-c", "import job; print(job.__file__)"], capture_output=True, text=True, cwd=installed, check=True)
    assert where.stdout.startswith(str(installed / "env"))  # the wheel's copy, not the checkout
    done = subprocess.run([env_bin / "cifar-job", "k8s", "render", "--set", "managedBy=kubectl"], capture_output=True, text=True, cwd=installed, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    kinds = {doc["kind"] for doc in yaml.safe_load_all(done.stdout) if doc}
    assert {"Job", "ConfigMap", "PersistentVolumeClaim"} <= kinds
    from_checkout = "---\n".join(chart.render({"managedBy": "kubectl"}, chart=ROOT / "charts" / "cifar-job").values())
    assert done.stdout == from_checkout  # the wheel's chart is the checkout's


def test_chart_overrides_the_shipped_chart(installed: Path, tmp_path: Path) -> None:
    done = subprocess.run([installed / "env" / "bin" / "cifar-job", "k8s", "render", "--chart", str(tmp_path)], capture_output=True, text=True, cwd=installed, timeout=300)
    assert done.returncode == 2 and done.stderr == f"cifar-job: error: chart {tmp_path}: not found; pass --chart with the path of charts/cifar-job\n"
