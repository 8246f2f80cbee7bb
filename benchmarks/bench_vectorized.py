"""N MNIST runs vectorised (one program) against the same N runs one after another.

The code the CLI runs on both sides: :class:`~torchopt_survey.experiments.vectorized.VectorMnist`
(stacked replicas, vmap forward/backward, one optimizer step with per-replica learning rates)
against N :class:`~torchopt_survey.experiments.mnist.MnistTask` epochs. The survey's MLP
(784-500-10), mini-batch 64, ``--steps`` training steps per run (one epoch of a training
subset of ``64 * steps`` images), each run its own seed and learning rate; the time of the
fastest of ``--repeat`` measurements is kept. Threads pinned (default 1).

Usage::

    python benchmarks/bench_vectorized.py [--optimizer adam] [--steps 40] [--threads 1]
        [--replicas 1 2 4 8 16] [--device cpu|cuda] [--out benchmarks/results/vectorized-cpu]

On CUDA the data are device-resident on both sides and each measurement ends with a
synchronisation, so the time is the device's, not the launch queue's.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from torchopt_survey.experiments import config as C
from torchopt_survey.experiments import mnist
from torchopt_survey.experiments.vectorized import VectorMnist


def _specs(optimizer: str, n: int, steps: int, fused: bool = False) -> list[dict[str, Any]]:
    lrs = torch.logspace(-3, -1, max(n, 2)).tolist()[:n]
    cfg = C.merge(C.default_config("mnist"), {
        "seeds": [0], "epochs": 1, "train_subset": 64 * steps, "test_subset": 100,
        "fused": fused,
        "regimes": {"mb": {"batch_size": 64, "optimizers": [optimizer]}}})
    cfg["regimes"] = {"mb": cfg["regimes"]["mb"]}
    base = mnist.expand(C.validate(cfg))[0]
    return [{**base, "seed": r, "variant": f"bench-{r}",
             "optimizer_kwargs": {**base["optimizer_kwargs"], "lr": lrs[r]}} for r in range(n)]


def _time(fn: Any, repeat: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def bench(optimizer: str, n: int, steps: int, data_dir: str | None, repeat: int,
          fused: bool = False, device: torch.device | None = None) -> dict[str, float]:
    specs = _specs(optimizer, n, steps, fused)
    device = device or torch.device("cpu")
    tasks = [mnist.MnistTask(s, device, data_dir) for s in specs]
    losses = torch.empty(tasks[0].steps_per_epoch, device=device)

    def separate() -> None:
        for task in tasks:
            task.train_epoch(1, losses, lambda done, loss: None)

    prog = VectorMnist(specs, device, data_dir)
    vlosses = torch.empty(n, prog.steps_per_epoch, device=device)

    def vectorised() -> None:
        prog.train_epoch(1, vlosses)

    vectorised()  # warm-up (first-step allocations)
    separate()
    t_sep, t_vec = _time(separate, repeat, device), _time(vectorised, repeat, device)
    return {"replicas": n, "separate_s": t_sep, "vectorized_s": t_vec,
            "separate_ms_per_step": 1e3 * t_sep / (n * steps),
            "vectorized_ms_per_replica_step": 1e3 * t_vec / (n * steps),
            "speedup": t_sep / t_vec}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--fused", action="store_true",
                    help="fused=True optimizers on both sides (generated C kernel)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default="benchmarks/results/vectorized-cpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [bench(args.optimizer, n, args.steps, args.data_dir, args.repeat, args.fused, device)
            for n in args.replicas]
    where = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"{args.threads} CPU thread(s)")
    meta = {"optimizer": args.optimizer, "fused": args.fused, "batch_size": 64,
            "device": where,
            "steps_per_run": args.steps,
            "threads": args.threads, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    lines = [
        f"MNIST MLP 784-500-10, batch 64, {args.optimizer}{' (fused)' * args.fused}, "
        f"{args.steps} steps per run, "
        f"{where}, torch {torch.__version__}",
        "",
        "| N | N separate runs (s) | vectorised (s) | ms/step separate | ms/replica-step "
        "vectorised | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['replicas']} | {r['separate_s']:.3f} | {r['vectorized_s']:.3f} | "
                     f"{r['separate_ms_per_step']:.2f} | "
                     f"{r['vectorized_ms_per_replica_step']:.2f} | {r['speedup']:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
