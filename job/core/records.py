"""Result and state records as JSON, read back strictly: every field present and of its declared type.

A run directory can be edited, truncated or left by another version; whatever is read back
from it either is exactly what this code wrote or is a `ModelFileError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any

from job.core.bounded import read_bounded
from job.core.errors import ModelFileError

MAX_RECORD_BYTES = 64 << 20
MAX_NUMBER = 1e300  # largest integer a record may hold: a 400-digit one would overflow the first float conversion


class Record:
    """Mixin for a stage's result dataclass: it writes itself as JSON and reads itself back strictly."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"  # type: ignore[call-overload]

    @classmethod
    def load(cls, path: Path) -> Any:
        return read_record(cls, path)


def read_record(cls: type[Any], path: Path) -> Any:
    """The dataclass `cls` from the JSON file `path`."""
    where = f"record {path}"
    return parse_record(cls, read_bounded(path, MAX_RECORD_BYTES, ModelFileError, where), where)


def parse_record(cls: type[Any], raw: bytes | str, where: str) -> Any:
    """The dataclass `cls` from JSON text; `where` names it in the error."""
    try:
        record = json.loads(raw)  # ±Infinity allowed: a checkpoint before its first epoch has no best loss yet
        hints = typing.get_type_hints(cls)
        if not isinstance(record, dict) or set(record) != set(hints):
            raise ValueError("its fields differ")
        wrong = [key for key, hint in hints.items() if not _matches(record[key], hint)]
        if wrong:
            raise ValueError(f"{wrong[0]} has the wrong type")
        return cls(**record)  # a record's __post_init__ checks ranges with ValueError
    except (ValueError, RecursionError) as e:
        raise ModelFileError(f"{where}: not a record this version of cifar-job wrote ({str(e)[:80]})") from None


def strict_json(raw: bytes | str) -> Any:
    """JSON as the standard defines it: NaN and ±Infinity, which Python's json reads unless told not to, are a ValueError."""
    return json.loads(raw, parse_constant=_no_constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _matches(value: Any, hint: Any) -> bool:
    """isinstance for the JSON shapes of these records: str, bool, int, float (not NaN), list[...], dict[str, ...]; numbers in range."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint)
        return isinstance(value, dict) and all(_matches(v, item) for v in value.values())
    if hint is float:
        if isinstance(value, int) and not isinstance(value, bool):
            return abs(value) <= MAX_NUMBER
        return isinstance(value, float) and not math.isnan(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_NUMBER
    return isinstance(value, hint)


def read_marker(path: Path) -> dict[str, Any]:
    """A completion marker's JSON object; {} when missing, unreadable or of another shape.

    For "is this stage complete?" only: an unreadable marker means "no", and the stage, when
    it runs, reads its inputs strictly and names any corrupt file.
    """
    try:
        marker = strict_json(read_bounded(path, MAX_RECORD_BYTES, ModelFileError, f"record {path}"))
    except (ModelFileError, ValueError, RecursionError):
        return {}
    return marker if isinstance(marker, dict) else {}
