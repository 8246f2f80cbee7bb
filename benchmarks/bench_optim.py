"""Optimizer step time: torchopt_survey vs its torch.optim counterpart, measured in one run.

    python benchmarks/bench_optim.py                      # foreach, CPU, 1 thread
    python benchmarks/bench_optim.py --json out.json --repeats 41
    python benchmarks/bench_optim.py --path default --params small --clock cpu \
        --json benchmarks/results/step-overhead-cpu.json   # per-step host overhead

For every method, both optimizers step the same parameter set (their own copies) with fixed
gradients; runs of ours and torch's alternate so that drift in machine speed hits both alike,
and the median per-step time of each is reported with the ratio ours / torch (< 1 is faster).
Parameter sets: ``mlp`` -- the surveys' 784-500-10 MLP (397,510 parameters in 4 tensors);
``10m`` -- 200 tensors totalling 10M parameters; ``small`` -- a 32-64-64-64-10 MLP (8 tensors,
11,082 parameters), where a step is mostly the host's Python and kernel-launch overhead.
``--path default`` constructs both optimizers without flags (on CPU: torch.optim's for-loop
path) instead of ``foreach=True``. ``--clock cpu`` times with the thread's CPU time, which
time slices lost to other processes on a shared machine do not inflate. Threads are pinned
(default 1) because on a small shared machine multi-threaded CPU ops can be tens of times
slower under load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

import torchopt_survey as ours

# name -> (our class, its torch.optim counterpart, constructor kwargs for both)
COUNTERPARTS: dict[str, tuple[type, type, dict[str, Any]]] = {
    "SGD": (ours.SGD, torch.optim.SGD, {"lr": 1e-3}),
    "Momentum": (ours.Momentum, torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9}),
    "NAG": (ours.NAG, torch.optim.SGD, {"lr": 1e-3, "momentum": 0.9, "nesterov": True}),
    "Adagrad": (ours.Adagrad, torch.optim.Adagrad, {"lr": 1e-2}),
    "Adadelta": (ours.Adadelta, torch.optim.Adadelta, {"lr": 1.0}),
    "RMSprop": (ours.RMSprop, torch.optim.RMSprop, {"lr": 1e-2}),
    "Adam": (ours.Adam, torch.optim.Adam, {"lr": 1e-3}),
    "AdamW": (ours.AdamW, torch.optim.AdamW, {"lr": 1e-3}),
    "AMSGrad": (ours.AMSGrad, torch.optim.Adam, {"lr": 1e-3, "amsgrad": True}),
    "NAdam": (ours.NAdam, torch.optim.NAdam, {"lr": 2e-3}),
    "Adamax": (ours.Adamax, torch.optim.Adamax, {"lr": 2e-3}),
}


def mlp_shapes() -> list[tuple[int, ...]]:
    """Parameter shapes of the 784-500-10 MLP of survey 1's MNIST experiment."""
    return [(500, 784), (500,), (10, 500), (10,)]


