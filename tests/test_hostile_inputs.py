"""Hostile files where the chart's values and experiment specs are read, through the command line a user types.

`k8s render|submit -f VALUES`, `k8s render|submit --experiment SPEC`, `experiment trials SPEC` and
`experiment run SPEC --out DIR` all read through the one bounded strict reader (job.config.settings.read_yaml).
Every hostile input must end the same way as a hostile config file does (tests/test_config.py):
exit 2, one `cifar-job: error: ` line naming the file, no traceback, within seconds and bounded
memory, nothing written. Inputs that could block a careless reader for ever (a FIFO, /dev/zero)
run in a child process with a deadline and a memory cap.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from job.cli import main

from .conftest import on_tmpfs
from .test_config import ALIAS_BOMB, _limited, _one_error_line

pytestmark = pytest.mark.fast  # no training, no fuzzing: the tier `bash tests/run.sh -m fast` runs

SECONDS = 10  # for one refused command, start-up included, on a busy machine; each takes well under one

# How a command takes the file, as (arguments, what its message calls the file, the option Click checks, or None).
FORMS: dict[str, tuple[Callable[[Path, Path], list[str]], str, str | None]] = {
    "render -f": (lambda file, tmp: ["k8s", "render", "-f", str(file)], "values file", "'-f' / '--values'"),
    "render --experiment": (lambda file, tmp: ["k8s", "render", "--experiment", str(file)], "experiment spec", "'--experiment'"),
    "submit -f": (lambda file, tmp: ["k8s", "submit", "-f", str(file)], "values file", "'-f' / '--values'"),
    "submit --experiment": (lambda file, tmp: ["k8s", "submit", "--experiment", str(file)], "experiment spec", "'--experiment'"),
    "experiment trials": (lambda file, tmp: ["experiment", "trials", str(file)], "experiment spec", None),
    "experiment run": (lambda file, tmp: ["experiment", "run", str(file), "--out", str(tmp / "exp")], "experiment spec", None),
}


def _write(tmp: Path, content: str | bytes) -> Path:
    file = tmp / "input.yaml"
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    return file


def _fifo(tmp: Path) -> Path:
    fifo = tmp / "fifo.yaml"
    os.mkfifo(fifo)  # no writer: an open() or read() that blocks would wait for ever
    return fifo


def _directory(tmp: Path) -> Path:
    directory = tmp / "dir.yaml"
    directory.mkdir()
    return directory


NOT_REGULAR = "{where}: not a regular file"

# Input name -> (make it under tmp, the problem each form reports; {where} is "<what> <file>").
HOSTILE_INPUTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "alias bomb": (lambda tmp: _write(tmp, ALIAS_BOMB), "{where} line 3: not valid YAML: anchors (&) and aliases (*) are not supported"),
    "/dev/zero": (lambda tmp: Path("/dev/zero"), NOT_REGULAR),
    "FIFO": (_fifo, NOT_REGULAR),
    "5000-deep nesting": (lambda tmp: _write(tmp, "[" * 5000), "{where} line 1: not valid YAML: "),
    "5000-deep mapping": (lambda tmp: _write(tmp, "{a: " * 5000), "{where} line 1: not valid YAML: "),
    "2 MiB file": (lambda tmp: _write(tmp, "#" * (2 << 20) + "\n"), "{where}: larger than 1048576 bytes"),
    "invalid UTF-8": (lambda tmp: _write(tmp, b"name: a\nbase: \xc3\x28\n"), "{where}: not UTF-8 text (byte 14)"),
    "list document": (lambda tmp: _write(tmp, "- name: a\n"), "{where}: expected a mapping of sections, got list"),
    "scalar document": (lambda tmp: _write(tmp, "just words\n"), "{where}: expected a mapping of sections, got str"),
    "directory": (_directory, "CLICK is a directory"),
    "missing file": (lambda tmp: tmp / "missing.yaml", "CLICK does not exist"),
}
READ_BY_THE_CHILD = {"/dev/zero", "FIFO", "alias bomb"}  # run with a deadline and a memory cap
EXPECTED_WITHOUT_CLICK = {"directory": NOT_REGULAR, "missing file": "{where}: cannot read (No such file or directory)"}


def _run(args: list[str], in_child: bool):
    """Run `cifar-job ARGS`: in this process (CliRunner), or in a child with a deadline, 5 s of CPU and 1.5 GiB."""
    started = time.perf_counter()
    if in_child:
        proc = subprocess.run([sys.executable, "-m", "job", *args], capture_output=True, text=True, timeout=30,
                              preexec_fn=_limited(5, 1.5), env={**os.environ, "KUBECONFIG": "/nonexistent"})  # fmt: skip
        result = SimpleNamespace(exit_code=proc.returncode, stderr=proc.stderr, stdout=proc.stdout, output=proc.stdout + proc.stderr, exception=None)
    else:
        result = CliRunner().invoke(main, args, env={"KUBECONFIG": "/nonexistent"}, prog_name="cifar-job")
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert time.perf_counter() - started < SECONDS
    assert "Traceback" not in result.output and result.stdout == "", result.output[-2000:]
    return result


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", HOSTILE_INPUTS)
def test_hostile_values_or_spec_file_is_one_line_exit_2(case: str, form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make, problem = HOSTILE_INPUTS[case]
    args, what, option = FORMS[form]
    file = make(tmp_path)
    if "CLICK" in problem and option is None:  # the experiment commands leave checking the file to the reader
        problem = EXPECTED_WITHOUT_CLICK[case]
    elif "CLICK" in problem:
        problem = f"command line of cifar-job k8s {form.split()[0]}: Invalid value for {option}: " + problem.replace("CLICK", f"File '{file}'")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    message = _one_error_line(_run(args(file, tmp_path), in_child=case in READ_BY_THE_CHILD))
    assert message.startswith(problem.format(where=f"{what} {file}")), message
    assert list(cwd.iterdir()) == [] and not (tmp_path / "exp").exists()  # no run, experiment or manifest directory


def test_fifo_given_as_values_and_spec_together_does_not_block(tmp_path: Path) -> None:
    """Two FIFOs on one command line: the first one read is refused, and nothing waits for a writer."""
    values, spec = tmp_path / "values.fifo", tmp_path / "spec.fifo"
    os.mkfifo(values)
    os.mkfifo(spec)
    message = _one_error_line(_run(["k8s", "render", "-f", str(values), "--experiment", str(spec)], in_child=True))
    assert message == f"values file {values}: not a regular file"


# --- k8s render --output-dir where nothing can be written --------------------------------------------


def _render_to(directory: Path | str) -> str:
    return _one_error_line(_run(["k8s", "render", "--output-dir", str(directory)], in_child=False))


def test_output_dir_under_a_regular_file_is_one_line_and_leaves_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = blocker / "sub"
    assert _render_to(out) == f"output directory {out}: not writable (Not a directory)"
    assert blocker.read_text() == "not a directory"


def test_output_dir_deep_under_a_regular_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "a" / "b" / "c"
    assert _render_to(out) == f"output directory {out}: not writable (Not a directory)"


def test_output_dir_in_proc_is_one_line() -> None:
    assert _render_to("/proc/x") == "output directory /proc/x: not writable (No such file or directory)"


def test_output_dir_that_is_a_regular_file_is_a_usage_error_of_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    message = _render_to(blocker)
    assert message.startswith(f"command line of cifar-job k8s render: Invalid value for '--output-dir': Directory '{blocker}' is a file")
    assert blocker.read_text() == "keep"


def test_output_dir_on_a_read_only_file_system_is_one_line(tmp_path: Path) -> None:
    """A read-only mount refuses root too (the chmod case below needs a user other than root)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    done, left = on_tmpfs(mount, "ro", "k8s", "render", "--output-dir", str(mount / "k8s"))
    assert (done.returncode, left) == (2, []), done.stderr[-2000:]
    assert done.stderr == f"cifar-job: error: output directory {mount / 'k8s'}: not writable (Read-only file system)\n"


