"""The dependency rules of the packages, checked on the real import graph (grimp, import-linter's engine).

Every import counts, lazy ones inside functions and TYPE_CHECKING ones included: a rule that
only held at import time would still let a change tangle the code.
"""

from __future__ import annotations

import grimp
import pytest

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

# job/: each module in exactly one layer. A new module must be placed here (the first test says so).
FOUNDATION = {
    "job.config", "job.errors", "job.paths", "job.atomic", "job.bounded", "job.records", "job.redact", "job.credentials", "job.stage",
    "job.contract", "job.model", "job.layers", "job.recipes",
    "job.data", "job.archive", "job.gzip_stream", "job.batch_format", "job.safe_pickle", "job.extracted", "job.download",
    "job.experiment_spec",
}  # fmt: skip
TRAINING = {"job.train", "job.input_pipeline", "job.history", "job.schedules"}
SHELL = {
    "job.cli", "job.__main__", "job.stages", "job.docs",
    "job.metrics", "job.metrics_callback", "job.metrics_server", "job.metrics_session", "job.pushgateway",
    "job.k8s_cli", "job.chart", "job.cluster", "job.chart_schema", "job.chart_docs", "job.bench",
    "job.experiment_cli", "job.experiment", "job.experiment_summary",
}  # fmt: skip
# export/: base modules, then the stages in the order a run takes them.
EXPORT_BASE = {
    "export.modelfile", "export.session", "export.scores", "export.repository", "export.model_config", "export.precision", "export.gate",
    "export.report",
}  # fmt: skip
EXPORT_STAGES = ["export.convert", "export.validate", "export.publish", "export.variants"]
MAY_IMPORT_EXPORT = {"job.cli", "job.stages", "job.bench"}  # the CLI, the stage runner and the benchmark, nothing else in job/


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("job", "export", cache_dir=None)


def _imports(graph: grimp.ImportGraph, module: str) -> set[str]:
    return {m for m in graph.find_modules_directly_imported_by(module) if m not in ("job", "export")}


def test_every_module_has_a_place_in_the_layers(graph) -> None:
    placed = FOUNDATION | TRAINING | SHELL | EXPORT_BASE | set(EXPORT_STAGES)
    modules = {m for m in graph.modules if m not in ("job", "export")}
    assert modules - placed == set(), "place the new module in a layer of tests/test_layout.py"
    assert placed - modules == set(), "a module named here no longer exists"


def test_the_foundation_imports_only_the_foundation(graph) -> None:
    for module in FOUNDATION:
        assert _imports(graph, module) <= FOUNDATION, module


def test_training_imports_only_training_and_the_foundation(graph) -> None:
    for module in TRAINING:
        assert _imports(graph, module) <= TRAINING | FOUNDATION, module


def test_only_the_cli_and_the_stage_runner_import_export(graph) -> None:
    importers = {m for m in graph.modules if m.startswith("job") and any(i.startswith("export") for i in _imports(graph, m))}
    assert importers <= MAY_IMPORT_EXPORT


def test_export_imports_only_the_foundation_of_job(graph) -> None:
    for module in EXPORT_BASE | set(EXPORT_STAGES):
        assert {m for m in _imports(graph, module) if m.startswith("job")} <= FOUNDATION, module


def test_export_stages_import_base_modules_and_earlier_stages_only(graph) -> None:
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
    "job.metrics_callback": set(),
    "job.metrics": {"job.metrics_callback"},
    "job.metrics_server": set(),
    "job.pushgateway": set(),
    "job.metrics_session": {"job.metrics", "job.metrics_server", "job.pushgateway"},
}


def test_metrics_modules_depend_one_way(graph) -> None:
    for module, may_import in METRICS_FAMILY.items():
        assert _imports(graph, module) & METRICS_FAMILY.keys() <= may_import, module
    assert _imports(graph, "job.metrics_callback") == set()
