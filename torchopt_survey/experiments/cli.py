"""``python -m torchopt_survey.experiments`` command line."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import (
    EXPERIMENTS,
    apply_override,
    default_config,
    load_config_file,
    merge,
    parse_override,
    validate,
)
from .data import DATASETS, DataError
from .models import ACTIVATIONS, LINK_MODELS
from .registry import OPTIMIZER_NAMES, SECOND_ORDER_NAMES, resolve_optimizer_names

COMMANDS = ("mnist", "karate", "all", "report", "sweep")

EPILOG = """\
examples:
  python -m torchopt_survey.experiments all --seeds 0 1 2 --workers 2
  python -m torchopt_survey.experiments mnist --optimizers adam sgd --epochs 2
  python -m torchopt_survey.experiments karate --config configs/karate_paper.yaml --resume
  python -m torchopt_survey.experiments report --logdir runs --out experiments
  python -m torchopt_survey.experiments sweep --experiment mnist --optimizers all \
      --lr-grid 1e-4:1:7 --seeds 0 1 2 --epochs 10
  python -m torchopt_survey.experiments sweep --experiment karate --optimizers sgd adam \
      --lr-grid 1e-3:1e-1:3 --backend ray --workers 2  # Ray Tune trials (pip install -e ".[ray]")
  tensorboard --logdir runs
  torchrun --nproc-per-node 2 -m torchopt_survey.experiments mnist --optimizers sgd  # DDP
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m torchopt_survey.experiments",
        description=(
            "Reproduce the surveys' optimizer comparisons: an MNIST MLP (mnist) and link "
            "prediction on Zachary's Karate Club (karate), for every optimizer; 'all' runs both; "
            "'report' turns finished runs into figures and a results table."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=COMMANDS, help="what to run")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config (configs/mnist_paper.yaml, configs/karate_paper.yaml); repeat for 'all'. "
        "Without it the built-in paper settings are used. Flags below override the file.",
    )
    p.add_argument(
        "--optimizers",
        nargs="+",
        metavar="NAME",
        help="'all' (the first-order methods) or names from: " + ", ".join(OPTIMIZER_NAMES)
        + "; second-order (full batch): " + ", ".join(SECOND_ORDER_NAMES)
        + " (sets every MNIST regime)",
    )
    p.add_argument("--seeds", nargs="+", type=int, metavar="S", help="random seeds (one run each)")
    p.add_argument("--epochs", type=int, metavar="N", help="epochs per run (all regimes)")
    p.add_argument("--lr", type=float, help="learning rate for every optimizer (paper: 0.01)")
    p.add_argument(
        "--fused",
        action="store_true",
        help="use torchopt_survey's fused optimizer kernels (same update rule, faster; "
        "CPU needs a C compiler)",
    )
    g = p.add_argument_group("mnist")
    g.add_argument(
        "--dataset",
        choices=tuple(DATASETS),
        # torchvision's class names work too (FashionMNIST, KMNIST), in any case.
        type=lambda s: s.lower().replace("-", "").replace("_", ""),
        help="MNIST-format torchvision dataset (default mnist; FashionMNIST spelling works too)",
    )
    g.add_argument(
        "--regimes",
        nargs="+",
        metavar="NAME",
        help="subset of the config's regimes (paper: gd = full batch, sgd = batch 1, "
        "minibatch = 64)",
    )
    g.add_argument(
        "--activation",
        choices=tuple(ACTIVATIONS),
        help="hidden activation (paper: linear, which makes the MLP a linear classifier)",
    )
    g.add_argument("--train-subset", type=int, metavar="N", help="use the first N training images")
    g.add_argument("--test-subset", type=int, metavar="N", help="use the first N test images")
    g = p.add_argument_group("karate")
    g.add_argument(
        "--models", nargs="+", metavar="NAME", help="link models: " + ", ".join(LINK_MODELS)
    )
    g.add_argument(
        "--edge-list",
        metavar="FILE",
        help="run link prediction on this undirected graph (two node ids per line) "
        "instead of Karate",
    )
    g = p.add_argument_group("runs")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set hidden=100 --set regimes.sgd.epochs=2 "
        "(prefix mnist./karate. to target one experiment under 'all'). Training techniques: "
        "init, init_gain, norm, dropout, l1, l2, clip_grad_norm, clip_grad_value, val_split, "
        "early_stopping, normalize_inputs, eval_train, scheduler, log_grad_norms, name "
        "(e.g. --set hidden=[64,64,64] --set init=kaiming_normal --set norm=batch "
        "--set 'scheduler={name: StepLR, step_size: 5}')",
    )
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder containing MNIST/raw (read-only; default: $TORCHOPT_SURVEY_DATA, "
        "else download into ~/.cache/torchopt_survey)",
    )
    g.add_argument("--logdir", default="runs", help="TensorBoard/checkpoint root (default: runs)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="skip finished runs and continue interrupted ones from their last epoch checkpoint "
        "(without it, existing runs are started over)",
    )
    g.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per worker (default: torch's choice with 1 worker, 1 with several)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars or summaries")
    g = p.add_argument_group("sweep")
    g.add_argument("--experiment", choices=("mnist", "karate"), help="what 'sweep' tunes")
    g.add_argument("--lr-grid", metavar="LO:HI:N",
                   help="N learning rates evenly spaced in log scale from LO to HI")
    g.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="another hyperparameter to sweep (repeatable), e.g. momentum=0.8,0.9")
    g.add_argument("--vectorize", action=argparse.BooleanOptionalAction, default=True,
                   help="train runs that share an architecture N at a time as one program "
                   "(default; MNIST only, others run separately and say so)")
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
    g = p.add_argument_group("report")
    g.add_argument("--out", default=None, help="report output folder (default: LOGDIR/report)")
    return p


