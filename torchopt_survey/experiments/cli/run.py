"""``mnist``, ``karate`` and ``all``: every run of the chosen experiments' configs.

Under ``torchrun`` each run trains with DDP across the job's processes (rank 0 alone reads and
writes the run folders and prints).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

import torch.distributed as dist
from tqdm.auto import tqdm

from ..runs.pool import run_many
from ..runs.writer import declare_experiment
from ..runtime import distributed
from ..runtime.process import RunOptions, resolve_device
from ..tasks.registry import BUILTIN, check_data, entry, expand
from ..tasks.registry import load as load_task
from ..tasks.spec import RunSpec
from .options import (
    RunBar,
    add_config_flags,
    add_run_flags,
    build_configs,
    check_workers,
    summary_line,
    threads_per_worker,
)

HELP = {
    "run": "every run of a task defined outside the package (--task package.module:Class)",
    **{name: entry(name).help for name in BUILTIN},
    "all": " and ".join(BUILTIN),
}


def add_parsers(sub: Any) -> None:
    for name in ("run", *BUILTIN, "all"):
        p = sub.add_parser(name, help=HELP[name], description=HELP[name], allow_abbrev=False)
        if name == "run":
            p.add_argument("--task", required=True, metavar="MODULE:CLASS",
                           help="the task: an object of the Task protocol "
                           "(torchopt_survey.experiments.tasks.protocol), importable from here")
        own = {"run": (), "all": tuple(BUILTIN)}.get(name, (name,))
        add_config_flags(p, own)
        p.add_argument("--lr", type=float, help="learning rate for every optimizer (paper: 0.01)")
        if name == "run":
            p.add_argument("--batch-size", type=int, metavar="N",
                           help="examples per step (default: the task's)")
        add_run_flags(p)
        p.set_defaults(handler=main)


def experiments_of(args: argparse.Namespace) -> list[str]:
    """What the command runs: the task of ``--task`` (loaded and checked), both built-in
    experiments for ``all``, else the one the command names."""
    if args.command == "run":
        return [load_task(args.task)]
    return list(BUILTIN) if args.command == "all" else [args.command]


def main(args: argparse.Namespace) -> int:
    cfgs = build_configs(args, experiments_of(args))
    resolve_device(args.device)  # bad device: ValueError -> exit 2 before any work
    check_workers(args)
    if not distributed.launched():
        return _run(args, cfgs, args.device, args.quiet)
    if args.workers > 1:
        raise ValueError(
            "--workers: under torchrun each run already uses every process (DDP); "
            "drop --workers, or run without torchrun to spread runs over worker processes"
        )
    return _run_distributed(args, cfgs)


def _run(args: argparse.Namespace, cfgs: list[dict[str, Any]], device: str, quiet: bool,
         ) -> int:
    ctx = distributed.context()
    specs: list[RunSpec] = []
    if ctx is not None and not ctx.is_main:
        distributed.barrier()  # rank 0 checks the data first: it may download into the cache
    for cfg in cfgs:
        specs += expand(cfg)
        check_data(cfg, args.data_dir)  # fail fast, before any run folder exists
    if ctx is not None and ctx.is_main:
        distributed.barrier()
    opts = RunOptions(
        logdir=args.logdir,
        device=device,
        data_dir=args.data_dir,
        resume=args.resume,
        quiet=quiet,
        threads=threads_per_worker(args),
        deterministic=all(c["deterministic"] for c in cfgs),
    )
    if not quiet:
        print(f"{len(specs)} runs -> {args.logdir} (workers={args.workers})", file=sys.stderr)
    overall = None
    if not quiet and args.workers > 1:
        overall = tqdm(total=len(specs), desc="runs", unit="run", dynamic_ncols=True)

    def on_done(res: dict[str, Any]) -> None:
        if overall is not None:
            overall.update(1)
            overall.write(summary_line(res))
        elif not quiet:
            tqdm.write(summary_line(res), file=sys.stderr)

    factory = None if quiet or args.workers > 1 else RunBar
    try:
        run_many(specs, opts, workers=args.workers, progress_factory=factory, on_done=on_done)
    finally:
        if overall is not None:
            overall.close()
    if ctx is None or ctx.is_main:  # TensorBoard's HParams columns and Custom Scalars layout
        declare_experiment(args.logdir)
    return 0


# What gloo/NCCL errors say when a peer is gone or silent (they are plain RuntimeErrors).
_COMM_FAILURE = re.compile(
    r"gloo|nccl|connection (closed|reset)|timed out|timeout", flags=re.IGNORECASE
)


def _run_distributed(args: argparse.Namespace, cfgs: list[dict[str, Any]]) -> int:
    """This process is one rank of a torchrun job: join the group, train every run with DDP
    (rank 0 alone reads and writes the run folders and prints), leave the group."""
    ctx, device = distributed.setup(args.device)  # cuda:LOCAL_RANK on GPUs
    try:
        quiet = args.quiet or not ctx.is_main
        if not quiet:
            print(
                f"torchrun: {ctx.world_size} ranks ({ctx.backend}); each run trains with DDP",
                file=sys.stderr,
            )
        return _run(args, cfgs, device, quiet)
    except (dist.DistError, RuntimeError) as exc:
        text = str(exc).strip()
        if not (isinstance(exc, dist.DistError) or _COMM_FAILURE.search(text)):
            raise  # a bug, not a lost peer: keep the traceback
        # A peer died (connection reset) or hung past the process-group timeout: one line, no
        # traceback; torchrun reports which rank failed first.
        first = text.splitlines()[0] if text else type(exc).__name__
        print(
            f"error: rank {ctx.rank}: lost the other ranks ({first[:300]}); "
            "rerun with --resume to continue from the last checkpoint",
            file=sys.stderr,
        )
        return 1
    finally:
        distributed.teardown()
