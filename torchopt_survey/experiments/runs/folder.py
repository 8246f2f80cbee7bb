"""A run's folder: its id, the files in it, and the repairs a resumed run makes to it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..runtime.files import atomic_write

CHECKPOINT = "checkpoint.pt"
#: a vectorised program's checkpoint of an epoch not yet committed for all of its runs
PENDING = "checkpoint.pt.pending"
RESULT = "result.json"
# Loss curves in result.json are averaged down to at most this many points.
CURVE_POINTS = 2000


def run_id(spec: dict[str, Any]) -> str:
    """Relative run folder, e.g. ``mnist/mnist-minibatch/adam/seed0``."""
    return f"{spec['experiment']}/{spec['variant']}/{spec['optimizer']}/seed{spec['seed']}"


def normalise(spec: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip so specs from YAML, checkpoints and result files compare equal."""
    return json.loads(json.dumps(spec, sort_keys=True))


def downsample(losses: torch.Tensor, points: int = CURVE_POINTS) -> tuple[list[int], list[float]]:
    """Window means of the per-step losses; x is the (1-based) last step of each window."""
    n = losses.numel()
    w = max(1, -(-n // points))
    k = n // w
    xs = [(i + 1) * w for i in range(k)]
    ys = losses[: k * w].double().reshape(k, w).mean(1).tolist()
    if k * w < n:
        xs.append(n)
        ys.append(float(losses[k * w :].double().mean()))
    return xs, ys


def clear_run_dir(run_dir: Path) -> None:
    """Remove our own files of an earlier attempt (events, checkpoints, result)."""
    if not run_dir.is_dir():
        return
    for p in run_dir.iterdir():
        if p.name.startswith("events.out.tfevents") or p.name in (CHECKPOINT, PENDING, RESULT):
            p.unlink()
        elif p.name.endswith(".tmp"):
            p.unlink()


def set_aside(path: Path, reason: str) -> str:
    """Rename an unusable checkpoint to ``checkpoint.pt.<reason>-<UTC time>`` in its folder: kept
    for inspection, never deleted, and out of the way of the fresh start. Returns the name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = path.with_name(f"{path.name}.{reason}-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.{reason}-{stamp}-{n}"), n + 1
    os.replace(path, target)
    return target.name


def purge_events_after(run_dir: Path, until: float) -> int:
    """Drop, from the run's TensorBoard event files, every event written after wall time
    ``until`` (the last checkpoint's): what a killed attempt logged past its checkpoint, which
    the resumed attempt logs again. A physical purge, so any reader sees one point per step
    (TensorBoard's own ``purge_step`` only asks its reader to hide them, and for one step axis).
    Files are rewritten atomically; a file left with no event is removed. Returns the count.
    (Events carry wall time: this assumes the clock did not step back during the lost epoch.)"""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    Event = event_pb2.Event  # pyright: ignore[reportAttributeAccessIssue]  # protobuf: runtime
    dropped = 0
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        records = list(RawEventFileLoader(str(path)).Load())  # a torn last record is skipped
        keep = [r for r in records if Event.FromString(r).wall_time <= until]
        dropped += len(records) - len(keep)
        if not keep:
            path.unlink()
        elif len(keep) < len(records):

            def write(fh: Any, keep: list[bytes] = keep) -> None:
                writer = RecordWriter(fh)
                for record in keep:
                    writer.write(record)

            atomic_write(path, write)
    return dropped
