"""The dependency rules of the packages, checked on the real import graph (grimp, import-linter's engine).

Every import counts, lazy ones inside functions and TYPE_CHECKING ones included: a rule that
only held at import time would still let a change tangle the code.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

# Every unit (a sub-package of job/, a module at job/'s top, export/) and the units it may import.
# Read top to bottom: the foundation, then training, export, and the shell that drives them.
FOUNDATION = {"job.core", "job.config", "job.models", "job.data", "job.stage"}
MAY_IMPORT = {
    "job.core": set(),  # errors, atomic writes, bounded reads, records, redaction, credentials, paths
    "job.config": {"job.core"},
    "job.models": {"job.core"},
    "job.data": {"job.core", "job.config", "job.models"},
    "job.stage": {"job.core", "job.config", "job.data"},  # the stage interface
    "job.training": FOUNDATION,
    "export": FOUNDATION,
    "job.metrics": FOUNDATION,
    "job.tracking": FOUNDATION,  # MLflow; it and job.metrics do not import each other (the runners wire both)
    "job.kube": FOUNDATION,
    "job.stages": FOUNDATION | {"job.training", "job.metrics", "job.tracking", "export"},  # the stage runner
    "job.experiments": FOUNDATION | {"job.metrics", "job.tracking", "job.stages"},
    "job.bench": FOUNDATION | {"job.training", "export"},
    "job.cli": FOUNDATION | {"job.training", "job.metrics", "job.tracking", "job.kube", "job.experiments", "job.stages", "job.bench", "export"},
    "job.__main__": {"job.cli"},
}
MAX_TOP_MODULES = 12  # job/'s top holds the CLI, the stage interface and runner, the benchmark; the rest lives in packages
EXPORT_BASE = {
    "export.modelfile", "export.session", "export.scores", "export.repository", "export.model_config", "export.precision", "export.gate",
    "export.report", "export.v2_protocol", "export.signing", "export.verification", "export.software",
}  # fmt: skip
EXPORT_STAGES = ["export.convert", "export.validate", "export.publish", "export.variants"]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("job", "export", cache_dir=None)


def _unit(module: str) -> str:
    """The unit a module belongs to: `job.data.archive` -> `job.data`, `job.cli` -> `job.cli`, `export.gate` -> `export`."""
    parts = module.split(".")
    return "export" if parts[0] == "export" else ".".join(parts[:2])


def _imports(graph: grimp.ImportGraph, module: str) -> set[str]:
    return {m for m in graph.find_modules_directly_imported_by(module) if m not in ("job", "export")}


def test_every_module_belongs_to_a_unit_with_rules(graph) -> None:
    units = {_unit(m) for m in graph.modules if m not in ("job", "export")}
    assert units - MAY_IMPORT.keys() == set(), "give the new package or top-level module its rules in tests/test_layout.py"


def test_jobs_top_holds_at_most_a_dozen_modules() -> None:
    top = [p for p in (Path(__file__).resolve().parents[1] / "job").glob("*.py")]
    assert len(top) <= MAX_TOP_MODULES, sorted(p.name for p in top)


def test_every_package_says_what_it_holds_and_may_import(graph) -> None:
    for package in {m for m in graph.modules if m.count(".") == 1 and m.startswith("job.") and graph.find_children(m)}:
        doc = importlib.import_module(package).__doc__ or ""
        assert "May import" in doc, f"{package}/__init__.py: say what it holds and what it may import"


def test_each_unit_imports_only_what_its_rules_allow(graph) -> None:
    for module in graph.modules - {"job", "export"}:
        unit = _unit(module)
        imported = {_unit(m) for m in _imports(graph, module)} - {unit}
        assert imported <= MAY_IMPORT[unit], f"{module} imports {sorted(imported - MAY_IMPORT[unit])}"


def test_export_stages_import_base_modules_and_earlier_stages_only(graph) -> None:
    assert {m for m in graph.modules if m.startswith("export.")} == EXPORT_BASE | set(EXPORT_STAGES)
    for module in EXPORT_BASE:
        assert {m for m in _imports(graph, module) if m.startswith("export")} <= EXPORT_BASE, module
    for i, stage in enumerate(EXPORT_STAGES):
        assert {m for m in _imports(graph, stage) if m.startswith("export")} <= EXPORT_BASE | set(EXPORT_STAGES[:i]), stage


def test_there_are_no_import_cycles(graph) -> None:
    modules = sorted(m for m in graph.modules if m not in ("job", "export"))
    cycles = [(a, b) for a in modules for b in _imports(graph, a) if graph.chain_exists(importer=b, imported=a)]
    assert cycles == []


# Among the metrics modules: declarations <- server, push <- session; the Keras callback imports no job module.
METRICS_FAMILY = {
    "job.metrics.keras_callback": set(),
    "job.metrics.series": {"job.metrics.keras_callback"},
    "job.metrics.server": set(),
    "job.metrics.pushgateway": set(),
    "job.metrics.session": {"job.metrics.series", "job.metrics.server", "job.metrics.pushgateway"},
}


def test_metrics_modules_depend_one_way(graph) -> None:
    for module, may_import in METRICS_FAMILY.items():
        assert _imports(graph, module) & METRICS_FAMILY.keys() <= may_import, module
    assert _imports(graph, "job.metrics.keras_callback") == set()


# Among the tracking modules: the bounded steps <- the session; the Keras callback imports no job module.
TRACKING_FAMILY = {"job.tracking.keras_callback": set(), "job.tracking.steps": set(), "job.tracking.session": {"job.tracking.steps", "job.tracking.keras_callback"}}


def test_tracking_modules_depend_one_way(graph) -> None:
    for module, may_import in TRACKING_FAMILY.items():
        assert _imports(graph, module) & TRACKING_FAMILY.keys() <= may_import, module
    assert _imports(graph, "job.tracking.keras_callback") == set()


def test_the_command_line_imports_no_numerical_library_until_a_command_needs_one() -> None:
    """`cifar-job --help`, `k8s render` or `verify` must start fast and small: under a memory cap (tests/test_hostile_inputs.py)
    the Helm engine's Go runtime cannot even start once numpy's threads have reserved their address space."""
    code = "import sys, job.cli; print(' '.join(sorted(m for m in ('numpy', 'tensorflow', 'keras', 'onnx', 'onnxruntime', 'mlflow') if m in sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert imported == [], f"importing job.cli loads {imported}: import them inside the commands that use them"
