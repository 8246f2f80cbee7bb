"""Epoch-time benchmark of the experiments' MNIST loop against a textbook loop.

Same process, same CPU, threads pinned (default 1). Measures ms per training step of:

* textbook: ``torchvision.datasets.MNIST(transform=ToTensor())`` + ``DataLoader`` + torch.optim;
* in-memory torch.optim: tensors on the device, ``index_select`` batches, torch.optim.SGD;
* ours: :class:`torchopt_survey.experiments.mnist.MnistTask` (the code the CLI runs) with
  torchopt_survey's optimizers, one full epoch;
* the fair baseline: the very same task and loop with the torch.optim counterpart of the
  optimizer swapped in (same hyperparameters; ``fused=True`` where torch has a fused path for
  the method), timed in the same run with the order of ours and torch's alternating;
* fwd+bwd floor: forward + backward of the same model only (no optimizer, no data handling).

Usage::

    python benchmarks/bench_mnist_loop.py [--data-dir DIR] [--threads 1] [--optimizers sgd adam]
        [--out experiments/benchmark.md]
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from torchopt_survey.experiments.tasks.data import _prepare_root, _tv_class, resolve_data_dir
from torchopt_survey.experiments.tasks.mnist import MnistTask
from torchopt_survey.experiments.tasks.models import make_mlp
from torchopt_survey.experiments.tasks.optimizers import resolve_optimizer_names


def _spec(
    optimizer: str, batch_size: int | str, train_subset: int | None, fused: bool = False
) -> dict[str, Any]:
    from torchopt_survey.experiments.tasks.optimizers import optimizer_hparams

    kwargs = optimizer_hparams(optimizer, {"fused": True} if fused else None)
    return {
        "experiment": "mnist", "variant": "bench", "dataset": "mnist", "regime": "bench",
        "batch_size": batch_size, "optimizer": optimizer,
        "optimizer_kwargs": kwargs, "seed": 0, "epochs": 1, "log_every": 1,
        "hidden": 500, "activation": "linear", "train_subset": train_subset, "test_subset": 100,
        "eval_batch_size": 10000, "compile": False,
    }  # fmt: skip


def textbook(data_dir: str | None, batch_size: int, steps: int) -> float:
    """ms/step of the DataLoader(ToTensor()) + torch.optim.SGD loop."""
    from torch.utils.data import DataLoader
    from torchvision import transforms

    cls = _tv_class("mnist")
    root, download = _prepare_root(cls, resolve_data_dir(data_dir))
    ds = cls(str(root), train=True, download=download, transform=transforms.ToTensor())
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    it = iter(loader)
    t0 = 0.0
    for i in range(steps + 10):
        if i == 10:
            t0 = time.perf_counter()  # after warm-up
        xb, yb = next(it)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb.view(xb.shape[0], -1)), yb)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps * 1e3


def plain_in_memory(task: MnistTask, steps: int) -> float:
    """ms/step of a straightforward in-memory loop with torch.optim.SGD."""
    x, y = task.data.x_train, task.data.y_train
    bs = task.batch_size
    torch.manual_seed(0)
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    perm = torch.randperm(x.shape[0])
    t0 = 0.0
    for i in range(steps + 10):
        if i == 10:
            t0 = time.perf_counter()
        j = (i * bs) % (x.shape[0] - bs)
        idx = perm[j : j + bs]
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        loss.item()  # the usual per-step .item() for logging
    return (time.perf_counter() - t0) / steps * 1e3


def ours(task: MnistTask) -> float:
    """ms/step of one full epoch of the experiments' loop (includes shuffle and loss logging)."""
    losses = torch.empty(task.steps_per_epoch)
    t0 = time.perf_counter()
    task.train_epoch(1, losses, lambda *_: None)
    return (time.perf_counter() - t0) / task.steps_per_epoch * 1e3


# our classes whose torch.optim counterpart has another name
_TORCH_CLASS = {"Momentum": "SGD", "NAG": "SGD", "AMSGrad": "Adam"}


def torch_counterpart(opt: torch.optim.Optimizer) -> tuple[torch.optim.Optimizer, str]:
    """torch.optim's class for ``opt``, same parameters and hyperparameters; and its label."""
    name = type(opt).__name__
    cls = getattr(torch.optim, _TORCH_CLASS.get(name, name))
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in opt.defaults.items() if k in accepted}
    params = [p for group in opt.param_groups for p in group["params"]]
    label = f"torch.optim.{cls.__name__}"
    if kwargs.get("fused"):
        try:
            return cls(params, **kwargs), label + " fused"
        except (RuntimeError, ValueError):  # no fused path in torch for this method/device
            kwargs["fused"] = None
    return cls(params, **kwargs), label


