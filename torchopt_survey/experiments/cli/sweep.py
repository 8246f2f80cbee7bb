"""``sweep``: each optimizer of one experiment tuned over a learning-rate grid (and more) on
validation, over seeds; every input is checked (exit 2 naming it) before any run starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..report import write_sweep_report
from ..runs.writer import declare_experiment
from ..runtime.process import RunOptions, resolve_device
from ..sweep.execute import run_sweep
from ..sweep.grid import check_grid, expand_sweep, parse_grid, parse_lr_grid
from ..sweep.ray_backend import require_ray, run_sweep_ray
from ..sweep.tables import best_table, settings_table, widen_advice, write_tables
from ..tasks.optimizers import resolve_optimizer_names
from ..tasks.registry import BUILTIN, check_data, entry, expand
from ..tasks.registry import load as load_task
from ..tasks.registry import validate as validate_config
from .options import add_config_flags, add_run_flags, build_configs, check_workers

HELP = "tune each optimizer's learning rate (and more) on validation, over seeds"


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("sweep", help=HELP, description=HELP, allow_abbrev=False)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--experiment", choices=BUILTIN, help="what to tune (this or --task)")
    what.add_argument("--task", metavar="MODULE:CLASS",
                      help="a task defined outside the package (the Task protocol)")
    add_config_flags(p, tuple(BUILTIN))
    add_run_flags(p)
    g = p.add_argument_group("sweep")
    g.add_argument("--lr-grid", metavar="LO:HI:N",
                   help="N learning rates evenly spaced in log scale from LO to HI, each "
                   "rounded to 6 significant digits (required); a comma list of such parts "
                   "and single lrs sweeps their union, e.g. 4.64159e-6,2.15443e-5,1e-4:1:7 "
                   "widens 1e-4:1:7 by two points of its spacing below it")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="another hyperparameter to sweep (repeatable), e.g. momentum=0.8,0.9")
    g.add_argument("--vectorize", action=argparse.BooleanOptionalAction, default=True,
                   help="train runs that share an architecture N at a time as one program "
                   "(default; where the task's model stacks, others run separately and say so)")
    g.add_argument("--val-split", type=float, metavar="FRACTION", default=None,
                   help="MNIST: fraction of the training set held out for validation, a "
                   "seeded split per run (the val_split option; sweep default 1/6)")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default): this machine, --workers processes; ray: Ray Tune "
                   "trials of --threads CPUs each (one per vectorised group or single run) "
                   "on a local Ray instance of --workers x --threads CPUs, or on a cluster")
    g.add_argument("--ray-address", metavar="ADDRESS", default=None,
                   help="--backend ray: an existing Ray cluster (e.g. 10.0.0.5:6379 or auto; "
                   "default: $RAY_ADDRESS, else a local instance started and stopped here)")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    if args.experiment is None and args.task is None:
        raise ValueError("sweep: --experiment mnist|karate or --task MODULE:CLASS is required")
    if args.lr_grid is None:
        raise ValueError("sweep: --lr-grid LO:HI:N is required")
    lrs = parse_lr_grid(args.lr_grid)
    grid = parse_grid(args.grid)
    check_workers(args)
    if args.ray_address is not None and args.backend != "ray":
        raise ValueError("--ray-address: only with --backend ray")
    if args.backend == "ray":
        require_ray()
    exp = args.experiment or load_task(args.task)
    task = entry(exp)
    (cfg,) = build_configs(argparse.Namespace(**{**vars(args), **task.sweep_flags(args)}), [exp])
    cfg = validate_config(task.prepare_sweep(cfg, args.val_split))
    check_grid(resolve_optimizer_names(task.optimizers_of(cfg)), grid)
    resolve_device(args.device)
    base = expand(cfg)
    specs = expand_sweep(base, lrs, grid)
    check_data(cfg, args.data_dir)  # data errors first
    threads = args.threads if args.threads else (1 if args.workers > 1 else None)
    opts = RunOptions(logdir=args.logdir, device=args.device, data_dir=args.data_dir,
                      resume=args.resume, quiet=args.quiet, threads=threads,
                      deterministic=cfg["deterministic"],
                      hparam_domains={
                          "optimizer": sorted({s["optimizer"] for s in specs}),
                          "lr": sorted(set(lrs)), "seed": sorted(cfg["seeds"]),
                          "regime": sorted({s.get("regime", "") for s in specs}),
                          "model": sorted({s.get("model", "") for s in specs}),
                      })

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr)

    log(f"sweep: {len(specs)} runs ({len(lrs)} learning rates x "
        f"{max(1, len(specs) // max(1, len(base) * len(lrs)))} grid points x {len(base)} "
        f"optimizer/seed/model runs) -> {args.logdir} (backend {args.backend})")
    if args.backend == "ray":
        rows, timing = run_sweep_ray(specs, opts, args.vectorize, args.workers,
                                     args.ray_address, log)
    else:
        rows, timing = run_sweep(specs, opts, args.vectorize, args.workers, log)
    timing["vectorize"] = args.vectorize
    out = Path(args.logdir) / "sweep"
    paths = write_tables(rows, timing, out)
    # TensorBoard's HParams columns (the sweep's grid declared) and Custom Scalars layout
    declare_experiment(args.logdir, opts.hparam_domains)
    paths += write_sweep_report(out / "sweep.json", out)
    failed = sum(r["status"] != "ok" for r in rows)
    log(f"sweep: {len(rows) - failed} runs ok, {failed} failed, "
        f"{timing['wall_time_s']:.1f} s; tables in {out}")
    for line in widen_advice(best_table(settings_table(rows))):
        log(f"sweep: optimum at the grid's edge: {line}")
    if not args.quiet:
        for path in paths:
            print(path)
    return 0
