"""Coverage-guided fuzzing of config loading (YAML file, environment, --set), as an attacker could write them.

Each input becomes a config file, environment variables and --set flags built from the real keys
and from values chosen to hurt (anchors, tags, NaN, huge numbers, control characters, deep
nesting) or raw fuzzer text. A finding is anything but a `Config` or a `ConfigError` of one short
line, or an input past the per-input time (-timeout) or the memory cap (tests/fuzzing.py).

pytest runs it briefly; `pytest -m slow tests/test_fuzz_config.py` runs CIFAR_FUZZ_SECONDS
(default 600). By hand: `python -m tests.test_fuzz_config -max_total_time=600 -timeout=10`
from the repository root; a finding is saved as crash-<sha1> (replay: pass that file as the argument).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fuzzing import run_fuzzer

SCALARS = [
    "3", "0", "-1", "-0.0", "1e3", "1.0e+3", ".nan", ".NaN", ".inf", "-.inf", "0x" + "f" * 300, "9" * 4200, "0o777",
    "1_000", "190:20:30", "4294967295", "4294967296", "2**32", "true", "yes", "off", "~", "null", "", "'0.5'",
    '"a\\0b"', '"\\e[2J"', '"\\u202e"', '"line\\nbreak"', "2024-01-01", "2001-12-14t21:59:43.10-05:00", "=", "<<",
    "*a", "&a 1", "&a [1, 2]", "!!binary aGVsbG8=", "!!timestamp 2024-01-01", "!!python/object/apply:os.system [id]",
    "!!set {a}", "!!omap [a: 1]", "!int 3", "!!str 3", "!!float 1", "[", "{", "]", "}", "- x", "? x", "|\n  x",
    "0.0.0.0", "::", "localhost", "http://127.0.0.1:9091", "md5:" + "0" * 32, "/tmp/x", "runs/../../etc",
]


def _value(fdp, depth: int = 0) -> str:
    """A YAML value in flow style: a hostile or valid scalar, fuzzer text, a number, or a list or map of values."""
    kind = fdp.ConsumeIntInRange(0, 5 if depth < 4 else 3)
    if kind == 0:
        return fdp.PickValueInList(SCALARS)
    if kind == 1:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if kind == 2:
        return str(fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 40)))
    if kind == 3:
        return repr(fdp.ConsumeFloat())
    items = [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 4:
        return "[" + ", ".join(items) + "]"
    return "{" + ", ".join(f"{_key(fdp)}: {item}" for item in items) + "}"


def _key(fdp) -> str:
    return fdp.ConsumeUnicodeNoSurrogates(8) if fdp.ConsumeIntInRange(0, 9) == 0 else fdp.PickValueInList(KEYS)


def _document(fdp) -> bytes:
    """Config file bytes: raw fuzzer bytes, or sections of real keys with fuzzed values in block style."""
    if fdp.ConsumeIntInRange(0, 4) == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048))
    lines = []
    for _ in range(fdp.ConsumeIntInRange(0, 5)):
        section = fdp.PickValueInList(SECTIONS)
        if fdp.ConsumeBool():
            lines.append(f"{section}: {_value(fdp)}")
            continue
        lines.append(f"{section}:")
        lines += [f"  {_key(fdp)}: {_value(fdp)}" for _ in range(fdp.ConsumeIntInRange(0, 5))]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    CONFIG_FILE.write_bytes(_document(fdp))
    env = {}
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        dotted = fdp.PickValueInList(DOTTED)
        name = ENV_PREFIX + (dotted.replace(".", "_").upper() if fdp.ConsumeIntInRange(0, 5) else fdp.ConsumeUnicodeNoSurrogates(12))
        env[name.replace("\0", "").replace("=", "")] = _value(fdp).replace("\0", "")  # what an environment can hold
    sets = tuple(f"{fdp.PickValueInList(DOTTED)}={_value(fdp)}" for _ in range(fdp.ConsumeIntInRange(0, 3)))
    try:
        config = load_config(CONFIG_FILE, env=env, overrides=parse_sets(sets))
    except ConfigError as e:
        message = str(e)
        if "\n" in message or len(message) > 1000:
            raise AssertionError(f"not one short line ({len(message)} characters): {message[:300]!r}") from None
        return
    assert isinstance(config, Config)


def _fuzz(seconds: int, tmp_path: Path) -> tuple[int, str]:
    return run_fuzzer("tests.test_fuzz_config", seconds, tmp_path, "-max_len=8192")


def test_fuzz_config_loading_briefly(tmp_path: Path) -> None:
    runs, log = _fuzz(15, tmp_path)
    assert runs >= 1000, log[-2000:]  # it really ran


@pytest.mark.slow
def test_fuzz_config_loading_long(tmp_path: Path) -> None:
    runs, log = _fuzz(int(os.environ.get("CIFAR_FUZZ_SECONDS", "600")), tmp_path)
    print(log[-600:])
    assert runs >= 10_000


if __name__ == "__main__":
    import atheris

    with atheris.instrument_imports(include=["job", "yaml"]):
        from job.config.settings import ENV_PREFIX, SECTION_NAMES, Config, load_config, parse_sets
        from job.config.settings import SECTIONS as MODELS
        from job.core.errors import ConfigError

    SECTIONS = [*SECTION_NAMES, "out", "trian", "validate_"]
    DOTTED = ["out", *(f"{a}.{k}" for a, m in zip(SECTION_NAMES, MODELS.values()) for k in m.model_fields), "train.epoch", "x.y.z"]
    KEYS = [key.rpartition(".")[2] for key in DOTTED]
    CONFIG_FILE = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "config.yaml"
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
