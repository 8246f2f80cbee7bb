"""One run trained to the end, or resumed: a task, its epochs, and the run writer."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..runtime import distributed
from ..runtime.process import RunOptions, flush_denormal, prepare_process
from ..tasks.registry import make_task
from ..tasks.spec import RunSpec
from .folder import run_id
from .writer import RunWriter, Start, inspect, settle_pending


def execute_run(
    spec: Mapping[str, Any],
    opts: RunOptions,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one run to the end (or resume it); returns its result dict.

    The result is written atomically to ``result.json`` only when every epoch is done; a
    checkpoint is written atomically after every epoch.
    """
    spec = RunSpec.of(spec).normalised()
    # Under torchrun rank 0 alone reads and writes the run folder; the others follow it.
    main = distributed.is_main()
    if main and opts.resume:  # (a vectorised program's epoch left half-committed)
        settle_pending([Path(opts.logdir) / run_id(spec)])
    start = inspect(spec, opts) if main else None
    # every rank skips, resumes from the same state (epoch) or starts over, as rank 0 decided
    start = distributed.broadcast(start)
    assert start is not None
    if start.finished is not None:
        return start.finished
    spec = start.spec or spec  # (a checkpoint its task resumes as it ran: as it ran)
    device = prepare_process(opts)
    with flush_denormal(spec.techniques.flush_denormal):
        return _train(spec, opts, start, device, on_progress, main)


def _train(spec: RunSpec, opts: RunOptions, start: Start, device: torch.device,
           on_progress: Callable[[dict[str, Any]], None] | None, main: bool) -> dict[str, Any]:
    # Build the task (loads data) before touching the run folder: a data error leaves nothing.
    task = make_task(spec, device, opts.data_dir)
    ctx = distributed.context()
    if ctx is not None:
        task.distribute(ctx)
    epochs, spe = spec.epochs, task.steps_per_epoch
    writer = RunWriter(spec, opts, start, spe, main)
    if start.state is not None:
        task.load_state_dict(start.state["task"])
    try:
        writer.log_hparams(task.hparams(), task.hparam_metrics())
        for epoch in range(writer.start_epoch + 1, epochs + 1):
            if task.stop:  # early stopping (also after a resume)
                break
            t0 = time.perf_counter()
            base = (epoch - 1) * spe

            def progress(done: int, loss: float, base: int = base, epoch: int = epoch) -> None:
                if on_progress is not None:
                    on_progress(
                        {"step": base + done, "epoch": epoch, "loss": loss, "total": epochs * spe}
                    )

            metrics = task.train_epoch(epoch, writer.epoch_losses(epoch), progress)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - t0
            metrics.update(task.evaluate() if main else {})
            epoch_time = time.perf_counter() - t0
            metrics["time/epoch_seconds"] = epoch_time
            metrics["time/train_seconds"] = train_time
            # rank 0's evaluation on every rank: decisions taken from it (early stopping,
            # ReduceLROnPlateau) must be identical everywhere
            metrics = distributed.broadcast(metrics)
            # Task hooks of the §V techniques (scheduler, early stopping).
            metrics.update(task.end_epoch(epoch, metrics))
            writer.end_epoch(epoch, metrics, task.state_dict(), task.histograms())
            if on_progress is not None:
                on_progress({"step": base + spe, "epoch": epoch, "total": epochs * spe, **metrics})
    finally:
        writer.close()
    return writer.result(device, task.finish())
