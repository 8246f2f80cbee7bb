"""Flags and helpers shared by the subcommands: the run flags, config building, progress."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from ..runs.folder import run_id
from ..tasks.config import (
    apply_override,
    load_config_file,
    merge,
    parse_override,
)
from ..tasks.optimizers import OPTIMIZER_NAMES, SECOND_ORDER_NAMES
from ..tasks.registry import BUILTIN, default_config, entry
from ..tasks.registry import validate as validate_config


def add_config_flags(p: argparse.ArgumentParser, experiments: tuple[str, ...]) -> None:
    """--config, the optimizer/seed/epoch flags and the flags of ``experiments``' tasks."""
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
    p.add_argument(
        "--fused",
        action="store_true",
        help="use torchopt_survey's fused optimizer kernels (same update rule, faster; "
        "CPU needs a C compiler)",
    )
    for name in experiments:
        entry(name).add_flags(p)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """--set and the runtime flags (device, data, logdir, resume, workers, threads, quiet)."""
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


def check_workers(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise ValueError(f"--workers: expected >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads: expected >= 1, got {args.threads}")


def threads_per_worker(args: argparse.Namespace) -> int | None:
    """--threads, else 1 per worker with several workers (torch's choice with one)."""
    return args.threads if args.threads else (1 if args.workers > 1 else None)


def _flag_overrides(args: argparse.Namespace, exp: str, cfg: dict[str, Any]) -> dict[str, Any]:
    upd: dict[str, Any] = {}
    if args.optimizers:
        upd["optimizers"] = list(args.optimizers)
    if args.seeds is not None:
        upd["seeds"] = list(args.seeds)
    if args.epochs is not None:
        upd["epochs"] = args.epochs
    if getattr(args, "lr", None) is not None:
        upd["lr"] = getattr(args, "lr", None)
    if args.fused:
        upd["fused"] = True
    if getattr(args, "batch_size", None) is not None:
        upd["batch_size"] = args.batch_size
    cfg = entry(exp).apply_flags(args, cfg, upd)
    return merge(cfg, upd)


def build_configs(args: argparse.Namespace, experiments: list[str] | None = None,
                  ) -> list[dict[str, Any]]:
    """The validated configuration of each experiment a command runs: paper defaults <-
    ``--config`` files <- flags <- ``--set``, each overriding the one before.

    Args:
        args (argparse.Namespace): the parsed command line (from :func:`build_parser`).
        experiments (list[str] or None, optional): the built-in experiments the command runs;
            ``None`` (default): ``args.command``, or every experiment for ``all``.

    Returns:
        list[dict[str, Any]]: one configuration per experiment, in that order.

    Raises:
        ValueError: a config file for another experiment, a ``--set`` that applies to none,
            or a value the schema rejects; the message names the flag.
    """
    if experiments is None:
        experiments = list(BUILTIN) if args.command == "all" else [args.command]
    exps = experiments
    cfgs = {e: default_config(e) for e in exps}
    for path in args.config:
        data = load_config_file(path, BUILTIN)
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
        cfgs[exp] = _flag_overrides(args, exp, cfgs[exp])
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
    return [validate_config(cfgs[e]) for e in exps]


class RunBar:
    """tqdm bar for one run: steps with epoch, loss, accuracy and ETA."""

    def __init__(self, spec: Mapping[str, Any], position: int = 0) -> None:
        from tqdm.auto import tqdm

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


def summary_line(res: dict[str, Any]) -> str:
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
