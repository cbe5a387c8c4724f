"""The values schema's `config` part is job/config/settings.py's model: Helm refuses at install time what the pod would refuse at start.

Checked with both engines users run: the Helm 4 SDK (render and strict lint) and a real Helm 3 binary.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.generate import chart_schema
from job.config.settings import Config, load_config
from job.core.errors import ConfigError

from .k8s_tools import CHART, helm3

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

# One of each mistake, with the JSON pointer (or key) the schema error must name.
BAD_CONFIGS = [
    ({"train": {"epoch": 5}}, "epoch"),  # a typo of train.epochs
    ({"train": {"epochs": "five"}}, "/config/train/epochs"),  # wrong type
    ({"train": {"batch_size": 0}}, "/config/train/batch_size"),  # below the minimum
    ({"train": {"momentum": 1}}, "/config/train/momentum"),  # at an exclusive maximum
    ({"export": {"opset": 19}}, "/config/export/opset"),  # above the maximum
    ({"publish": {"model_name": "Bad Name"}}, "/config/publish/model_name"),  # pattern
    ({"data": {"checksum": "md5:xyz"}}, "/config/data/checksum"),  # pattern of a nullable key
    ({"validate": {"device": "tpu"}}, "/config/validate/device"),  # enum
    ({"validate_": {"device": "cpu"}}, "validate_"),  # the Python name, not the key
    ({"publish": {"root": "/elsewhere"}}, "/config/publish/root"),  # set by the chart
]


def test_schema_config_part_is_current() -> None:
    text = chart_schema.SCHEMA.read_text()
    assert chart_schema.render(text) == text, "values.schema.json is stale: run `python -m tests.generate`"


@pytest.mark.parametrize(("config", "where"), BAD_CONFIGS, ids=[w for _, w in BAD_CONFIGS])
def test_the_job_and_both_helm_versions_refuse_a_bad_config(config: dict[str, Any], where: str, tmp_path: Path) -> None:
    if where != "/config/publish/root":  # the job accepts it; only the chart owns it
        with pytest.raises(ConfigError):
            load_config(_written(tmp_path / "config.yaml", config), env={})
    values = {"config": config}
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as raised:
        chart.render(values=values, name="cifar-job")
    assert where in str(raised.value)
    lint = helm.lint(CHART, values, strict=True)
    assert any(where in e for e in lint["errors"]), lint["errors"]
    done = subprocess.run([str(helm3()), "lint", "--strict", str(CHART), "-f", str(_written(tmp_path / "values.yaml", values))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and where.rsplit("/", 1)[-1] in done.stdout + done.stderr


def test_every_key_the_job_accepts_passes_the_schema() -> None:
    """The schema never refuses what the job would run: every key of the model, at its default or an edge value."""
    config = Config().to_dict()
    for key in chart_schema.CHART_SETS:
        *section, leaf = key.split(".")
        (config[section[0]] if section else config).pop(leaf)
    config["data"].update(checksum="sha256:" + "0" * 64, train_limit=10, test_limit=10_000)
    config["export"].update(opset=18, parity_images=10)
    config["gate"]["max_regression"] = 0.0
    config["metrics"].update(pushgateway_url="https://pushgateway.example:9091/", run_id="nightly_7")
    with helm.Chart.load(CHART) as chart:
        chart.render(values={"config": config}, name="cifar-job")
    assert helm.lint(CHART, {"config": config}, strict=True)["errors"] == []


def _written(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path
