"""Fused step time: ``fused=True`` of torchopt_survey vs torch's fused AND foreach paths, one run.

    python benchmarks/bench_fused.py --threads 1 2 --json benchmarks/results/fused-cpu.json
    python benchmarks/bench_fused.py --device cuda --json benchmarks/results/fused-cuda.json

CPU (issue #7's goals): per thread count (``--threads``, pinned with ``torch.set_num_threads``),
per method, our fused step against torch's counterpart with ``fused=True`` (where torch has a
fused CPU kernel: SGD/Momentum/NAG, Adagrad, Adam/AdamW/AMSGrad) and with ``foreach=True``, on
the MLP's parameters and on 200 tensors / 10M parameters. All optimizers of a row are timed in
one loop whose order rotates every round (ours first, then last, ...), so machine drift hits
them alike; "torch's fastest" is the faster of torch's two paths *in that loop*. Also the
one-off cost of generating and compiling a kernel (measured in an empty cache dir).

CUDA: 200 tensors of 1M/10M/100M/1B parameters (fp32 and bf16): median step time (CUDA
events, the same rotating order), achieved GB/s from a bytes-moved model (param read+write, grad
read, every state read+write: Adam fp32 = 28 bytes/param), the device copy bandwidth measured in
the same run, the ratio against torch's fastest of fused/foreach and the extra peak memory of a
step.

Shares helpers and the JSON layout (``{"mode", "environment", "rows"}``) with bench_optim.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# this checkout's package first (an installed copy elsewhere must not be what is measured)
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from bench_optim import (  # noqa: E402
    COUNTERPARTS,
    PARAM_SETS,
    environment,
    make_params,
    many_tensor_shapes,
    time_steps,
    write_json,
)

#: methods whose torch counterpart has a fused kernel (their goal: no slower than it)
TORCH_FUSED = {"SGD", "Momentum", "NAG", "Adagrad", "Adam", "AdamW", "AMSGrad"}
#: issue #7's goals: ours/torch fused <= 1.00 where torch has one, else ours/foreach <= 0.55
GOAL_VS_FUSED = 1.0
GOAL_VS_FOREACH = 0.55


@dataclass
class FusedRow:
    method: str
    params: str
    numel: int
    tensors: int
    dtype: str
    threads: int
    ours_ms: float
    torch_fused_ms: float | None  # None: torch has no fused kernel for it (on this device)
    torch_foreach_ms: float
    fastest_path: str  # "fused=True" or "foreach=True": torch's faster path in this run
    ratio: float  # ours / torch's fastest
    goal_path: str  # what the goal compares against
    goal: float
    goal_ratio: float  # ours / the goal's path
    compile_s: float | None = None  # first fused step of this method (trace + compile)
    gbps: float | None = None
    copy_gbps: float | None = None
    bytes_per_param: int | None = None
    extra_peak_bytes: int | None = None


def bytes_per_param(opt: Any, itemsize: int) -> int:
    """Bytes a step moves per parameter: param r+w, grad r, each tensor state r+w."""
    group = opt.param_groups[0]
    states = [e for e in opt._state_spec(group) if e.kind != "scalar"]
    return (3 + 2 * len(states)) * itemsize


def rotated(items: list[Any], round_index: int) -> list[Any]:
    """``items`` in a different order every round: each takes every position in turn."""
    k = round_index % len(items)
    order = items[k:] + items[:k]
    return order if round_index % 2 == 0 else order[::-1]


def finish_row(method: str, params: str, shapes: list[Any], dtype: str, threads: int,
               times: dict[str, float]) -> FusedRow:
    """A row from the median step times ``times`` ("ours", "fused", "foreach"; ms)."""
    fused_ms, foreach_ms = times.get("fused"), times["foreach"]
    fastest = "fused" if fused_ms is not None and fused_ms < foreach_ms else "foreach"
    goal_path = "fused" if method in TORCH_FUSED and fused_ms is not None else "foreach"
    goal = GOAL_VS_FUSED if goal_path == "fused" else GOAL_VS_FOREACH
    return FusedRow(
        method, params, sum(torch.Size(s).numel() for s in shapes), len(shapes), dtype, threads,
        round(times["ours"], 4), None if fused_ms is None else round(fused_ms, 4),
        round(foreach_ms, 4), f"{fastest}=True", round(times["ours"] / times[fastest], 3),
        f"{goal_path}=True", goal, round(times["ours"] / times[goal_path], 3),
    )


def compare_cpu(method: str, set_name: str, threads: int, repeats: int, steps: int,
                warmup: int) -> FusedRow:
    our_cls, torch_cls, kwargs = COUNTERPARTS[method]
    shapes = PARAM_SETS[set_name]()
    from torchopt_survey.optim.core import kernel_cache

    torch.set_num_threads(threads)
    logged = len(kernel_cache.COMPILE_LOG)
    opts = {"ours": our_cls(make_params(shapes, "cpu", torch.float32, 0), **kwargs, fused=True)}
    start = time.perf_counter()
    opts["ours"].step()
    first = time.perf_counter() - start
    compiled = any(not disk for _, _, disk in kernel_cache.COMPILE_LOG[logged:])
    opts["foreach"] = torch_cls(make_params(shapes, "cpu", torch.float32, 0), **kwargs,
                                foreach=True)
    if method in TORCH_FUSED:
        opts["fused"] = torch_cls(make_params(shapes, "cpu", torch.float32, 0), **kwargs,
                                  fused=True)
    for _ in range(warmup):
        for opt in opts.values():
            opt.step()
    samples: dict[str, list[float]] = {name: [] for name in opts}
    for round_index in range(repeats):
        for name in rotated(list(opts), round_index):
            samples[name].append(time_steps(opts[name], steps, "cpu"))
    times = {name: statistics.median(v) * 1e3 for name, v in samples.items()}
    row = finish_row(method, set_name, shapes, "float32", threads, times)
    row.compile_s = round(first, 3) if compiled else None
    return row


def run_cpu(args: argparse.Namespace) -> list[FusedRow]:
    rows = []
    for threads in args.threads:
        for set_name in args.params:
            steps = args.steps or {"mlp": 20, "small": 200}.get(set_name, 3)
            for method in args.methods:
                row = compare_cpu(method, set_name, threads, args.repeats, steps, args.warmup)
                rows.append(row)
                fused = "    -   " if row.torch_fused_ms is None else f"{row.torch_fused_ms:8.3f}"
                print(f"  {threads}T {method:<9} {set_name:<4} ours {row.ours_ms:8.3f} ms  torch "
                      f"fused {fused} foreach {row.torch_foreach_ms:8.3f}  {row.ratio:5.2f}x",
                      file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------
def cuda_median_ms(fn: Any, iters: int) -> float:
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth_gbps(nbytes: int) -> float:
    """Device-to-device copy bandwidth: bytes read + written per second."""
    n = max(1 << 20, nbytes // 4)
    src = torch.empty(n, dtype=torch.float32, device="cuda").fill_(1.0)
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), 20)
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def cuda_row(method: str, total: int, dtype: torch.dtype, iters: int) -> FusedRow:
    our_cls, torch_cls, kwargs = COUNTERPARTS[method]
    shapes = many_tensor_shapes(200, total)
    opts: dict[str, Any] = {
        "ours": our_cls(make_params(shapes, "cuda", dtype, 0), **kwargs, fused=True),
        "foreach": torch_cls(make_params(shapes, "cuda", dtype, 0), **kwargs, foreach=True),
    }
    if method in TORCH_FUSED:
        try:  # (not every torch fused kernel exists on CUDA, e.g. Adagrad)
            candidate = torch_cls(make_params(shapes, "cuda", dtype, 0), **kwargs, fused=True)
            candidate.step()
            opts["fused"] = candidate
        except (RuntimeError, ValueError):
            pass
    for _ in range(3):
        for opt in opts.values():
            opt.step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    opts["ours"].step()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    samples: dict[str, list[float]] = {name: [] for name in opts}
    for round_index in range(iters):  # one loop, rotating order, as on CPU
        for name in rotated(list(opts), round_index):
            samples[name].append(cuda_median_ms(opts[name].step, 1))
    times = {name: statistics.median(v) for name, v in samples.items()}
    bpp = bytes_per_param(opts["ours"], torch.finfo(dtype).bits // 8)
    del opts
    torch.cuda.empty_cache()
    row = finish_row(method, f"{total // 1_000_000}M", shapes, str(dtype).replace("torch.", ""),
                     torch.get_num_threads(), times)
    row.gbps = round(total * bpp / (times["ours"] * 1e-3) / 1e9, 1)
    row.bytes_per_param = bpp
    row.extra_peak_bytes = int(extra)
    return row


def run_cuda(args: argparse.Namespace) -> list[FusedRow]:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    rows = []
    for total in args.sizes:
        copy_gbps = copy_bandwidth_gbps(total * 4)
        for dtype in (torch.float32, torch.bfloat16):
            for method in args.methods:
                try:
                    row = cuda_row(method, total, dtype, args.repeats)
                except torch.cuda.OutOfMemoryError:
                    print(f"  {method} {total}: out of memory, skipped", file=sys.stderr)
                    torch.cuda.empty_cache()
                    continue
                row.copy_gbps = round(copy_gbps, 1)
                rows.append(row)
                print(f"  {method:<9} {row.params:<6} {row.dtype:<8} ours {row.ours_ms:8.3f} ms "
                      f"({row.gbps} GB/s of {row.copy_gbps}) {row.ratio:5.2f}x torch's fastest",
                      file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[FusedRow], device: str, file: Any = sys.stdout) -> None:
    print("| threads | method | params | ours ms | torch fused ms | torch foreach ms | "
          "ours / torch's fastest | goal | met | compile s |", file=file)
    print("|---:|---|---|---:|---:|---:|---:|---|---|---:|", file=file)
    for r in rows:
        fused = "–" if r.torch_fused_ms is None else f"{r.torch_fused_ms:.3f}"
        goal = f"{r.goal_ratio:.2f} vs {r.goal_path.split('=')[0]} (<= {r.goal:.2f})"
        met = "yes" if r.goal_ratio <= r.goal else "no"
        comp = "" if r.compile_s is None else f"{r.compile_s:.2f}"
        label = r.params if device == "cpu" else f"{r.params} {r.dtype}"
        print(f"| {r.threads} | {r.method} | {label} | {r.ours_ms:.3f} | {fused} | "
              f"{r.torch_foreach_ms:.3f} | {r.ratio:.2f} ({r.fastest_path.split('=')[0]}) | "
              f"{goal} | {met} | {comp} |", file=file)
    if device != "cpu":
        print("\n| method | params | GB/s | % of copy | extra peak MB |\n|---|---|---:|---:|---:|",
              file=file)
        for r in rows:
            pct = 100 * (r.gbps or 0) / (r.copy_gbps or 1)
            print(f"| {r.method} | {r.params} {r.dtype} | {r.gbps} | {pct:.0f} % | "
                  f"{(r.extra_peak_bytes or 0) / 2**20:.1f} |", file=file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--methods", nargs="+", default=list(COUNTERPARTS), choices=COUNTERPARTS,
                        metavar="METHOD")
    parser.add_argument("--params", nargs="+", default=["mlp", "10m"], choices=PARAM_SETS,
                        help="CPU parameter sets")
    parser.add_argument("--sizes", nargs="+", type=int,
                        default=[1_000_000, 10_000_000, 100_000_000, 1_000_000_000],
                        help="CUDA: total parameters of the 200 tensors")
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="CPU: torch thread counts to sweep (each pinned in turn)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--steps", type=int, default=0,
                        help="CPU steps per round (default: 20 for mlp, 3 for 10m)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--keep-cache", action="store_true",
                        help="reuse the kernel cache (default: an empty one, to time compiles)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads[0])
    if not args.keep_cache:
        os.environ["TORCHOPT_SURVEY_CACHE_DIR"] = tempfile.mkdtemp(prefix="torchopt_fused_")
    rows = run_cpu(args) if args.device == "cpu" else run_cuda(args)
    threads = ", ".join(map(str, args.threads))
    print(f"fused step time, {args.device}, threads {threads}, torch {torch.__version__}")
    print_table(rows, args.device)
    if args.json:
        env = environment(args.threads[0], args.device)
        env["threads"] = args.threads  # (the sweep; each row says its own)
        write_json(args.json, "fused", env, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
