"""The one run writer: what every run leaves on disk, however it was trained.

A single run, each replica of a vectorised program and each Ray trial's runs write through
:class:`RunWriter`: one TensorBoard folder per run (HParams, the per-step loss on the global
step axis, per-epoch metrics and histograms), one checkpoint format, one ``result.json``
schema, and one resume path (finished runs skipped, unusable checkpoints set aside, events
past the last checkpoint purged).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..runtime import distributed
from ..runtime.files import load_checkpoint, load_json, save_checkpoint, save_json
from ..runtime.process import RunOptions
from .folder import (
    CHECKPOINT,
    PENDING,
    RESULT,
    clear_run_dir,
    downsample,
    migrate_old_id,
    purge_events_after,
    run_id,
    set_aside,
)

log = logging.getLogger(__name__)

#: checkpoint format version (the keys :meth:`RunWriter.end_epoch` writes)
FORMAT = 1


@dataclass
class Start:
    """What the run folder says about how a run starts (rank 0 reads it, every rank gets it)."""

    #: the stored result of a finished run (``--resume``): nothing to train
    finished: dict[str, Any] | None = None
    #: the checkpoint to continue from
    state: dict[str, Any] | None = None
    #: (file suffix, reason) of a checkpoint that cannot be used: set aside, train from scratch
    unusable: tuple[str, str] | None = None

    @property
    def epoch(self) -> int:
        return 0 if self.state is None else int(self.state["epoch"])


def inspect(spec: dict[str, Any], opts: RunOptions) -> Start:
    """How the run of ``spec`` (normalised) starts under ``opts``; writes only to move a run
    folder of an older id format to today's id (:func:`migrate_old_id`) under ``--resume``."""
    run_dir = Path(opts.logdir) / run_id(spec)
    result_path, ckpt_path = run_dir / RESULT, run_dir / CHECKPOINT
    if not opts.resume:
        return Start()
    migrate_old_id(opts.logdir, spec)
    if result_path.is_file():
        try:
            done = load_json(result_path)
            if done.get("spec") == spec:
                return Start(finished={**done, "skipped": True})
        except (OSError, ValueError):
            pass  # unreadable result: train again
    if not ckpt_path.is_file():
        return Start()
    try:
        state = load_checkpoint(ckpt_path)
    except Exception as exc:  # any unreadable file: say so, keep it, start over
        return Start(unusable=("corrupt", f"unreadable: {type(exc).__name__}: {exc}"[:300]))
    if state.get("spec") != spec:
        return Start(unusable=("other-spec", "saved by a run with a different spec"))
    return Start(state=state)


def _epoch_of(path: Path) -> int | None:
    try:
        return int(load_checkpoint(path)["epoch"])
    except Exception:  # unreadable: not a committed epoch
        return None


def settle_pending(run_dirs: Sequence[Path]) -> None:
    """Finish or undo a vectorised program's interrupted commit of one epoch.

    The program writes every run's checkpoint of an epoch as ``checkpoint.pt.pending`` first
    and renames them over ``checkpoint.pt`` only when all are written, so its runs never stop at
    different epochs. A kill inside the renames leaves every run with the new epoch (pending or
    committed): finish them; a kill while writing leaves some runs without it: drop the pending
    files (their events past the previous checkpoint are purged on resume)."""
    pending = [d for d in run_dirs if (d / PENDING).is_file()]
    if not pending:
        return
    epochs = {_epoch_of(d / PENDING) for d in pending}
    target = max((e for e in epochs if e is not None), default=None)
    complete = target is not None and all(
        _epoch_of(d / (PENDING if d in pending else CHECKPOINT)) == target for d in run_dirs)
    for d in pending:
        if complete:
            os.replace(d / PENDING, d / CHECKPOINT)
        else:
            (d / PENDING).unlink()


def _not_main(*args: Any) -> None:
    """What ranks other than 0 do instead of writing to the run folder."""


