"""The main job's training step, per regime: eager torch.optim, ours eager, ours compiled, floor.

The README's main job trains the survey's MNIST perceptron (784-500-10, linear hidden
activation, cross-entropy) with SGD at batch 1 (600,000 steps: the critical path), batch 64
(every optimizer) and the full batch. For each regime this measures, in one process with
threads pinned (default 1):

* ``torch.optim``: the eager loop with the torch.optim counterpart
  (``zero_grad(set_to_none) / backward / step``);
* ``ours eager``: the same loop with torchopt_survey's optimizer;
* ``ours compiled``: :func:`torchopt_survey.compile_step` (forward, loss, backward and update in
  one Inductor program); its compilation (first call) is timed separately;
* ``floor``: the memory traffic a step cannot avoid divided by the single-thread copy
  bandwidth measured in the same run (a ``copy_`` of 64 MiB, past the caches, bytes read + written
  per second). The bytes: the forward reads every parameter once, the update reads and writes
  every parameter and every state tensor once, the batch is read once (``floor``); the
  ``one-pass floor`` leaves out the forward's read (every weight read and written once, as if
  the next step's forward were fused with this step's update). At batch 64 and above the step
  is bound by arithmetic (the matrix products), not by memory, so the floor is not reached.
  The survey's weights (1.6 MB) fit in a core's L2 cache on many CPUs, where a step can move
  them faster than a 64 MiB copy: the ``working-set floor`` divides the same bytes by the
  bandwidth of a copy as large as the parameters and state (measured the same way).

Times are medians over ``--rounds`` rounds; in each round the variants run ``steps`` steps
each, in an order that alternates between rounds, and the ratios are medians of the per-round
ratios (robust on a shared machine). Batches are gathered with ``index_select`` from MNIST in
memory as the experiments do (random images of the same shape when MNIST is not found).

Subnormal floats: at a high learning rate the softmax saturates and the gradients fill with
subnormal numbers (and Adam's squared gradients underflow into them), which x86 arithmetic
handles many times slower. Each ``--denormal-cases`` entry ``OPTIMIZER:LR:BATCH`` trains a
copy for a while and times the eager and compiled steps with
``torch.set_flush_denormal(False)`` (the default) and ``True``, alternating, with the share
of subnormal values in the softmax probabilities, the gradients and the optimizer state.

Usage::

    python benchmarks/bench_main_job.py [--regimes 1 64 full] [--optimizer sgd] [--threads 1]
        [--rounds 7] [--data-dir DIR] [--out benchmarks/results/main-job-cpu.json]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import torchopt_survey as ts

# (name, our class, torch.optim class, kwargs) -- the registry's paper defaults, lr 0.01
OPTIMIZERS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "sgd": (ts.SGD, torch.optim.SGD, {"lr": 0.01}),
    "momentum": (ts.Momentum, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    "adam": (ts.Adam, torch.optim.Adam, {"lr": 0.01}),
    "rmsprop": (ts.RMSprop, torch.optim.RMSprop, {"lr": 0.01}),
}
# steps per round of each regime (about a tenth of a second of eager work each)
STEPS = {"1": 300, "64": 40, "full": 1}
FLOAT_BYTES = 4
COPY_MIB = 64  # the bandwidth probe: larger than the L2 caches, streamed from L3/DRAM


def make_model() -> nn.Sequential:
    """The survey's perceptron as ``experiments``' ``make_mlp()`` builds it (linear hidden)."""
    return nn.Sequential(nn.Linear(784, 500), nn.Identity(), nn.Linear(500, 10))


def load_mnist(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The 60,000 training images as float32 in [0, 1] and their labels, read from the raw
    IDX files (gzipped or not) under ``DIR/MNIST/raw``."""
    root = data_dir or os.environ.get("TORCHOPT_SURVEY_DATA")
    raw = Path(root or ".") / "MNIST" / "raw"

    def read(name: str, header: int) -> torch.Tensor | None:
        for path, opener in ((raw / name, open), (raw / f"{name}.gz", gzip.open)):
            if path.is_file():
                with opener(path, "rb") as f:
                    return torch.frombuffer(bytearray(f.read()[header:]), dtype=torch.uint8)
        return None

    images = read("train-images-idx3-ubyte", 16)
    labels = read("train-labels-idx1-ubyte", 8)
    if root and images is not None and labels is not None:
        return images.reshape(-1, 784).float().div_(255), labels.long(), "mnist"
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(60000, 784, generator=gen), torch.randint(0, 10, (60000,), generator=gen),
            "random")


