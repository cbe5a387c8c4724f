"""Coverage-guided fuzzing (atheris) of the experiment spec loader and the chart values reader.

    .venv/bin/python -m tests.fuzz_inputs spec   -max_total_time=600 -max_len=8192  [CORPUS]
    .venv/bin/python -m tests.fuzz_inputs values -max_total_time=600 -max_len=16384 [CORPUS]

Both read a file a user names through the bounded strict YAML reader (job.config.settings.read_yaml). A
finding is anything but a clean load or a `ConfigError` whose message is one printable line of at
most 1000 characters: another exception (another `JobError` included), a crash, an input past the
per-input time (-timeout) or the memory cap (tests/fuzzing.py); libFuzzer then writes the input
to `crash-*`/`timeout-*` and exits non-zero (replay: pass that file as the argument).

The first input byte picks a sub-target, so one corpus covers related entry points:
  spec:   0: the rest is the spec file, as written; 1: a spec built from the rest, with the spec's
          and the config's real keys and values chosen to hurt (tests/test_fuzz_config.py SCALARS).
  values: 0: `-f FILE`; 1: `-f values.yaml -f FILE` (merged over the chart's defaults); 2: `--experiment FILE`.
Seeds (written into the corpus directory, a fresh temporary one if none is given) are the real
files: charts/cifar-job/examples/experiment.yaml, the specs of tests/test_experiment_spec.py and
charts/cifar-job/values*.yaml.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["job", "yaml"]):
    from job.kube.chart import load_values
    from job.config.settings import SECTION_NAMES, SECTIONS
    from job.core.errors import ConfigError, JobError
    from job.config.experiment_spec import MAX_TRIALS, ExperimentSpec, load_spec

from tests.test_fuzz_config import SCALARS
from tests.fuzzing import fuzz_main

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cifar-job"
WORKDIR = Path(tempfile.mkdtemp(prefix="fuzz-inputs-"))
FILE = WORKDIR / "input.yaml"
MAX_MESSAGE = 1000

DOTTED = ["out", "recipe", *(f"{section}.{key}" for section, model in zip(SECTION_NAMES, SECTIONS.values()) for key in model.model_fields)]
DOTTED += ["train.epoch", "x.y", "data.folds", "data.fold", "train.seed"]
KEYS = [key.rpartition(".")[2] for key in DOTTED]
GRID_SECTIONS = [*SECTION_NAMES, "train.", "x"]
SPEC_KEYS = ["name", "base", "grid", "seeds", "folds", "select", "seed", "Name"]
NAMES = ["lr-seeds", "seeds-fast", "a", "a" * 40, "a" * 41, "Lr_Seeds", "-a", "a-", "0"]


def _check(error: JobError) -> None:
    """The refusal the property allows: a ConfigError of one short printable line."""
    message = str(error)
    if not isinstance(error, ConfigError):
        raise AssertionError(f"{type(error).__name__}, not a ConfigError: {message[:300]!r}") from error
    if not message.isprintable() or len(message) > MAX_MESSAGE:
        raise AssertionError(f"not one short printable line ({len(message)} characters): {message[:300]!r}") from None


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> str:
    """A YAML value in flow style: a hostile or valid scalar, fuzzer text, a number, or a list or map of values."""
    kind = fdp.ConsumeIntInRange(0, 5 if depth < 3 else 3)
    if kind == 0:
        return fdp.PickValueInList(SCALARS)
    if kind == 1:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind == 2:
        return str(fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 16)))
    if kind == 3:
        return repr(fdp.ConsumeFloat())
    items = [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    if kind == 4:
        return "[" + ", ".join(items) + "]"
    return "{" + ", ".join(f"{_key(fdp)}: {item}" for item in items) + "}"


def _key(fdp: atheris.FuzzedDataProvider, keys: list[str] = KEYS) -> str:
    return fdp.ConsumeUnicodeNoSurrogates(8) if fdp.ConsumeIntInRange(0, 9) == 0 else fdp.PickValueInList(keys)


def _base(fdp: atheris.FuzzedDataProvider) -> str:
    """A config mapping in flow style: sections of real keys, or a fuzzed value where a section goes."""
    sections = []
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        section = fdp.PickValueInList([*SECTION_NAMES, "out", "recipe", "trian"])
        if fdp.ConsumeIntInRange(0, 3) == 0:
            sections.append(f"{section}: {_value(fdp)}")
        else:
            keys = ", ".join(f"{_key(fdp)}: {_value(fdp)}" for _ in range(fdp.ConsumeIntInRange(0, 3)))
            sections.append(f"{section}: {{{keys}}}")
    return "{" + ", ".join(sections) + "}"


def _spec_document(fdp: atheris.FuzzedDataProvider) -> bytes:
    """A spec in block style, mostly a valid one: each of its keys left out, plausible, hostile, or misspelt and repeated."""
    lines = []
    for key in ("name", "base", "grid", "seeds", "folds", "select"):
        choice = fdp.ConsumeIntInRange(0, 9)
        if choice == 0:
            continue
        if choice == 1:
            lines.append(f"{key}: {_value(fdp)}")
        elif choice == 2:
            lines.append(f"{_key(fdp, SPEC_KEYS)}: {_value(fdp)}")
        elif key == "name":
            lines.append(f"name: {fdp.PickValueInList(NAMES) if choice == 3 else 'a'}")
        elif key == "base":
            lines.append(f"base: {_base(fdp)}")
        elif key == "grid":
            points = (f"{_grid_key(fdp)}: [{', '.join(_value(fdp, 2) for _ in range(fdp.ConsumeIntInRange(0, 4)))}]"
                      for _ in range(fdp.ConsumeIntInRange(0, 3)))  # fmt: skip
            lines.append("grid:\n" + "".join(f"  {point}\n" for point in points).rstrip("\n"))
        elif key in ("seeds", "folds"):
            lines.append(f"{key}: {fdp.ConsumeIntInRange(-1, 12)}")
        else:
            lines.append(f"{key}: {fdp.PickValueInList(['val_accuracy', 'val_loss', 'test_accuracy'])}")
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def _grid_key(fdp: atheris.FuzzedDataProvider) -> str:
    """A dotted config key, or a whole section (its mapping is then one grid value), or fuzzer text."""
    return fdp.PickValueInList(GRID_SECTIONS) if fdp.ConsumeIntInRange(0, 3) == 0 else _key(fdp, DOTTED)


def spec_target(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        fdp = atheris.FuzzedDataProvider(data[1:])
        FILE.write_bytes(_spec_document(fdp))
    else:
        FILE.write_bytes(data[1:])
    try:
        spec = load_spec(FILE, env={})
    except JobError as e:
        _check(e)
        return
    assert isinstance(spec, ExperimentSpec) and 1 <= spec.trial_count <= MAX_TRIALS, spec


def values_target(data: bytes) -> None:
    if not data:
        return
    mode = data[0] % 3
    FILE.write_bytes(data[1:])
    try:
        if mode == 0:
            values = load_values([FILE])
        elif mode == 1:
            values = load_values([CHART / "values.yaml", FILE])
        else:
            values = load_values([], experiment=FILE)
    except JobError as e:
        _check(e)
        return
    assert isinstance(values, dict)


def spec_seeds() -> list[bytes]:
    from tests.test_experiment_spec import BAD, SPEC  # the tests' own specs, good and bad

    texts = [(CHART / "examples" / "experiment.yaml").read_text(), SPEC, "name: one\nbase: {recipe: fast}\n"]
    texts.append("name: a\ngrid: {train: [{learning_rate: 0.05}, {learning_rate: 0.1}]}\nseeds: 3\n")  # a section's mapping per point
    texts += [text for text, _ in BAD.values()]
    seeds = [b"\0" + text.encode() for text in texts]
    seeds += [b"\1" + bytes(range(i, 256, 7)) for i in range(7)]  # structured documents
    return seeds


def values_seeds() -> list[bytes]:
    files = sorted(CHART.glob("values*.yaml"))
    return [bytes([mode]) + file.read_bytes() for file in files for mode in range(3)]


TARGETS = {"spec": (spec_target, spec_seeds), "values": (values_target, values_seeds)}


if __name__ == "__main__":
    fuzz_main(sys.argv, TARGETS)
