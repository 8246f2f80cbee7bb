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
from ..tasks.registry import resume_as
from ..tasks.spec import RunSpec
from ..tasks.techniques import GRAD_NORM_TAG, OLD_GRAD_NORM_TAG, OPTION_DEFAULTS
from ..tasks.techniques import hparams as technique_hparams
from .folder import (
    CHECKPOINT,
    PENDING,
    RESULT,
    clear_run_dir,
    current_tags,
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
    #: the spec the run continues as when its checkpoint (or result) was saved under another
    #: one that its task resumes as it ran (:func:`.registry.resume_as`), and why
    spec: RunSpec | None = None
    note: str = ""

    @property
    def epoch(self) -> int:
        return 0 if self.state is None else int(self.state["epoch"])


def inspect(spec: RunSpec, opts: RunOptions) -> Start:
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
            if done.get("spec") == spec or resume_as(done.get("spec"), spec) is not None:
                # (tags of an older version renamed)
                return Start(finished={**done, "skipped": True,
                                       **{k: current_tags(done[k]) for k in ("history", "final")
                                          if isinstance(done.get(k), dict)}})
        except (OSError, ValueError):
            pass  # unreadable result: train again
    if not ckpt_path.is_file():
        return Start()
    try:
        state = load_checkpoint(ckpt_path)
    except Exception as exc:  # any unreadable file: say so, keep it, start over
        return Start(unusable=("corrupt", f"unreadable: {type(exc).__name__}: {exc}"[:300]))
    if state.get("spec") != spec:
        as_ran = resume_as(state.get("spec"), spec)
        if as_ran is None:
            return Start(unusable=("other-spec", "saved by a run with a different spec"))
        return Start(state=state, spec=as_ran[0], note=as_ran[1])
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

    def __init__(self, spec: RunSpec, opts: RunOptions, start: Start,
                 steps_per_epoch: int, main: bool = True) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # (what checkpoints and result.json store: the spec the run trains as)
        self.spec: dict[str, Any] = (start.spec or spec).to_dict()
        self.opts, self.main = opts, main
        self.note = start.note
        if self.note and main:
            log.warning("%s: checkpoint %s", spec.run_id, self.note)
        self.run_dir = Path(opts.logdir) / spec.run_id
        self.spe, self.epochs = steps_per_epoch, spec.epochs
        self.step_losses = torch.full((self.epochs * steps_per_epoch,), float("nan"))
        self.history: dict[str, list[float]] = {}
        self.elapsed = 0.0
        self.start_epoch = start.epoch
        self.resumed = start.state is not None
        self.hparams: dict[str, Any] = {}
        self.hparam_metrics: list[str] = []
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
            # (a checkpoint of an older version: its tags renamed, so the run goes on under
            # today's names; its event files keep the old ones for the epochs before)
            self.history = {k: list(v) for k, v in current_tags(state["history"]).items()}
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
        """The run's hyperparameters for the HParams plugin (session start and end), once per
        run (a resumed run has them already), written into the run itself so the dashboard
        links each run to its own scalar tags. Numbers are written as floats (one type per
        column), None left out. The columns and their order are declared once for the whole
        log folder by :func:`declare_experiment`; ``result.json`` keeps them for it."""
        self.hparams = hparam_values(hparams)
        self.hparam_metrics = list(metric_tags)
        if self.resumed or not self.main:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        _, ssi, sei = hp_summary(self.hparams, {tag: 0.0 for tag in metric_tags})
        fw = self.tb._get_file_writer()
        for summary in (ssi, sei):  # (the experiment summary: declare_experiment's)
            fw.add_summary(summary)

    def _histogram(self, tag: str, values: torch.Tensor, epoch: int) -> None:
        """A histogram of the finite values (a diverged run's nan/inf have none: its scalars
        show them). TensorBoard's default buckets end at +-1e20, so a diverging run's larger
        values get numpy's own bins rather than an empty histogram, which TensorBoard refuses."""
        finite = values.detach()[torch.isfinite(values.detach())]
        if not finite.numel():
            return
        bins = "tensorflow" if float(finite.abs().max()) < 1e20 else "auto"
        self.tb.add_histogram(tag, finite, epoch, bins=bins)

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
            self._histogram(tag, values, epoch)
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
            # why this attempt trains as the checkpoint's spec, not today's ("": it does not)
            "resume_note": self.note,
            "device": str(device),
            "torch": torch.__version__,
        }
        if self.hparams:
            result["hparams"], result["hparam_metrics"] = self.hparams, self.hparam_metrics
        if vectorized is not None:
            result["vectorized"] = vectorized
        # Early stopping: the restored best weights' metrics are the final ones.
        result["final"].update(extra.pop("final", {}))
        result.update(extra)
        if self.main:
            save_json(self.run_dir / RESULT, result)
        return {**result, "skipped": False}



# ------------------------------------------------------------------- the dashboard's overview

#: the HParams columns that lead, in this order (the comparison: who, at which lr, which seed)
LEAD_HPARAMS = ("optimizer", "lr", "seed", "regime", "model")
#: file-name suffix of the log folder's own event file (the experiment config, the layout)
OVERVIEW_SUFFIX = ".overview"


def hparam_values(hparams: dict[str, Any]) -> dict[str, Any]:
    """Values the HParams plugin shows alike: numbers as floats (``64`` and ``60000.0`` read
    the same), booleans and strings as they are, anything else as text, None left out."""
    out: dict[str, Any] = {}
    for k, v in hparams.items():
        if v is None:
            continue
        if isinstance(v, bool | str):
            out[k] = v
        elif isinstance(v, int | float):
            out[k] = float(v)
        else:
            out[k] = str(v)
    return out


