"""The quality gate: absolute floors on accuracy and weighted F1, and an optional cap on regression.

Pure and small on purpose: `validate` evaluates it to report the verdict, and `publish`
evaluates it again under the publishing lock, against the model published at that moment,
so a model is never published on the strength of a stale verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export import repository
from job.config.settings import GateConfig
from job.core.errors import GateFailed

GATED_METRICS = ("accuracy", "weighted_f1")


@dataclass(frozen=True)
class GateResult:
    passed: bool
    failures: tuple[str, ...]
    thresholds: dict[str, float | None]
    baseline_version: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failures": list(self.failures),
            "thresholds": self.thresholds,
            "baseline_version": self.baseline_version,
        }

    def describe(self) -> str:
        if self.passed:
            return "quality gate passed"
        return "quality gate failed: " + "; ".join(self.failures)

    def enforce(self, consequence: str = "") -> None:
        """Raise `GateFailed` (exit 6) unless passed; callers record the verdict first, then enforce it."""
        if not self.passed:
            raise GateFailed(self.describe() + (f"; {consequence}" if consequence else ""))


def check_gate(metrics: Mapping[str, Any], gate: GateConfig, baseline: Mapping[str, Any] | None = None) -> GateResult:
    """Judge `metrics` (accuracy, weighted_f1); `baseline` is the published model's sidecar, if any.

    A non-finite score fails: NaN compares false with every threshold and would otherwise pass.
    """
    floors = {"accuracy": gate.min_accuracy, "weighted_f1": gate.min_weighted_f1}
    failures = [f"{name} is {metrics[name]!r}, not a finite number" for name in GATED_METRICS if not math.isfinite(metrics[name])]
    failures += [
        f"{name} {metrics[name]:.4f} < {floor:.4f} (gate.min_{name})" for name, floor in floors.items() if metrics[name] < floor
    ]
    version = None
    if gate.max_regression is not None and baseline is not None:
        version = baseline["version"]
        for name in GATED_METRICS:
            published = baseline["metrics"][name]
            if metrics[name] < published - gate.max_regression:
                failures.append(
                    f"{name} {metrics[name]:.4f} is more than {gate.max_regression:.4f} below published "
                    f"version {version} ({published:.4f}) (gate.max_regression)"
                )
    thresholds = {"min_accuracy": gate.min_accuracy, "min_weighted_f1": gate.min_weighted_f1, "max_regression": gate.max_regression}
    return GateResult(passed=not failures, failures=tuple(failures), thresholds=thresholds, baseline_version=version)


def judge(scores: Mapping[str, Any], gate: GateConfig, model_dir: Path) -> GateResult:
    """`check_gate` against the newest version published in `model_dir`, read only when a regression cap is set."""
    baseline = repository.latest(model_dir) if gate.max_regression is not None else None
    return check_gate(scores, gate, baseline)
