"""Run management: one TensorBoard run per (experiment, variant, optimizer, seed), per-epoch
atomic checkpoints, ``--resume``, and parallel worker processes."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .checkpoint import _atomic_write, load_checkpoint, load_json, save_checkpoint, save_json
from .host_memory import keep_freed_memory

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
# Loss curves in result.json are averaged down to at most this many points.
CURVE_POINTS = 2000


@dataclass(frozen=True)
class RunOptions:
    """Runtime options that do not change a run's results (not part of its identity)."""

    logdir: str = "runs"
    device: str = "auto"
    data_dir: str | None = None
    resume: bool = False
    quiet: bool = False
    threads: int | None = None
    deterministic: bool = True
    #: discrete hparam values declared to TensorBoard's HParams dashboard (a sweep's grid)
    hparam_domains: dict[str, list[Any]] | None = None


def run_id(spec: dict[str, Any]) -> str:
    """Relative run folder, e.g. ``mnist/mnist-minibatch/adam/seed0``."""
    return f"{spec['experiment']}/{spec['variant']}/{spec['optimizer']}/seed{spec['seed']}"


def normalise(spec: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip so specs from YAML, checkpoints and result files compare equal."""
    return json.loads(json.dumps(spec, sort_keys=True))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device: unknown device {name!r}; valid choices: auto, cpu, cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available; use cpu/auto")
    return torch.device(name)


def make_task(spec: dict[str, Any], device: torch.device, data_dir: str | None) -> Any:
    if spec["experiment"] == "mnist":
        from .mnist import MnistTask

        return MnistTask(spec, device, data_dir)
    from .karate import KarateTask

    return KarateTask(spec, device, data_dir)


def prepare_process(opts: RunOptions) -> torch.device:
    """The run's device, with the process set up for it: ``--threads``, on CPU an allocator
    that keeps freed blocks (:mod:`.host_memory`) and, if asked for, deterministic kernels
    (needed for bit-identical resume on GPU; CPU kernels used here are deterministic at a
    fixed thread count anyway)."""
    device = resolve_device(opts.device)
    if device.type == "cpu":
        keep_freed_memory()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return device


def _downsample(losses: torch.Tensor, points: int = CURVE_POINTS) -> tuple[list[int], list[float]]:
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


def _clear_run_dir(run_dir: Path) -> None:
    """Remove our own files of an earlier attempt (events, checkpoint, result)."""
    if not run_dir.is_dir():
        return
    for p in run_dir.iterdir():
        if p.name.startswith("events.out.tfevents") or p.name in (CHECKPOINT, RESULT):
            p.unlink()
        elif p.name.endswith(".tmp"):
            p.unlink()


def _set_aside(path: Path, reason: str) -> str:
    """Rename an unusable checkpoint to ``checkpoint.pt.<reason>-<UTC time>`` in its folder: kept
    for inspection, never deleted, and out of the way of the fresh start. Returns the name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = path.with_name(f"{path.name}.{reason}-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.{reason}-{stamp}-{n}"), n + 1
    os.replace(path, target)
    return target.name


def _purge_events_after(run_dir: Path, until: float) -> int:
    """Drop, from the run's TensorBoard event files, every event written after wall time
    ``until`` (the last checkpoint's): what a killed attempt logged past its checkpoint, which
    the resumed attempt logs again. A physical purge, so any reader sees one point per step
    (TensorBoard's own ``purge_step`` only asks its reader to hide them, and for one step axis).
    Files are rewritten atomically; a file left with no event is removed. Returns the count.
    (Events carry wall time: this assumes the clock did not step back during the lost epoch.)"""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        records = list(RawEventFileLoader(str(path)).Load())  # a torn last record is skipped
        keep = [r for r in records if event_pb2.Event.FromString(r).wall_time <= until]
        dropped += len(records) - len(keep)
        if not keep:
            path.unlink()
        elif len(keep) < len(records):

            def write(fh: Any, keep: list[bytes] = keep) -> None:
                writer = RecordWriter(fh)
                for record in keep:
                    writer.write(record)

            _atomic_write(path, write)
    return dropped


def _not_main(*args: Any) -> None:
    """What ranks other than 0 do instead of writing to the run folder."""


def _log_hparams(writer: Any, hparams: dict[str, Any], metric_tags: Sequence[str],
                 domains: dict[str, list[Any]] | None = None) -> None:
    """Write the hparams plugin summaries into the run itself (not a timestamped sub-run), so
    the HParams dashboard links each run to its own scalar tags. ``domains``: the discrete
    values of some hparams (a sweep's optimizers, lrs, seeds), declared so the dashboard
    can filter by them."""
    from torch.utils.tensorboard.summary import hparams as hp_summary

    clean = {
        k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in hparams.items()
    }
    declared = {k: v for k, v in (domains or {}).items() if k in clean and clean[k] in v}
    exp, ssi, sei = hp_summary(clean, {tag: 0.0 for tag in metric_tags},
                               hparam_domain_discrete=declared or None)
    fw = writer._get_file_writer()
    for summary in (exp, ssi, sei):
        fw.add_summary(summary)


def execute_run(
    spec: dict[str, Any],
    opts: RunOptions,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one run to the end (or resume it); returns its result dict.

    The result is written atomically to ``result.json`` only when every epoch is done; a
    checkpoint is written atomically after every epoch.
    """
    from torch.utils.tensorboard import SummaryWriter

    spec = normalise(spec)
    run_dir = Path(opts.logdir) / run_id(spec)
    result_path, ckpt_path = run_dir / RESULT, run_dir / CHECKPOINT
    # Under torchrun rank 0 alone reads and writes the run folder; the others follow it.
    main = distributed.is_main()
    finished: dict[str, Any] | None = None
    if main and opts.resume and result_path.is_file():
        try:
            done = load_json(result_path)
            if done.get("spec") == spec:
                finished = {**done, "skipped": True}
        except (OSError, ValueError):
            pass  # unreadable result: train again
    state = None
    unusable: tuple[str, str] | None = None  # (file suffix, reason) of a checkpoint set aside
    if main and finished is None and opts.resume and ckpt_path.is_file():
        try:
            state = load_checkpoint(ckpt_path)
        except Exception as exc:  # any unreadable file: say so, keep it, start over
            unusable = ("corrupt", f"unreadable: {type(exc).__name__}: {exc}"[:300])
        else:
            if state.get("spec") != spec:
                state = None
                unusable = ("other-spec", "saved by a run with a different spec")
    # every rank skips, resumes from the same state (epoch) or starts over, as rank 0 decided
    finished, state, unusable = distributed.broadcast((finished, state, unusable))
    if finished is not None:
        return finished
    device = prepare_process(opts)
    # Build the task (loads data) before touching the run folder: a data error leaves nothing.
    task = make_task(spec, device, opts.data_dir)
    ctx = distributed.context()
    if ctx is not None:
        task.distribute(ctx)
    epochs, spe = spec["epochs"], task.steps_per_epoch
    step_losses = torch.full((epochs * spe,), float("nan"))
    history: dict[str, list[float]] = {}
    start_epoch, elapsed = 0, 0.0
    # checkpoints found unusable by this or an earlier attempt of the run (kept on disk)
    discarded: list[dict[str, str]] = []
    if unusable is not None and main:
        kept = _set_aside(ckpt_path, unusable[0])
        log.warning(
            "%s: %s checkpoint (%s); kept as %s, training from epoch 1",
            run_id(spec), unusable[0], unusable[1], kept,
        )
        discarded.append({"file": kept, "reason": unusable[1]})
    if state is not None:
        task.load_state_dict(state["task"])
        history = {k: list(v) for k, v in state["history"].items()}
        step_losses = state["step_losses"].clone()
        start_epoch, elapsed = int(state["epoch"]), float(state["elapsed"])
        discarded = list(state.get("discarded_checkpoints", []))
        if "events_until" in state and main:
            _purge_events_after(run_dir, float(state["events_until"]))
    elif main:
        _clear_run_dir(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # (purge_step also tells TensorBoard to hide them, for checkpoints without events_until)
    writer = (
        SummaryWriter(str(run_dir), purge_step=start_epoch * spe + 1 if state is not None else None)
        if main
        else distributed.NullWriter()
    )
    try:
        if state is None and main:
            metric_tags = ["test/accuracy", "train/loss_epoch"]
            if spec["experiment"] == "karate":
                metric_tags += ["test/auc", "train/accuracy", "train/auc"]
            _log_hparams(writer, task.hparams(), metric_tags, opts.hparam_domains)
        log_every = int(spec.get("log_every", 1))
        for epoch in range(start_epoch + 1, epochs + 1):
            if getattr(task, "stop", False):  # early stopping (also after a resume)
                break
            t0 = time.perf_counter()
            base = (epoch - 1) * spe

            def progress(done: int, loss: float, base: int = base, epoch: int = epoch) -> None:
                if on_progress is not None:
                    on_progress(
                        {"step": base + done, "epoch": epoch, "loss": loss, "total": epochs * spe}
                    )

            metrics = task.train_epoch(epoch, step_losses[base : base + spe], progress)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_time = time.perf_counter() - t0
            metrics.update(task.evaluate() if main else {})
            epoch_time = time.perf_counter() - t0
            elapsed += epoch_time
            metrics["time/epoch_seconds"] = epoch_time
            metrics["time/train_seconds"] = train_time
            # rank 0's evaluation on every rank: decisions taken from it (early stopping,
            # ReduceLROnPlateau) must be identical everywhere
            metrics = distributed.broadcast(metrics)
            # Task hooks of the §V techniques (scheduler, early stopping, gradient histograms).
            if hasattr(task, "end_epoch"):
                metrics.update(task.end_epoch(epoch, metrics))
            for tag, values in getattr(task, "histograms", dict)().items():
                writer.add_histogram(tag, values, epoch)
            for k, v in metrics.items():
                history.setdefault(k, []).append(v)
            # Per-step loss (as the mean of each log_every window) on the global-step axis.
            ep_losses = step_losses[base : base + spe]
            for j in range(0, spe, log_every):
                window = ep_losses[j : j + log_every]
                writer.add_scalar("train/loss", float(window.double().mean()), base + j + 1)
            for k, v in metrics.items():
                writer.add_scalar(k, v, epoch)
            writer.flush()  # events up to this checkpoint must survive a SIGKILL
            events_until = time.time()  # events after this belong to a later epoch
            # (rank 0 alone writes; its state is every rank's: DDP keeps them identical)
            (save_checkpoint if main else _not_main)(
                ckpt_path,
                {
                    "format": 1,
                    "spec": spec,
                    "epoch": epoch,
                    "elapsed": elapsed,
                    "task": task.state_dict(),
                    "history": history,
                    "step_losses": step_losses,
                    "events_until": events_until,
                    "discarded_checkpoints": discarded,
                },
            )
            if on_progress is not None:
                on_progress({"step": base + spe, "epoch": epoch, "total": epochs * spe, **metrics})
    finally:
        writer.close()
    # An early-stopped run has fewer epochs than planned: drop the steps never taken.
    step_losses = step_losses[: len(history.get("train/loss_epoch", [])) * spe]
    extra = task.finish() if hasattr(task, "finish") else {}
    xs, ys = _downsample(step_losses)
    acc = history.get("test/accuracy", [])
    result = {
        "spec": spec,
        "run_id": run_id(spec),
        "history": history,
        "loss_curve": {"step": xs, "loss": ys, "steps_per_epoch": spe},
        "wall_time_s": elapsed,
        "final": {k: v[-1] for k, v in history.items()},
        "best_test_accuracy": max(acc) if acc else None,
        # where this attempt started: None = from scratch, else the checkpointed epoch
        "resumed_from_epoch": start_epoch if state is not None else None,
        "epochs_trained": epochs - start_epoch,  # by this attempt
        "discarded_checkpoints": discarded,
        "device": str(device),
        "torch": torch.__version__,
    }
    # Early stopping: the restored best weights' metrics are the final ones.
    result["final"].update(extra.pop("final", {}))
    result.update(extra)
    if main:
        save_json(result_path, result)
    return {**result, "skipped": False}


# --------------------------------------------------------------------------- many runs


def _expected_cost(spec: dict[str, Any]) -> float:
    """Rough relative cost, so the longest runs start first across workers."""
    if spec["experiment"] == "mnist":
        n = spec["train_subset"] or 60000
        bs = n if spec["batch_size"] == "full" else min(int(spec["batch_size"]), n)
        steps = -(-n // bs)
        return spec["epochs"] * (steps * 0.25e-3 + n * 0.02e-3)
    return spec["epochs"] * 1e-3


def quiet_import_noise() -> None:
    """PyG's import emits torch.jit deprecation noise that says nothing about the user's run:
    filtered in the CLI's process and in every worker process that imports the experiments."""
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")


def _worker_init(threads: int) -> None:
    quiet_import_noise()
    torch.set_num_threads(threads)


def _worker_run(spec: dict[str, Any], opts: RunOptions) -> dict[str, Any]:
    return execute_run(spec, opts)


def run_many(
    specs: Sequence[dict[str, Any]],
    opts: RunOptions,
    workers: int = 1,
    progress_factory: Callable[[dict[str, Any], int], Any] | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run all specs (longest first); with ``workers > 1`` in spawned processes with
    ``opts.threads`` threads each. Each finished run is on disk as soon as it ends."""
    order = sorted(range(len(specs)), key=lambda i: -_expected_cost(specs[i]))
    results: list[dict[str, Any] | None] = [None] * len(specs)
    if workers <= 1:
        for i in order:
            bar = progress_factory(specs[i], 0) if progress_factory else None
            try:
                res = execute_run(specs[i], opts, bar.update_from if bar else None)
            finally:
                if bar is not None:
                    bar.close()
            results[i] = res
            if on_done:
                on_done(res)
        return [r for r in results if r is not None]
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(opts.threads or 1,),
    ) as pool:
        futures = {pool.submit(_worker_run, specs[i], opts): i for i in order}
        for fut in as_completed(futures):
            res = fut.result()
            results[futures[fut]] = res
            if on_done:
                on_done(res)
    return [r for r in results if r is not None]