# --- A whole section and a key inside it, as one trial's overrides ------------------------------------
# Found by tests/fuzz_inputs.py (spec target): a bare section with a value that is no mapping, then a
# dotted key of that section, used to index that value (a TypeError traceback, exit 1).

SECTION_AND_KEY = {
    "section in the grid, seeds add train.seed": ("name: a\ngrid: {train: [1]}\nseeds: 2\n", []),
    "section in the grid, folds add data.folds": ("name: a\ngrid: {data: [1]}\nfolds: 2\n", []),
    "section then its key in the grid": ("name: a\ngrid: {train: [1], train.epochs: [2]}\n", []),
    "section as a list then its key": ("name: a\ngrid: {train: [[1]], train.epochs: [2]}\n", []),
    "empty key after the section": ("name: a\ngrid: {train.: [1], train.epochs: [2]}\n", []),
    "section then its key in --set": ("name: a\n", ["--set", "train=1", "--set", "train.epochs=3"]),
}


@pytest.mark.parametrize("case", SECTION_AND_KEY)
def test_a_section_and_a_key_inside_it_is_one_line_exit_2(case: str, tmp_path: Path) -> None:
    text, sets = SECTION_AND_KEY[case]
    spec = _write(tmp_path, text)
    command = ["experiment", "run", str(spec), "--out", str(tmp_path / "exp"), *sets] if sets else ["experiment", "trials", str(spec)]
    message = _one_error_line(_run(command, in_child=False))
    assert message.startswith((f"experiment spec {spec}", "config key train", "config key data")), message
    assert not (tmp_path / "exp").exists()


def test_a_section_and_a_key_inside_it_in_train_set_flags_is_one_line_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    message = _one_error_line(_run(["train", "--set", "train=1", "--set", "train.epochs=3", "--out", str(out)], in_child=False))
    assert message.startswith("config key train"), message
    assert not out.exists()
