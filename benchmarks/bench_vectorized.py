"""N MNIST runs vectorised (one program) against the same N runs one after another.

The code the CLI runs on both sides:
:class:`~torchopt_survey.experiments.tasks.mnist_vectorized.VectorMnist`
(stacked replicas, vmap forward/backward, one optimizer step with per-replica learning rates)
against N :class:`~torchopt_survey.experiments.tasks.mnist.MnistTask` epochs. The survey's MLP
(784-500-10), mini-batch ``--batch-size`` (64), ``--steps`` training steps per run (one
epoch of a training subset of ``batch * steps`` images), each run its own seed and learning
rate; the time of the fastest of ``--repeat`` measurements is kept. Threads pinned (default
1); on CPU glibc keeps freed blocks as in the experiments' processes (``--system-malloc``:
it does not). Next to the two times it measures the runs' arithmetic floor
(:func:`arithmetic_floor`), the work stacking leaves per replica, and prints the bound that
puts on any vectorised speed-up.

The learning rates are spread log-evenly over ``--lrs`` (default 1e-4 to 1e-2, where Adam is
stable on this problem): at unstable rates a saturated softmax fills the gradients with
subnormal floats, whose x86 arithmetic is many times slower, on both sides alike -- the
times would then measure that, not vectorisation.

Usage::

    python benchmarks/bench_vectorized.py [--optimizer adam] [--steps 40] [--threads 1]
        [--batch-size 64] [--lrs 1e-4 1e-2]
        [--replicas 1 2 4 8 16] [--device cpu|cuda] [--out benchmarks/results/vectorized-cpu]

On CUDA the data are device-resident on both sides and each measurement ends with a
synchronisation, so the time is the device's, not the launch queue's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from torchopt_survey.experiments.runtime.host_memory import keep_freed_memory
from torchopt_survey.experiments.tasks import config as C
from torchopt_survey.experiments.tasks import mnist
from torchopt_survey.experiments.tasks.mnist_vectorized import VectorMnist


def _specs(optimizer: str, n: int, steps: int, fused: bool = False,
           batch_size: int = 64, lrs: tuple[float, float] = (1e-4, 1e-2),
           ) -> list[dict[str, Any]]:
    lo, hi = (math.log10(v) for v in lrs)
    rates = torch.logspace(lo, hi, max(n, 2)).tolist()[:n]
    cfg = C.merge(C.default_config("mnist"), {
        "seeds": [0], "epochs": 1, "train_subset": batch_size * steps, "test_subset": 100,
        "fused": fused,
        "regimes": {"mb": {"batch_size": batch_size, "optimizers": [optimizer]}}})
    cfg["regimes"] = {"mb": cfg["regimes"]["mb"]}
    base = mnist.expand(C.validate(cfg))[0]
    return [{**base, "seed": r, "variant": f"bench-{r}",
             "optimizer_kwargs": {**base["optimizer_kwargs"], "lr": rates[r]}} for r in range(n)]


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


def arithmetic_floor(task: mnist.MnistTask, optimizer: str, steps: int, repeat: int,
                     device: torch.device) -> float:
    """A lower bound on the seconds any program needs per run of ``steps`` such steps.

    Per replica and step, only the work that stacking replicas leaves per replica: the five
    matrix products of the MLP's forward and backward (into preallocated outputs) and one
    ``fused=True`` optimizer step over the replica's parameters and state (one pass over
    memory) -- no autograd, loss, batch gathering or Python per op, the cache warm with one
    replica's tensors. A vectorised program does the same products and reads and writes the
    same state per replica, so ``separate / floor`` bounds its speed-up from above. Random
    operands: the bound holds only as long as the runs' own values are normal floats
    (subnormals make x86 arithmetic many times slower, which would raise the floor).
    """
    from torchopt_survey.experiments.tasks.optimizers import build_optimizer

    w1, w2 = (task.model[i].weight.detach() for i in (0, 2))
    hidden, features = w1.shape
    classes, batch = w2.shape[0], task.batch_size
    x = torch.randn(batch, features, device=device)
    d_out = torch.randn(batch, classes, device=device)
    h, d_h = torch.empty(batch, hidden, device=device), torch.empty(batch, hidden, device=device)
    out = torch.empty(batch, classes, device=device)
    g1, g2 = torch.empty_like(w1), torch.empty_like(w2)
    params = [p.detach().clone().requires_grad_() for p in task.model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = build_optimizer(optimizer, params, {**task.spec["optimizer_kwargs"], "fused": True})

    def one_run() -> None:
        for _ in range(steps):
            torch.mm(x, w1.t(), out=h)  # forward
            torch.mm(h, w2.t(), out=out)
            torch.mm(d_out.t(), h, out=g2)  # backward: dW2, dH, dW1
            torch.mm(d_out, w2, out=d_h)
            torch.mm(d_h.t(), x, out=g1)
            opt.step()

    one_run()
    return _time(one_run, repeat, device)


def bench(optimizer: str, n: int, steps: int, data_dir: str | None, repeat: int,
          fused: bool = False, device: torch.device | None = None,
          batch_size: int = 64, lrs: tuple[float, float] = (1e-4, 1e-2)) -> dict[str, float]:
    specs = _specs(optimizer, n, steps, fused, batch_size, lrs)
    device = device or torch.device("cpu")
    tasks = [mnist.MnistTask(s, device, data_dir) for s in specs]
    losses = torch.empty(tasks[0].steps_per_epoch, device=device)

    def separate() -> None:
        for task in tasks:
            task.train_epoch(1, losses, lambda done, loss: None)

    prog = VectorMnist(specs, device, data_dir)

    def vectorised() -> None:
        prog.train_epoch(1)

    vectorised()  # warm-up (first-step allocations)
    separate()
    t_sep, t_vec = _time(separate, repeat, device), _time(vectorised, repeat, device)
    # (on a GPU one replica's floor is launch latency, which stacking shares: no bound there)
    t_floor = (n * arithmetic_floor(tasks[0], optimizer, steps, repeat, device)
               if device.type == "cpu" else None)
    return {"replicas": n, "separate_s": t_sep, "vectorized_s": t_vec,
            "separate_ms_per_step": 1e3 * t_sep / (n * steps),
            "vectorized_ms_per_replica_step": 1e3 * t_vec / (n * steps),
            "floor_ms_per_replica_step": None if t_floor is None else 1e3 * t_floor / (n * steps),
            "speedup": t_sep / t_vec, "speedup_bound": None if t_floor is None else t_sep / t_floor}


def render(meta: dict[str, Any]) -> str:
    """The markdown table of one result file."""

    def num(value: float | None, suffix: str = "") -> str:
        return "—" if value is None else f"{value:.2f}{suffix}"

    lo, hi = meta["lrs"]
    lines = [
        f"MNIST MLP 784-500-10, batch {meta['batch_size']}, "
        f"{meta['optimizer']}{' (fused)' * meta['fused']}, lr {lo:g} to {hi:g}, "
        f"{meta['steps_per_run']} steps per run, {meta['device']}, torch {meta['torch']}"
        f"{', malloc keeps freed blocks' if meta['malloc_keeps_freed_blocks'] else ''}",
        "",
        "| N | N separate runs (s) | vectorised (s) | ms/step separate | ms/replica-step "
        "vectorised | ms/replica-step floor | speed-up | bound (separate / floor) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in meta["rows"]:
        lines.append(f"| {r['replicas']} | {r['separate_s']:.3f} | {r['vectorized_s']:.3f} | "
                     f"{r['separate_ms_per_step']:.2f} | "
                     f"{r['vectorized_ms_per_replica_step']:.2f} | "
                     f"{num(r['floor_ms_per_replica_step'])} | {r['speedup']:.2f}x | "
                     f"{num(r['speedup_bound'], 'x')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lrs", type=float, nargs=2, default=[1e-4, 1e-2], metavar=("LO", "HI"),
                    help="the replicas' learning rates, log-evenly spaced")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--fused", action="store_true",
                    help="fused=True optimizers on both sides (generated C kernel)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--system-malloc", action="store_true",
                    help="leave glibc's thresholds alone (the experiments raise them on CPU)")
    ap.add_argument("--out", default="benchmarks/results/vectorized-cpu")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # as the experiments' processes run (runner.prepare_process), both sides alike
    kept = device.type == "cpu" and not args.system_malloc and keep_freed_memory()
    rows = [bench(args.optimizer, n, args.steps, args.data_dir, args.repeat, args.fused, device,
                  args.batch_size, tuple(args.lrs))
            for n in args.replicas]
    where = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"{args.threads} CPU thread(s)")
    meta = {"optimizer": args.optimizer, "fused": args.fused, "batch_size": args.batch_size,
            "lrs": args.lrs, "device": where, "malloc_keeps_freed_blocks": kept,
            "steps_per_run": args.steps,
            "threads": args.threads, "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    text = render(meta)
    out.with_suffix(".md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