def keep_freed_memory() -> bool:
    """The experiments' allocator setting (freed blocks kept), so eager pays what it pays there."""
    from torchopt_survey.experiments.runtime.host_memory import keep_freed_memory as keep

    return keep()


def copy_bandwidth_gbps(mib: float, repeat: int = 20) -> float:
    """Single-thread ``copy_`` bandwidth: bytes read + written per second (best of ``repeat``)."""
    src = torch.ones(int(mib * (1 << 18)))
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * FLOAT_BYTES / best / 1e9


def state_tensors_per_param(opt_name: str) -> int:
    cls, _, kwargs = OPTIMIZERS[opt_name]
    probe = torch.nn.Parameter(torch.zeros(2))
    opt = cls([probe], **kwargs)
    return sum(1 for entry in opt._state_spec(opt.param_groups[0]) if entry.kind != "scalar")


def floor_bytes(params: int, states: int, batch: int) -> tuple[int, int]:
    """(floor, one-pass floor) in bytes; see the module docstring."""
    update = 2 * params * (1 + states) * FLOAT_BYTES
    batch_read = batch * 784 * FLOAT_BYTES
    return params * FLOAT_BYTES + update + batch_read, update + batch_read


class Variant:
    """One way of training: a model, its optimizer and a ``step(x, y)``."""

    def __init__(self, name: str, model: nn.Module, step: Callable[..., Any]) -> None:
        self.name, self.model, self.step = name, model, step


def eager_variant(name: str, model: nn.Module, opt: torch.optim.Optimizer) -> Variant:
    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.detach()

    return Variant(name, model, step)


def variants(opt_name: str, lr: float | None = None) -> tuple[list[Variant], ts.CompiledStep]:
    ours_cls, torch_cls, kwargs = OPTIMIZERS[opt_name]
    kwargs = {**kwargs, **({"lr": lr} if lr is not None else {})}
    torch.manual_seed(0)
    base = make_model()
    models = [copy.deepcopy(base) for _ in range(3)]
    compiled = ts.compile_step(models[2], F.cross_entropy,
                               ours_cls(models[2].parameters(), **kwargs))
    return [
        eager_variant("torch.optim", models[0], torch_cls(models[0].parameters(), **kwargs)),
        eager_variant("ours eager", models[1], ours_cls(models[1].parameters(), **kwargs)),
        Variant("ours compiled", models[2], compiled),
    ], compiled


