"""A run's folder: its id, the files in it, and the repairs a resumed run makes to it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..runtime.files import atomic_write, load_checkpoint, load_json, save_checkpoint, save_json
from ..runtime.labels import relabel

CHECKPOINT = "checkpoint.pt"
#: a vectorised program's checkpoint of an epoch not yet committed for all of its runs
PENDING = "checkpoint.pt.pending"
RESULT = "result.json"
# Loss curves in result.json are averaged down to at most this many points.
CURVE_POINTS = 2000


def run_id(spec: Mapping[str, Any]) -> str:
    """Relative run folder, e.g. ``mnist/mnist-minibatch/adam/seed0``."""
    return f"{spec['experiment']}/{spec['variant']}/{spec['optimizer']}/seed{spec['seed']}"


def _renamed(stored: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """A stored spec with today's variant names (a sweep's runs also name their base run)."""
    out = {**stored, "variant": spec["variant"]}
    if isinstance(stored.get("sweep"), dict) and isinstance(spec.get("sweep"), dict):
        out["sweep"] = {**stored["sweep"], "base": spec["sweep"]["base"]}
    return out


def migrate_old_id(logdir: str | os.PathLike[str], spec: Mapping[str, Any]) -> Path | None:
    """Move the folder of ``spec``'s run saved under an older id format (floats written in
    full, ``val_split0.16666666666666666``) to today's id, so ``--resume`` finds it; the
    variant in its ``result.json`` and checkpoint is renamed with it. Returns the old folder,
    or None when there was nothing to move (today's folder exists, or no older one does)."""
    root, variant = Path(logdir) / spec["experiment"], spec["variant"]
    new_dir = Path(logdir) / run_id(spec)
    if new_dir.exists() or not root.is_dir():
        return None
    tail = Path(spec["optimizer"]) / f"seed{spec['seed']}"
    old = [d / tail for d in sorted(root.iterdir())
           if d.name != variant and relabel(d.name) == variant and (d / tail).is_dir()]
    if not old:
        return None
    new_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(old[0], new_dir)
    if (new_dir / RESULT).is_file():
        result = load_json(new_dir / RESULT)
        result["spec"], result["run_id"] = _renamed(result["spec"], spec), run_id(spec)
        save_json(new_dir / RESULT, result)
    for name in (CHECKPOINT, PENDING):
        if (new_dir / name).is_file():
            state = load_checkpoint(new_dir / name)
            state["spec"] = _renamed(state["spec"], spec)
            save_checkpoint(new_dir / name, state)
    for empty in (old[0].parent, old[0].parent.parent):  # the old optimizer, variant folders
        if not any(empty.iterdir()):
            empty.rmdir()
    return old[0]


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