def ours_vs_torch(spec: dict[str, Any], data_dir: str | None, repeats: int) -> dict[str, Any]:
    """Median epoch ms/step of the task with our optimizer and with torch's, alternating which
    runs first in each round so that machine drift hits both alike."""
    task = MnistTask(spec, torch.device("cpu"), data_dir)
    ref = MnistTask(spec, torch.device("cpu"), data_dir)
    ref.optimizer, label = torch_counterpart(ref.optimizer)
    a: list[float] = []
    b: list[float] = []
    for round_ in range(repeats):
        pairs = [(task, a), (ref, b)]
        for t, times in pairs if round_ % 2 == 0 else pairs[::-1]:
            times.append(ours(t))  # one epoch of the same loop
    ms, torch_ms = statistics.median(a), statistics.median(b)
    return {"ms_per_step": ms, "torch_same_loop_ms": torch_ms, "torch_optimizer": label,
            "ratio_vs_torch_same_loop": ms / torch_ms}  # fmt: skip


def fwd_bwd_floor(task: MnistTask, steps: int) -> float:
    """ms/step of forward + backward alone (the compute every loop must do)."""
    x, y = task.data.x_train, task.data.y_train
    bs = task.batch_size
    model = make_mlp()
    t0 = 0.0
    for i in range(steps + 10):
        if i == 10:
            t0 = time.perf_counter()
        j = (i * bs) % (x.shape[0] - bs)
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(x[j : j + bs]), y[j : j + bs]).backward()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="folder containing MNIST/raw")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--optimizers", nargs="+", default=["sgd", "adam"], help="'all' or names")
    ap.add_argument("--steps", type=int, default=400, help="timed steps for batch-64 loops")
    ap.add_argument("--steps-b1", type=int, default=5000, help="timed steps for batch-1 loops")
    ap.add_argument("--fused", action="store_true", help="also time fused=True optimizers")
    ap.add_argument("--repeats", type=int, default=3, help="median of this many measurements")
    ap.add_argument("--out", default=None, help="write a Markdown table (and .json) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = resolve_optimizer_names(args.optimizers)

    def med(fn: Any, *a: Any) -> float:
        # This VM's timings scatter by +-20 %; the median of repeats is far more stable.
        return statistics.median(fn(*a) for _ in range(args.repeats))

    rows: list[dict[str, Any]] = []
    for bs, steps in ((64, args.steps), (1, args.steps_b1)):
        subset = None if bs == 64 else args.steps_b1
        base = MnistTask(_spec("sgd", bs, subset), torch.device("cpu"), args.data_dir)
        tb = med(textbook, args.data_dir, bs, steps if bs == 64 else steps // 5)
        plain = med(plain_in_memory, base, steps)
        floor = med(fwd_bwd_floor, base, steps)
        rows.append({"batch": bs, "loop": "textbook DataLoader(ToTensor()) + torch.optim.SGD",
                     "ms_per_step": tb})  # fmt: skip
        rows.append(
            {"batch": bs, "loop": "plain in-memory + torch.optim.SGD", "ms_per_step": plain}
        )
        rows.append({"batch": bs, "loop": "forward+backward only (floor)", "ms_per_step": floor})
        variants = [(n, False) for n in names] + ([(n, True) for n in names] if args.fused else [])
        for name, fused in variants:
            spec = _spec(name, bs, subset, fused)
            pair = ours_vs_torch(spec, args.data_dir, args.repeats)
            ms = pair["ms_per_step"]
            share = max(0.0, (ms - floor) / ms)
            rows.append({"batch": bs, "loop": f"ours ({name}{', fused' if fused else ''})",
                         **pair,
                         "speedup_vs_textbook": tb / ms,
                         "optimizer_and_bookkeeping_share": share})  # fmt: skip
    lines = [
        f"threads={args.threads}, torch {torch.__version__}, device cpu, "
        f"median of {args.repeats} measurements; 'same loop, torch.optim': the same task and "
        "loop with torch.optim's counterpart, timed alternately with ours in the same run",
        "",
        "| batch | loop | ms/step | epoch s (60k) | same loop, torch.optim: ms/step | "
        "ours / torch.optim | speed-up vs textbook | optimizer+bookkeeping |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        epoch_s = r["ms_per_step"] * math.ceil(60000 / r["batch"]) / 1e3
        sp = f"{r['speedup_vs_textbook']:.1f}x" if "speedup_vs_textbook" in r else ""
        sh = (
            f"{100 * r['optimizer_and_bookkeeping_share']:.0f} %"
            if "optimizer_and_bookkeeping_share" in r
            else ""
        )
        same = (
            f"{r['torch_same_loop_ms']:.3f} ({r['torch_optimizer']})"
            if "torch_same_loop_ms" in r
            else ""
        )
        ratio = f"{r['ratio_vs_torch_same_loop']:.3f}" if "torch_same_loop_ms" in r else ""
        lines.append(
            f"| {r['batch']} | {r['loop']} | {r['ms_per_step']:.3f} | {epoch_s:.1f} | {same} | "
            f"{ratio} | {sp} | {sh} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