def batches(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> Callable[[int], Any]:
    """``get(i)``: the i-th batch of a seeded shuffle, gathered as the experiments do."""
    n = x.shape[0]
    if batch >= n:
        return lambda i: (x, y)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    per_epoch = n // batch

    def get(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = perm[(i % per_epoch) * batch:(i % per_epoch + 1) * batch]
        return x.index_select(0, idx), y.index_select(0, idx)

    return get


def time_round(variant: Variant, get: Callable[[int], Any], start: int, steps: int) -> float:
    """Seconds per step over ``steps`` steps (the loss stays on the device, as in the runs)."""
    t0 = time.perf_counter()
    for i in range(start, start + steps):
        variant.step(*get(i))
    return (time.perf_counter() - t0) / steps


def compare(runs: list[Variant], get: Callable[[int], Any], steps: int, rounds: int,
            bandwidths: dict[float, list[float]]) -> dict[str, list[float]]:
    """Per-variant seconds per step, one entry per round; each list of ``bandwidths`` gets one
    copy measurement of its size (MiB) per round (the best is the floor's: other processes
    only ever lower it)."""
    times: dict[str, list[float]] = {v.name: [] for v in runs}
    for r in range(rounds):
        for mib, measured in bandwidths.items():
            measured.append(copy_bandwidth_gbps(mib, repeat=5))
        order = runs if r % 2 == 0 else runs[::-1]
        for variant in order:
            times[variant.name].append(time_round(variant, get, r * steps, steps))
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def regime_row(regime: str, opt_name: str, x: torch.Tensor, y: torch.Tensor, rounds: int,
               bandwidths: list[float]) -> dict[str, Any]:
    batch = x.shape[0] if regime == "full" else int(regime)
    steps = STEPS.get(regime, 40)
    runs, compiled = variants(opt_name)
    get = batches(x, y, batch, seed=0)
    first = time.perf_counter()
    for variant in runs:  # warm-up; the compiled variant compiles here
        start = time.perf_counter()
        variant.step(*get(0))
        variant.step(*get(1))  # (a first step with lazy state missing runs eagerly)
        if variant is runs[2]:
            first = time.perf_counter() - start
    params = sum(p.numel() for p in runs[0].model.parameters())
    states = state_tensors_per_param(opt_name)
    # the second probe copies a buffer as large as the parameters and state the update
    # streams: on a CPU whose caches hold them, the bandwidth the step can actually get
    working_set_mib = params * (1 + states) * FLOAT_BYTES / (1 << 20)
    probes = {COPY_MIB: bandwidths, working_set_mib: []}
    times = compare(runs, get, steps, rounds, probes)
    # a second step object for a fresh model, as the next run of a worker builds one: Inductor's
    # FX graph cache turns its compilation into a re-trace and a load
    again = variants(opt_name)[1]
    again(*get(0))
    again(*get(1))
    floor, one_pass = floor_bytes(params, states, batch)
    eager, ours, comp = (times[v.name] for v in runs)
    return {
        "regime": regime, "batch": batch, "optimizer": opt_name, "steps_per_round": steps,
        "rounds": rounds,
        "ms": {name: 1e3 * statistics.median(t) for name, t in times.items()},
        "ratio_compiled_to_torch": median_ratio(comp, eager),
        "ratio_ours_eager_to_torch": median_ratio(ours, eager),
        "floor_bytes": floor, "one_pass_floor_bytes": one_pass,
        "working_set_mib": working_set_mib,
        "working_set_copy_gbps": max(probes[working_set_mib]),
        "compile_s": compiled.compile_seconds, "first_two_compiled_steps_s": first,
        "compile_again_s": again.compile_seconds,
        "compilations": compiled.compilations,
    }


def subnormal_share(tensors: list[torch.Tensor]) -> float:
    """The share of subnormal values among all elements of ``tensors``."""
    tiny = torch.finfo(torch.float32).tiny
    count = sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in tensors)
    return count / max(1, sum(t.numel() for t in tensors))


def denormal_rows(opt_name: str, x: torch.Tensor, y: torch.Tensor, lr: float, batch: int,
                  rounds: int) -> dict[str, Any]:
    """Eager and compiled steps at a saturating lr, flush-to-zero off and on, alternating."""
    runs, _ = variants(opt_name, lr=lr)
    runs = [runs[0], runs[2]]
    get = batches(x, y, batch, seed=1)
    warm = 200 if batch >= 64 else 1000
    for i in range(warm):  # train into saturation (both variants, off: the default)
        for variant in runs:
            variant.step(*get(i))
    model = runs[0].model
    opt_state = [v for per_param in runs[1].step.optimizer.state.values()  # type: ignore[attr-defined]
                 for k, v in per_param.items() if k != "step"]
    xb, yb = get(warm)
    out = model(xb)
    F.cross_entropy(out, yb).backward()
    probabilities = torch.softmax(out.detach(), dim=1)
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    steps = STEPS.get(str(batch), 40)
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        for flush in ((False, True) if r % 2 == 0 else (True, False)):
            torch.set_flush_denormal(flush)
            try:
                for variant in runs:
                    key = f"{variant.name}, flush={'on' if flush else 'off'}"
                    times.setdefault(key, []).append(
                        time_round(variant, get, warm + r * steps, steps))
            finally:
                torch.set_flush_denormal(False)
    return {
        "lr": lr, "batch": batch, "optimizer": opt_name,
        "subnormal_share": {"probabilities": subnormal_share([probabilities]),
                            "gradients": subnormal_share(gradients),
                            "optimizer_state": subnormal_share(opt_state)},
        "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "speedup_flush_eager": median_ratio(times["torch.optim, flush=off"],
                                            times["torch.optim, flush=on"]),
        "speedup_flush_compiled": median_ratio(times["ours compiled, flush=off"],
                                               times["ours compiled, flush=on"]),
    }


def add_floors(row: dict[str, Any], bandwidth: float) -> None:
    """The floors in ms at ``bandwidth`` (GB/s), and the compiled step's time over them."""
    compiled_ms = row["ms"]["ours compiled"]
    row["floor_ms"] = row["floor_bytes"] / bandwidth / 1e6
    row["one_pass_floor_ms"] = row["one_pass_floor_bytes"] / bandwidth / 1e6
    row["compiled_to_floor"] = compiled_ms / row["floor_ms"]
    row["compiled_to_one_pass_floor"] = compiled_ms / row["one_pass_floor_ms"]
    row["working_set_floor_ms"] = row["floor_bytes"] / row["working_set_copy_gbps"] / 1e6
    row["compiled_to_working_set_floor"] = compiled_ms / row["working_set_floor_ms"]


