"""Vectorised runs: N runs of one architecture trained as one program, each still a normal run.

Each replica is a normal run on disk, written by the same :class:`~.writer.RunWriter` as a
single run: its own TensorBoard folder with hparams, per-step loss and per-epoch metrics,
per-epoch checkpoints and ``result.json`` -- so ``--resume`` continues a vectorised run either
way. An epoch's checkpoints are committed for all replicas together (:func:`.settle_pending`),
so a program killed at any moment resumes with every unfinished replica at the same epoch and
goes on as the same program: the numbers of a sweep never killed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runtime.process import RunOptions, prepare_process
from ..tasks.registry import make_stacked, replica_group
from ..tasks.spec import RunSpec
from .folder import run_id
from .single import execute_run
from .writer import RunWriter, Start, inspect, settle_pending

Spec = Mapping[str, Any]


def plan_groups(specs: Sequence[Spec], max_replicas: int = 64,
                ) -> tuple[list[list[Spec]], list[Spec]]:
    """Split ``specs`` into vectorisable groups (2+ runs) and runs to do one by one."""
    groups: dict[tuple[Any, ...], list[Spec]] = {}
    alone: list[Spec] = []
    for spec in specs:
        key = replica_group(spec)
        if key is None:
            alone.append(spec)
        else:
            groups.setdefault(key, []).append(spec)
    out: list[list[Spec]] = []
    for members in groups.values():
        for i in range(0, len(members), max_replicas):
            chunk = members[i : i + max_replicas]
            if len(chunk) > 1:
                out.append(chunk)
            else:
                alone.extend(chunk)
    return out, alone


def execute_vectorized(
    specs: Sequence[Mapping[str, Any]],
    opts: RunOptions,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``specs`` (one group from :func:`plan_groups`) as one program.

    Finished runs are skipped under ``--resume``; the others continue together from their
    common checkpointed epoch. Runs that cannot (a checkpoint set aside as unusable left them
    at another epoch) are continued one by one.
    """
    specs = [RunSpec.of(s).normalised() for s in specs]
    if opts.resume:
        settle_pending([Path(opts.logdir) / run_id(s) for s in specs])
    results: list[dict[str, Any]] = []

    def done(res: dict[str, Any]) -> None:
        results.append(res)
        if on_done:
            on_done(res)

    todo: list[tuple[RunSpec, Start]] = []
    for spec in specs:
        start = inspect(spec, opts)
        if start.finished is not None:
            done(start.finished)
        elif start.spec is not None:  # resumed as its checkpoint's spec: alone
            done(execute_run(spec, opts))
        else:
            todo.append((spec, start))
    if not todo:
        return results
    if len({start.epoch for _, start in todo}) > 1:
        for spec, _ in todo:  # (continuing from different epochs: one by one)
            done(execute_run(spec, opts))
        return results
    device = prepare_process(opts)
    n = len(todo)
    prog = make_stacked([spec for spec, _ in todo], device, opts.data_dir)
    spe = prog.steps_per_epoch
    writers = [RunWriter(spec, opts, start, spe) for spec, start in todo]
    first, epochs = writers[0].start_epoch, todo[0][0].epochs
    if first:
        prog.load_replica_states([start.state["task"] for _, start in todo if start.state])
    try:
        for r, writer in enumerate(writers):
            writer.log_hparams(prog.hparams(r), prog.hparam_metrics())
        for epoch in range(first + 1, epochs + 1):
            t0 = time.perf_counter()
            losses = prog.train_epoch(epoch)
            train_time = time.perf_counter() - t0
            metrics = prog.evaluate()
            # the program's time, shared: each replica is charged 1/N of it
            epoch_time = (time.perf_counter() - t0) / n
            for r, writer in enumerate(writers):
                writer.epoch_losses(epoch).copy_(losses[r])
                m = {"train/loss_epoch": float(losses[r].double().mean()), **metrics[r],
                     "time/epoch_seconds": epoch_time, "time/train_seconds": train_time / n}
                writer.end_epoch(epoch, m, prog.replica_state(r), pending=True)
            for writer in writers:  # every replica's epoch is on disk: commit them
                writer.commit()
    finally:
        for writer in writers:
            writer.close()
    for writer in writers:
        done(writer.result(device, vectorized=n))
    return results