def many_tensor_shapes(count: int = 200, total: int = 10_000_000) -> list[tuple[int, ...]]:
    """``count`` tensors of mixed 1-d/2-d shapes summing to exactly ``total`` elements."""
    per = total // count
    shapes: list[tuple[int, ...]] = []
    for index in range(count):
        shapes.append((per // 100, 100) if index % 2 == 0 else (per,))
    return shapes


def small_shapes() -> list[tuple[int, ...]]:
    """A 32-64-64-64-10 MLP: 8 small tensors, so the step is the host's overhead."""
    widths = [32, 64, 64, 64, 10]
    shapes: list[tuple[int, ...]] = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        shapes += [(fan_out, fan_in), (fan_out,)]
    return shapes


PARAM_SETS: dict[str, Callable[[], list[tuple[int, ...]]]] = {
    "mlp": mlp_shapes,
    "10m": many_tensor_shapes,
    "small": small_shapes,
}

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
_clock = time.perf_counter


def make_params(
    shapes: list[tuple[int, ...]], device: str, dtype: torch.dtype, seed: int
) -> list[torch.Tensor]:
    # drawn where they live: a CPU draw of a billion parameters would take longer than the run
    generator = torch.Generator(device=device).manual_seed(seed)
    params = []
    for shape in shapes:
        param = torch.randn(shape, generator=generator, dtype=torch.float32, device=device)
        param = param.to(dtype=dtype).requires_grad_(True)
        param.grad = (torch.randn(shape, generator=generator, device=device) * 1e-2).to(dtype=dtype)
        params.append(param)
    return params


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(optimizer: torch.optim.Optimizer, steps: int, device: str) -> float:
    """Seconds per step, averaged over ``steps`` consecutive steps."""
    synchronize(device)
    start = _clock()
    for _ in range(steps):
        optimizer.step()
    synchronize(device)
    return (_clock() - start) / steps


@dataclass
class Row:
    method: str
    params: str
    numel: int
    tensors: int
    path: str
    torch_path: str
    ours_ms: float
    torch_ms: float
    ratio: float


def compare(
    method: str,
    set_name: str,
    *,
    device: str,
    dtype: torch.dtype,
    our_flags: dict[str, Any],
    torch_flags: dict[str, Any],
    repeats: int,
    steps: int,
    warmup: int,
) -> Row:
    our_cls, torch_cls, kwargs = COUNTERPARTS[method]
    shapes = PARAM_SETS[set_name]()
    ours_opt = our_cls(make_params(shapes, device, dtype, 0), **kwargs, **our_flags)
    torch_opt = torch_cls(make_params(shapes, device, dtype, 0), **kwargs, **torch_flags)
    for _ in range(warmup):
        ours_opt.step()
        torch_opt.step()
    ours_times, torch_times = [], []
    for round_ in range(repeats):
        # alternate which goes first, so drift and cache state after the other's run hit both
        pairs = [(ours_opt, ours_times), (torch_opt, torch_times)]
        for opt, times in pairs if round_ % 2 == 0 else pairs[::-1]:
            times.append(time_steps(opt, steps, device))
    ours_ms = statistics.median(ours_times) * 1e3
    torch_ms = statistics.median(torch_times) * 1e3
    numel = sum(torch.Size(s).numel() for s in shapes)
    return Row(
        method, set_name, numel, len(shapes), _describe(our_flags), _describe(torch_flags),
        round(ours_ms, 4), round(torch_ms, 4), round(ours_ms / torch_ms, 3),
    )


def _describe(flags: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in flags.items()) or "default"


def print_table(rows: list[Row], file: Any = sys.stdout) -> None:
    header = (
        f"| {'method':<9} | {'params':<6} | {'ours ms':>9} | {'torch ms':>9} | {'ours/torch':>10} |"
    )
    print(header, file=file)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|", file=file)
    for row in rows:
        print(
            f"| {row.method:<9} | {row.params:<6} | {row.ours_ms:>9.3f} | {row.torch_ms:>9.3f} "
            f"| {row.ratio:>10.3f} |",
            file=file,
        )


def environment(threads: int, device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": device,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name()
    return info


def write_json(path: str, mode: str, env: dict[str, Any], rows: list[Any]) -> None:
    """The rows and the environment they were measured in, as one JSON file."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as handle:
        json.dump({"mode": mode, "environment": env, "rows": [asdict(r) for r in rows]}, handle,
                  indent=2)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(COUNTERPARTS), choices=COUNTERPARTS,
                        metavar="METHOD", help="methods to time (default: all)")
    parser.add_argument("--params", nargs="+", default=["mlp", "10m"], choices=PARAM_SETS,
                        help="parameter sets: mlp (784-500-10 MLP), 10m (200 tensors, 10M), "
                        "small (8 tensors, 11k parameters)")
    parser.add_argument("--path", choices=["foreach", "default"], default="foreach",
                        help="foreach=True for both (default), or no flags at all")
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="wall (perf_counter) or cpu (this thread's CPU time)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned)")
    parser.add_argument("--repeats", type=int, default=21, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per round (default: 20 for mlp, 3 for 10m)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--json", default=None, help="write the rows and environment here")
    args = parser.parse_args(argv)

    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    global _clock
    _clock = CLOCKS[args.clock]
    flags = {"foreach": True} if args.path == "foreach" else {}
    default_steps = {"mlp": 20, "10m": 3, "small": 200}
    device, dtype = "cpu", torch.float32
    rows = []
    for set_name in args.params:
        steps = args.steps or default_steps[set_name]
        for method in args.methods:
            rows.append(compare(
                method, set_name, device=device, dtype=dtype,
                our_flags=flags, torch_flags=flags,
                repeats=args.repeats, steps=steps, warmup=args.warmup,
            ))
    print(f"{args.path} step time, {device}, {args.threads} thread(s), {args.clock} clock, "
          f"torch {torch.__version__}")
    print_table(rows)
    if args.json:
        env = {**environment(args.threads, device), "clock": args.clock,
               "repeats": args.repeats}
        write_json(args.json, args.path, env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
