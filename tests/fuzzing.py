"""Run an atheris fuzz target in a process of its own, its memory bounded by the kernel.

libFuzzer's -rss_limit_mb reads the peak RSS that Linux carries across fork and exec, so the
child of a large pytest process starts "over the limit" before it runs a single input. The
child's address space is capped with RLIMIT_AS instead: an input that needs more memory than a
bounded loader ever should fails with MemoryError, which every target counts as a finding.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE_BYTES = 3 << 30  # the interpreter, numpy and atheris take about 1 GiB of it


def run_fuzzer(module: str, seconds: int, workdir: Path, *args: str) -> tuple[int, str]:
    """Fuzz `module` (python -m) for `seconds`; assert nothing was found; return its executions and log."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))

    command = [
        sys.executable, "-m", module, *args, f"-max_total_time={seconds}", "-rss_limit_mb=0", "-timeout=10",
        "-print_final_stats=1", f"-artifact_prefix={workdir}/",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300, preexec_fn=limit_memory, env=env)
    findings = [p.name for p in workdir.iterdir() if p.name.startswith(("crash-", "oom-", "timeout-", "leak-"))]
    assert proc.returncode == 0 and not findings, f"{findings} (inputs in {workdir})\n{proc.stderr[-3000:]}"
    return int(re.search(r"stat::number_of_executed_units: (\d+)", proc.stderr).group(1)), proc.stderr


def fuzz_main(argv: list[str], targets: dict[str, tuple[Callable[[bytes], None], Callable[[], list[bytes]]]]) -> None:
    """A fuzz module's entry point, `python -m MODULE TARGET [libFuzzer flags] [CORPUS]`: seed the corpus, then fuzz.

    A CORPUS that is a file is an input to replay, not a corpus to seed.
    """
    import atheris

    target, seeds = targets[argv[1]]
    args = [argv[0], *argv[2:]]
    corpus = next((Path(a) for a in args[1:] if not a.startswith("-")), None)
    if corpus is None:
        corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{argv[1]}-"))
        args.append(str(corpus))
    if corpus.is_dir() or not corpus.exists():
        corpus.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup(args, target)
    atheris.Fuzz()