def _cli_overrides(args: argparse.Namespace, exp: str, cfg: dict[str, Any]) -> dict[str, Any]:
    upd: dict[str, Any] = {}
    if args.optimizers:
        upd["optimizers"] = list(args.optimizers)
    if args.seeds is not None:
        upd["seeds"] = list(args.seeds)
    if args.epochs is not None:
        upd["epochs"] = args.epochs
    if args.lr is not None:
        upd["lr"] = args.lr
    if args.fused:
        upd["fused"] = True
    if exp == "mnist":
        for key in ("dataset", "activation", "train_subset", "test_subset"):
            if getattr(args, key) is not None:
                upd[key] = getattr(args, key)
        regimes = dict(cfg["regimes"])
        if args.regimes:
            unknown = [r for r in args.regimes if r not in regimes]
            if unknown:
                raise ValueError(
                    f"--regimes: unknown regime {unknown[0]!r}; valid choices: {', '.join(regimes)}"
                )
            regimes = {r: regimes[r] for r in args.regimes}
        # Flags apply to every regime, overriding per-regime values from the config.
        for r, spec in regimes.items():
            spec = dict(spec)
            if args.optimizers:
                spec["optimizers"] = list(args.optimizers)
            if args.epochs is not None:
                spec.pop("epochs", None)
            if args.lr is not None:
                spec.pop("lr", None)
            regimes[r] = spec
        cfg = {**cfg, "regimes": {}}  # replace, not merge, the regime table
        upd["regimes"] = regimes
    else:
        if args.models:
            upd["models"] = list(args.models)
        if args.edge_list is not None:
            upd["edge_list"] = args.edge_list
    return merge(cfg, upd)