def _metric_rank(tag: str) -> tuple[int, str]:
    """Accuracy and AUC first, then losses, then the rest; test before validation/train."""
    name = tag.rsplit("/", 1)[-1]
    kind = 0 if name in ("accuracy", "auc") else 1 if "loss" in name else 2
    split = {"test": 0, "val": 1, "train": 2}.get(tag.split("/", 1)[0], 3)
    return kind, f"{split}{tag}"


def overview_columns(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The HParams columns and metrics of a log folder's finished runs: the leading
    hyperparameters (:data:`LEAD_HPARAMS`) any run has, then the others that some run sets
    away from the default (a technique option not at its default, or a value that differs
    between runs; one value shared by every run is no comparison); metrics with accuracy/AUC
    and loss first."""
    runs = [r for r in results if r.get("hparams")]
    defaults = hparam_values(technique_hparams({}, OPTION_DEFAULTS))
    keys = list(dict.fromkeys(k for r in runs for k in r["hparams"]))
    lead = [k for k in LEAD_HPARAMS if k in keys]
    rest = []
    for k in keys:
        if k in lead:
            continue
        values = {repr(r["hparams"].get(k)) for r in runs}
        away = False
        for r in runs:  # (a run's hparams hold every technique option its task takes)
            away |= k in defaults and k in r["hparams"] and r["hparams"][k] != defaults[k]
        if len(values) > 1 or away:
            rest.append(k)
    metrics = sorted({t for r in results for t in r.get("hparam_metrics", [])}, key=_metric_rank)
    return lead + sorted(rest), metrics


def scalar_layout(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The Custom Scalars layout: first every optimizer's test metric and training loss
    overlaid (one chart per tag, every run on it), per task; then gradient norms."""
    tags_by_task: dict[str, set[str]] = {}
    for r in results:
        tags_by_task.setdefault(r["spec"]["experiment"], set()).update(r.get("history", {}))
    layout: dict[str, Any] = {}
    for task, tags in sorted(tags_by_task.items()):
        charts = {}
        for tag in sorted(tags, key=_metric_rank):
            if tag.startswith(("test/", "val/")) and _metric_rank(tag)[0] == 0:
                charts[f"{tag} (every optimizer)"] = ["Multiline", [f"^{tag}$"]]
        charts["train/loss (per step, every optimizer)"] = ["Multiline", ["^train/loss$"]]
        charts["train/loss_epoch (every optimizer)"] = ["Multiline", ["^train/loss_epoch$"]]
        layout[f"{task}: the comparison"] = charts
    grads = sorted({t for tags in tags_by_task.values() for t in tags
                    if t.startswith((GRAD_NORM_TAG, OLD_GRAD_NORM_TAG))})
    if grads:
        layout["gradient norms"] = {t: ["Multiline", [f"^{t}$"]] for t in grads}
    return layout


def declare_experiment(logdir: str | os.PathLike[str],
                       planned: dict[str, list[Any]] | None = None) -> Path | None:
    """Write the log folder's overview from its finished runs (``result.json``): the HParams
    experiment config (columns and metrics in :func:`overview_columns`' order, one type per
    column) and the Custom Scalars layout (:func:`scalar_layout`), in one event file at the
    folder's root that replaces the previous one. ``planned``: values a command meant to run
    (a sweep's optimizers, lrs, seeds), declared even where a run failed. None when no run
    has finished."""
    import importlib

    from tensorboard.plugins.hparams import metadata as hp_metadata
    from torch.utils.tensorboard import SummaryWriter

    # (generated protobuf modules: their classes are invisible to static type checkers)
    api_pb2: Any = importlib.import_module("tensorboard.plugins.hparams.api_pb2")
    plugin_data_pb2: Any = importlib.import_module("tensorboard.plugins.hparams.plugin_data_pb2")
    Summary: Any = importlib.import_module("tensorboard.compat.proto.summary_pb2").Summary

    root = Path(logdir)
    results = []
    for path in sorted(root.rglob(RESULT)):
        try:
            results.append(load_json(path))
        except (OSError, ValueError):
            continue
    if not results:
        return None
    columns, metrics = overview_columns(results)
    values: dict[str, list[Any]] = {
        k: [v for x in (planned or {}).get(k, []) for v in hparam_values({k: x}).values()]
        for k in columns}
    for r in results:
        for k in columns:
            if k in r.get("hparams", {}):
                values[k].append(r["hparams"][k])
    infos = []
    for k in columns:
        vs = values[k]
        info = api_pb2.HParamInfo(name=k, differs=k in LEAD_HPARAMS)
        if vs and all(isinstance(v, bool) for v in vs):
            info.type = api_pb2.DATA_TYPE_BOOL
        elif vs and all(isinstance(v, float) for v in vs):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_interval.min_value, info.domain_interval.max_value = min(vs), max(vs)
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            info.domain_discrete.extend(sorted({str(v) for v in vs}))
        infos.append(info)
    experiment = api_pb2.Experiment(
        hparam_infos=infos,
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t), display_name=t)
                      for t in metrics])
    content = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=0)
    summary = Summary(value=[Summary.Value(
        tag=hp_metadata.EXPERIMENT_TAG,
        metadata=hp_metadata.create_summary_metadata(content))])
    for old in root.glob(f"events.out.tfevents.*{OVERVIEW_SUFFIX}"):
        old.unlink()
    with SummaryWriter(str(root), filename_suffix=OVERVIEW_SUFFIX) as tb:
        if columns:  # (runs of older versions kept no hparams: TensorBoard infers them)
            tb._get_file_writer().add_summary(summary)
        tb.add_custom_scalars(scalar_layout(results))
        path = Path(tb._get_file_writer().get_logdir())
    (written,) = path.glob(f"events.out.tfevents.*{OVERVIEW_SUFFIX}")
    return written
