"""What every stage of a run is: a name, a way to run it, and a way to tell whether its output is done.

Each stage module (job/training/train.py, export/convert.py, export/validate.py, export/publish.py)
defines one `Stage` next to the code that writes its completion marker, so the question "is
this stage complete and current for this config?" is answered in exactly one place. The
runner (job/stages.py) only loops over them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from job.config.settings import Config
from job.data.dataset import CifarData, load_dataset
from job.core.paths import RunPaths


class Result(Protocol):
    """What a stage returns: a record that says in one line what happened."""

    def summary(self) -> str: ...


@dataclass
class StageInputs:
    """What a stage may need beyond its config and run directory; the data set is loaded once, on first use."""

    config: Config
    paths: RunPaths
    training_callbacks: Callable[[], Sequence[Any]] = tuple  # made only when training runs: they import Keras
    _data: CifarData | None = field(default=None, repr=False)

    def data(self) -> CifarData:
        if self._data is None:
            self._data = load_dataset(self.config.data)
        return self._data


def _accept(result: Result) -> None:
    """Most results need no verdict: running the stage without an error is success."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageInputs], Result]
    is_complete: Callable[[Config, RunPaths], bool]  # its marker exists and matches its inputs now
    check: Callable[[Any], None] = _accept  # raises when the (recorded) result must stop the command