class RunWriter:
    """Everything one run writes: TensorBoard events, checkpoints, its result.

    Built from the run's :class:`Start`: a fresh run clears the folder of an earlier attempt;
    a resumed one takes its history, per-step losses and clock from the checkpoint and purges
    the events a killed attempt logged past it. Under torchrun only rank 0 writes.
    """

    def __init__(self, spec: dict[str, Any], opts: RunOptions, start: Start,
                 steps_per_epoch: int, main: bool = True) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.spec, self.opts, self.main = spec, opts, main
        self.run_dir = Path(opts.logdir) / run_id(spec)
        self.spe, self.epochs = steps_per_epoch, int(spec["epochs"])
        self.step_losses = torch.full((self.epochs * steps_per_epoch,), float("nan"))
        self.history: dict[str, list[float]] = {}
        self.elapsed = 0.0
        self.start_epoch = start.epoch
        self.resumed = start.state is not None
        # checkpoints found unusable by this or an earlier attempt of the run (kept on disk)
        self.discarded: list[dict[str, str]] = []
        ckpt = self.run_dir / CHECKPOINT
        if start.unusable is not None and main:
            kept = set_aside(ckpt, start.unusable[0])
            log.warning("%s: %s checkpoint (%s); kept as %s, training from epoch 1",
                        run_id(spec), start.unusable[0], start.unusable[1], kept)
            self.discarded.append({"file": kept, "reason": start.unusable[1]})
        state = start.state
        if state is not None:
            self.history = {k: list(v) for k, v in state["history"].items()}
            self.step_losses = state["step_losses"].clone()
            self.elapsed = float(state["elapsed"])
            self.discarded = list(state.get("discarded_checkpoints", []))
            if "events_until" in state and main:
                purge_events_after(self.run_dir, float(state["events_until"]))
        elif main:
            clear_run_dir(self.run_dir)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # (purge_step also tells TensorBoard to hide them, for checkpoints without events_until)
        self.tb: Any = (
            SummaryWriter(str(self.run_dir),
                          purge_step=self.start_epoch * self.spe + 1 if self.resumed else None)
            if main else distributed.NullWriter())

    # -- TensorBoard
    def log_hparams(self, hparams: dict[str, Any], metric_tags: Sequence[str]) -> None:
        """The HParams plugin's summaries, once per run (a resumed run has them already),
        written into the run itself (not a timestamped sub-run) so the dashboard links each
        run to its own scalar tags; ``opts.hparam_domains`` (a sweep's optimizers, lrs,
        seeds) are declared as discrete values the dashboard can filter by."""
        if self.resumed or not self.main:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        clean = {k: (v if isinstance(v, int | float | str | bool) else str(v))
                 for k, v in hparams.items()}
        domains = self.opts.hparam_domains or {}
        declared = {k: v for k, v in domains.items() if k in clean and clean[k] in v}
        exp, ssi, sei = hp_summary(clean, {tag: 0.0 for tag in metric_tags},
                                   hparam_domain_discrete=declared or None)
        fw = self.tb._get_file_writer()
        for summary in (exp, ssi, sei):
            fw.add_summary(summary)

    def epoch_losses(self, epoch: int) -> torch.Tensor:
        """The view of the per-step losses an epoch's training fills in."""
        base = (epoch - 1) * self.spe
        return self.step_losses[base : base + self.spe]

    def end_epoch(self, epoch: int, metrics: dict[str, float], task_state: dict[str, Any],
                  histograms: dict[str, torch.Tensor] | None = None,
                  pending: bool = False) -> None:
        """Record one finished epoch: history, events (flushed), then the checkpoint.

        ``metrics`` must hold ``time/epoch_seconds`` (added to the run's clock).
        ``pending``: write the checkpoint as ``checkpoint.pt.pending`` for a group commit
        (:meth:`commit`, :func:`settle_pending`)."""
        self.elapsed += metrics["time/epoch_seconds"]
        for tag, values in (histograms or {}).items():
            self.tb.add_histogram(tag, values, epoch)
        for k, v in metrics.items():
            self.history.setdefault(k, []).append(v)
        # Per-step loss (as the mean of each log_every window) on the global-step axis.
        base, log_every = (epoch - 1) * self.spe, int(self.spec.get("log_every", 1))
        ep_losses = self.epoch_losses(epoch)
        for j in range(0, self.spe, log_every):
            window = ep_losses[j : j + log_every]
            self.tb.add_scalar("train/loss", float(window.double().mean()), base + j + 1)
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, epoch)
        self.tb.flush()  # events up to this checkpoint must survive a SIGKILL
        events_until = time.time()  # events after this belong to a later epoch
        # (rank 0 alone writes; its state is every rank's: DDP keeps them identical)
        (save_checkpoint if self.main else _not_main)(
            self.run_dir / (PENDING if pending else CHECKPOINT),
            {
                "format": FORMAT,
                "spec": self.spec,
                "epoch": epoch,
                "elapsed": self.elapsed,
                "task": task_state,
                "history": self.history,
                "step_losses": self.step_losses,
                "events_until": events_until,
                "discarded_checkpoints": self.discarded,
            },
        )

    def commit(self) -> None:
        """Make the pending checkpoint the run's checkpoint."""
        if self.main:
            os.replace(self.run_dir / PENDING, self.run_dir / CHECKPOINT)

    def close(self) -> None:
        self.tb.close()

    # -- result
    def result(self, device: torch.device, extra: dict[str, Any] | None = None,
               vectorized: int | None = None) -> dict[str, Any]:
        """Write ``result.json`` (rank 0) and return it with ``skipped: False``."""
        extra = dict(extra or {})
        history, spe = self.history, self.spe
        # An early-stopped run has fewer epochs than planned: drop the steps never taken.
        step_losses = self.step_losses[: len(history.get("train/loss_epoch", [])) * spe]
        xs, ys = downsample(step_losses)
        acc = history.get("test/accuracy", [])
        result: dict[str, Any] = {
            "spec": self.spec,
            "run_id": run_id(self.spec),
            "history": history,
            "loss_curve": {"step": xs, "loss": ys, "steps_per_epoch": spe},
            "wall_time_s": self.elapsed,
            "final": {k: v[-1] for k, v in history.items()},
            "best_test_accuracy": max(acc) if acc else None,
            # where this attempt started: None = from scratch, else the checkpointed epoch
            "resumed_from_epoch": self.start_epoch if self.resumed else None,
            "epochs_trained": self.epochs - self.start_epoch,  # by this attempt
            "discarded_checkpoints": self.discarded,
            "device": str(device),
            "torch": torch.__version__,
        }
        if vectorized is not None:
            result["vectorized"] = vectorized
        # Early stopping: the restored best weights' metrics are the final ones.
        result["final"].update(extra.pop("final", {}))
        result.update(extra)
        if self.main:
            save_json(self.run_dir / RESULT, result)
        return {**result, "skipped": False}