def parse_case(parser: argparse.ArgumentParser, case: str) -> tuple[str, str, str]:
    parts = case.split(":")
    if len(parts) != 3 or parts[0] not in OPTIMIZERS or not parts[2].isdigit():
        parser.error(f"--denormal-cases: expected OPTIMIZER:LR:BATCH with OPTIMIZER one of "
                     f"{', '.join(sorted(OPTIMIZERS))}, got {case!r}")
    try:
        float(parts[1])
    except ValueError:
        parser.error(f"--denormal-cases: LR must be a number, got {case!r}")
    return parts[0], parts[1], parts[2]


def table(rows: list[dict[str, Any]], bandwidth: float) -> str:
    lines = [
        f"copy bandwidth (1 thread): {bandwidth:.1f} GB/s",
        "",
        "| regime | optimizer | torch.optim ms | ours eager ms | ours compiled ms | "
        "compiled / torch | floor ms (one-pass) | compiled / floor (one-pass) | "
        "working-set floor ms (compiled / it) | compile s (again) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms = r["ms"]
        lines.append(
            f"| {r['regime']} | {r['optimizer']} | {ms['torch.optim']:.3f} | "
            f"{ms['ours eager']:.3f} | {ms['ours compiled']:.3f} | "
            f"{r['ratio_compiled_to_torch']:.2f} | {r['floor_ms']:.3f} "
            f"({r['one_pass_floor_ms']:.3f}) | {r['compiled_to_floor']:.2f} "
            f"({r['compiled_to_one_pass_floor']:.2f}) | {r['working_set_floor_ms']:.3f} "
            f"({r['compiled_to_working_set_floor']:.2f}) | {r['compile_s']:.1f} "
            f"({r['compile_again_s']:.1f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regimes", nargs="+", default=["1", "64", "full"])
    parser.add_argument("--optimizers", nargs="+", default=["sgd"], choices=sorted(OPTIMIZERS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--denormal-cases", nargs="*",
                        default=["adam:0.1:64", "adam:0.01:1", "sgd:0.01:1"],
                        help="OPTIMIZER:LR:BATCH runs timed with flush-to-zero off and on "
                        "(none: skip); SGD at lr 1 diverges to NaN instead of saturating")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="benchmarks/results/main-job-cpu.json")
    args = parser.parse_args(argv)
    for regime in args.regimes:
        if regime != "full" and not regime.isdigit():
            parser.error(f"--regimes: expected batch sizes or 'full', got {regime!r}")
    cases = [parse_case(parser, case) for case in args.denormal_cases]  # checked up front
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()
    x, y, data = load_mnist(args.data_dir)
    bandwidths = [copy_bandwidth_gbps(COPY_MIB)]
    rows = []
    for opt_name in args.optimizers:
        for regime in args.regimes:
            rows.append(regime_row(regime, opt_name, x, y,
                                   3 if regime == "full" else args.rounds, bandwidths))
            add_floors(rows[-1], max(bandwidths))
            print(table(rows[-1:], max(bandwidths)).splitlines()[-1], flush=True)
    bandwidth = max(bandwidths)  # the best seen in the run: every floor uses it
    for row in rows:
        add_floors(row, bandwidth)
    denormal = [denormal_rows(name, x, y, float(lr), int(batch), args.rounds)
                for name, lr, batch in cases]
    report = [table(rows, bandwidth)]
    for case in denormal:
        share = case["subnormal_share"]
        report.append(
            f"\nsubnormals: {case['optimizer']} lr {case['lr']}, batch {case['batch']} "
            f"({100 * share['probabilities']:.2f}% of probabilities, "
            f"{100 * share['gradients']:.4f}% of gradients, "
            f"{100 * share['optimizer_state']:.4f}% of optimizer state subnormal):\n")
        report.extend(f"- {key}: {ms:.3f} ms/step" for key, ms in case["ms"].items())
        report.append(f"- flush-to-zero speed-up: eager {case['speedup_flush_eager']:.2f}x, "
                      f"compiled {case['speedup_flush_compiled']:.2f}x")
    print()
    print("\n".join(report))
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__, "threads": args.threads,
                    "freed_memory_kept": kept},
        "data": data, "copy_bandwidth_gbps": bandwidth, "copy_mib": COPY_MIB,
        "regimes": rows, "subnormals": denormal,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(
        f"Written by `benchmarks/bench_main_job.py` ({data} data, {args.threads} thread(s), "
        f"torch {torch.__version__}).\n\n" + "\n".join(report) + "\n")
    print(f"\nwrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