def build_configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Paper defaults <- --config files <- flags <- --set; validated."""
    exps = list(EXPERIMENTS) if args.command == "all" else [args.command]
    cfgs = {e: default_config(e) for e in exps}
    for path in args.config:
        data = load_config_file(path)
        exp = data["experiment"]
        if exp not in cfgs:
            raise ValueError(
                f"--config: {path} is a {exp!r} config but the command runs "
                f"{', '.join(exps)}; valid experiments here: {', '.join(exps)}"
            )
        if "regimes" in data:
            cfgs[exp]["regimes"] = {}  # a file's regime table replaces the default one
        cfgs[exp] = merge(cfgs[exp], data)
    for exp in exps:
        cfgs[exp] = _cli_overrides(args, exp, cfgs[exp])
    for text in args.set:
        path, value = parse_override(text)
        targets = [path[0]] if path[0] in exps and len(path) > 1 else exps
        key = path[1:] if path[0] in exps and len(path) > 1 else path
        applied = False
        errors = []
        for exp in targets:
            try:
                cfgs[exp] = apply_override(cfgs[exp], key, value)
                applied = True
            except ValueError as exc:
                errors.append(str(exc))
        if not applied:
            raise ValueError(f"--set {text}: " + "; ".join(errors))
    return [validate(cfgs[e]) for e in exps]


class _RunBar:
    """tqdm bar for one run: steps with epoch, loss, accuracy and ETA."""

    def __init__(self, spec: dict[str, Any], position: int = 0) -> None:
        from tqdm.auto import tqdm

        from .runner import run_id

        self.bar = tqdm(
            desc=run_id(spec),
            total=None,
            unit="step",
            position=position,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.epochs = spec["epochs"]
        self.acc: float | None = None

    def update_from(self, ev: dict[str, Any]) -> None:
        if "test/accuracy" in ev:
            self.acc = ev["test/accuracy"]
        if self.bar.total is None and "total" in ev:
            self.bar.total = ev["total"]
        self.bar.n = ev["step"]
        post = {"epoch": f"{ev['epoch']}/{self.epochs}"}
        if "loss" in ev:
            post["loss"] = f"{ev['loss']:.4f}"
        if self.acc is not None:
            post["acc"] = f"{self.acc:.4f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(0)

    def close(self) -> None:
        self.bar.close()


def _summary_line(res: dict[str, Any]) -> str:
    fin = res["final"]
    parts = [
        res["run_id"],
        "skipped (finished)" if res.get("skipped") else f"{res['wall_time_s']:.1f}s",
    ]
    if "test/accuracy" in fin:
        parts.append(f"test acc {fin['test/accuracy']:.4f}")
    if "test/auc" in fin:
        parts.append(f"test auc {fin['test/auc']:.4f}")
    return "  ".join(parts)


def run_experiments(args: argparse.Namespace) -> int:
    from . import distributed, karate, mnist
    from .runner import RunOptions, resolve_device, run_many

    cfgs = build_configs(args)
    resolve_device(args.device)  # bad device: ValueError -> exit 2 before any work
    if args.workers < 1:
        raise ValueError(f"--workers: expected >= 1, got {args.workers}")
    if distributed.launched() and distributed.context() is None:
        if args.workers > 1:
            raise ValueError(
                "--workers: under torchrun each run already uses every process (DDP); "
                "drop --workers, or run without torchrun to spread runs over worker processes"
            )
        return _run_distributed(args)
    ctx = distributed.context()
    specs: list[dict[str, Any]] = []
    if ctx is not None and not ctx.is_main:
        distributed.barrier()  # rank 0 checks the data first: it may download into the cache
    for cfg in cfgs:
        specs += (mnist.expand if cfg["experiment"] == "mnist" else karate.expand)(cfg)
        if cfg["experiment"] == "mnist":
            # Fail fast on missing/corrupt data before any run folder exists.
            from .data import load_image_dataset

            load_image_dataset(cfg["dataset"], args.data_dir, "cpu", 1, 1)
        elif cfg["edge_list"] is not None:
            from .data import load_graph

            load_graph(cfg["edge_list"])
    if ctx is not None and ctx.is_main:
        distributed.barrier()
    threads = args.threads if args.threads else (1 if args.workers > 1 else None)
    opts = RunOptions(
        logdir=args.logdir,
        device=args.device,
        data_dir=args.data_dir,
        resume=args.resume,
        quiet=args.quiet,
        threads=threads,
        deterministic=all(c["deterministic"] for c in cfgs),
    )
    if not args.quiet:
        print(f"{len(specs)} runs -> {args.logdir} (workers={args.workers})", file=sys.stderr)
    overall = None
    if not args.quiet and args.workers > 1:
        from tqdm.auto import tqdm

        overall = tqdm(total=len(specs), desc="runs", unit="run", dynamic_ncols=True)

    def on_done(res: dict[str, Any]) -> None:
        if overall is not None:
            overall.update(1)
            overall.write(_summary_line(res))
        elif not args.quiet:
            from tqdm.auto import tqdm

            tqdm.write(_summary_line(res), file=sys.stderr)

    factory = None if args.quiet or args.workers > 1 else (lambda s, pos: _RunBar(s, pos))
    try:
        run_many(specs, opts, workers=args.workers, progress_factory=factory, on_done=on_done)
    finally:
        if overall is not None:
            overall.close()
    return 0


# What gloo/NCCL errors say when a peer is gone or silent (they are plain RuntimeErrors).
_COMM_FAILURE = re.compile(
    r"gloo|nccl|connection (closed|reset)|timed out|timeout", flags=re.IGNORECASE
)


def _run_distributed(args: argparse.Namespace) -> int:
    """This process is one rank of a torchrun job: join the group, train every run with DDP
    (rank 0 alone reads and writes the run folders and prints), leave the group."""
    import torch.distributed as dist

    from . import distributed

    ctx, args.device = distributed.setup(args.device)  # cuda:LOCAL_RANK on GPUs
    try:
        if not ctx.is_main:
            args.quiet = True
        elif not args.quiet:
            print(
                f"torchrun: {ctx.world_size} ranks ({ctx.backend}); each run trains with DDP",
                file=sys.stderr,
            )
        return run_experiments(args)
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


def run_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = args.out or f"{args.logdir}/report"
    paths = write_report(args.logdir, out)
    if not args.quiet:
        for p in paths:
            print(p)
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
    """``sweep``: every input checked (exit 2 naming it) before any run starts."""
    from . import karate, mnist
    from .runner import RunOptions, resolve_device
    from .sweep import (
        MNIST_VAL_SPLIT,
        check_grid,
        expand_sweep,
        parse_grid,
        parse_lr_grid,
        run_sweep,
        write_tables,
    )

    if args.experiment is None:
        raise ValueError("sweep: --experiment mnist|karate is required")
    if args.lr_grid is None:
        raise ValueError("sweep: --lr-grid LO:HI:N is required")
    if args.lr is not None:
        raise ValueError("sweep: --lr conflicts with --lr-grid (give a one-point grid LR:LR:1)")
    lrs = parse_lr_grid(args.lr_grid)
    grid = parse_grid(args.grid)
    if args.workers < 1:
        raise ValueError(f"--workers: expected >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected >= 1, got {args.threads}")
    if args.ray_address is not None and args.backend != "ray":
        raise ValueError("--ray-address: only with --backend ray")
    if args.backend == "ray":
        from .ray_sweep import require_ray

        require_ray()
    exp = args.experiment
    if exp == "mnist" and not args.regimes:
        args.regimes = ["minibatch"]  # the protocol: mini-batch 64
    cfg_args = argparse.Namespace(**{**vars(args), "command": exp})
    (cfg,) = build_configs(cfg_args)
    if exp == "mnist":  # the techniques' val_split: a seeded fraction per run
        if args.val_split is not None:
            cfg["val_split"] = args.val_split
        elif cfg.get("val_split") is None:
            cfg["val_split"] = MNIST_VAL_SPLIT
        cfg = validate(cfg)
    if exp == "mnist":
        optimizers = [o for r in cfg["regimes"].values() for o in r["optimizers"]]
    else:
        optimizers = list(cfg["optimizers"])
    check_grid(resolve_optimizer_names(optimizers), grid)
    resolve_device(args.device)
    base = (mnist.expand if exp == "mnist" else karate.expand)(cfg)
    specs = expand_sweep(base, lrs, grid)
    if exp == "mnist":
        from .data import load_image_dataset

        load_image_dataset(cfg["dataset"], args.data_dir, "cpu", 1, 1)  # data errors first
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
        from .ray_sweep import run_sweep_ray

        rows, timing = run_sweep_ray(specs, opts, args.vectorize, args.workers,
                                     args.ray_address, log)
    else:
        rows, timing = run_sweep(specs, opts, args.vectorize, args.workers, log)
    timing["vectorize"] = args.vectorize
    out = Path(args.logdir) / "sweep"
    paths = write_tables(rows, timing, out)
    from .sweep import write_sweep_report

    paths += write_sweep_report(out / "sweep.json", out)
    failed = sum(r["status"] != "ok" for r in rows)
    log(f"sweep: {len(rows) - failed} runs ok, {failed} failed, "
        f"{timing['wall_time_s']:.1f} s; tables in {out}")
    if not args.quiet:
        for path in paths:
            print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .runner import quiet_import_noise

    quiet_import_noise()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "report":
            return run_report(args)
        if args.command == "sweep":
            return run_sweep_command(args)
        return run_experiments(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept, rerun with --resume", file=sys.stderr)
        return 130
