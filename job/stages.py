"""The stage runner: `cifar-job run` is a loop over STAGES, and every single-stage command runs one of them.

A stage is complete when its marker exists and still matches its inputs (each stage module
says how, next to the code that writes the marker). A stage that is redone changes what the
next one finds, so every later stage is redone too and no stale artifact is reused. Adding a
stage means writing its module's `STAGE` and adding it to this list.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from export import convert, publish, validate, variants
from job.training import train
from job.config.settings import Config
from job.metrics.series import RunMetrics
from job.core.paths import RunPaths
from job.stage import Result, Stage, StageInputs
from job.tracking.session import Tracker

log = logging.getLogger(__name__)

STAGES: tuple[Stage, ...] = (train.STAGE, convert.STAGE, validate.STAGE, publish.STAGE, variants.STAGE)
BY_NAME = {stage.name: stage for stage in STAGES}


def first_incomplete(config: Config, paths: RunPaths) -> Stage | None:
    """The first stage whose marker is missing or stale; None when the whole run is done."""
    return next((stage for stage in STAGES if not stage.is_complete(config, paths)), None)


def stage_inputs(config: Config, paths: RunPaths, metrics: RunMetrics, tracking: Tracker) -> StageInputs:
    """A stage's inputs, whose training callbacks feed both the metrics and the tracking."""
    return StageInputs(config, paths, training_callbacks=lambda: [metrics.keras_callback(), tracking.keras_callback(paths)])


def run_stage(stage: Stage, inputs: StageInputs, metrics: RunMetrics, tracking: Tracker, report: Callable[[Result], None]) -> Result:
    """One stage, timed and recorded by `metrics` and `tracking` and shown by `report`; its verdict is checked after all three."""
    with metrics.stage(stage.name), tracking.stage(stage.name, inputs):
        result = stage.run(inputs)
        metrics.record(result)
        tracking.record(result)
        report(result)
        stage.check(result)
    return result


def run_stages(config: Config, paths: RunPaths, metrics: RunMetrics, tracking: Tracker, report: Callable[[str, Result], None]) -> list[Result]:
    """Run from the first incomplete stage to the end; the data set is loaded once for all of them."""
    start = first_incomplete(config, paths)
    if start is None:
        log.info("run %s: every stage is complete; nothing to do", paths.root)
        return []
    todo = STAGES[STAGES.index(start) :]
    log.info("run %s: %s %s", paths.root, "starting with" if start is STAGES[0] else "resuming at", " -> ".join(s.name for s in todo))
    inputs = stage_inputs(config, paths, metrics, tracking)
    return [run_stage(stage, inputs, metrics, tracking, functools.partial(report, stage.name)) for stage in todo]
