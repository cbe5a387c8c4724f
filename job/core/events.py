"""TensorBoard event files written whole, for summaries made outside a TensorFlow writer.

Validation (which never imports TensorFlow) and experiment finalisation write small event files
that each replace their previous one: written to a temporary name and renamed, so TensorBoard, or
a sync to a bucket, never reads half of one, and a rewrite adds no duplicate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from job.core.atomic import atomic_path


def write_events(path: Path, summaries: Sequence[tuple[int, Any]]) -> None:
    """Replace the event file `path` with (step, tensorboard Summary proto) pairs."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    now = time.time()
    events = [Event(wall_time=now, file_version="brain.Event:2"), *(Event(wall_time=now, step=step, summary=summary) for step, summary in summaries)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = RecordWriter(f)
        for event in events:
            writer.write(event.SerializeToString())
