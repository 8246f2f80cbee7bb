"""Fused step time: ``fused=True`` of torchopt_survey vs torch's fastest path, in one run.

    python benchmarks/bench_fused.py                         # CPU, 1 thread (pinned)
    python benchmarks/bench_fused.py --device cuda --json benchmarks/results/fused-cuda.json

CPU (the issue's goals): per method, our fused step against torch's fastest CPU path for the
counterpart -- ``fused=True`` where torch has a fused kernel (SGD/Momentum/NAG, Adagrad,
Adam/AdamW/AMSGrad), ``foreach=True`` otherwise -- on the MLP's parameters and on 200 tensors /
10M parameters; the optimizer's share of a whole batch-64 MLP training step (data in memory);
and the one-off cost of generating and compiling the kernels (measured in an empty cache dir).

CUDA: 200 tensors of 1M/10M/100M/1B parameters (fp32 and bf16): median step time (CUDA
events), achieved GB/s from a bytes-moved model (param read+write, grad read, every state
read+write: Adam fp32 = 28 bytes/param), the device copy bandwidth measured in the same run,
the ratio against torch (fused or foreach as above) and the extra peak memory of a step.

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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optim import (  # noqa: E402
    COUNTERPARTS,
    PARAM_SETS,
    environment,
    make_params,
    many_tensor_shapes,
    time_steps,
    write_json,
)

#: methods torch has a fused CPU/CUDA kernel for (its counterpart runs fused=True)
TORCH_FUSED = {"SGD", "Momentum", "NAG", "Adagrad", "Adam", "AdamW", "AMSGrad"}


def torch_flags(method: str) -> dict[str, Any]:
    return {"fused": True} if method in TORCH_FUSED else {"foreach": True}


@dataclass
class FusedRow:
    method: str
    params: str
    numel: int
    tensors: int
    dtype: str
    torch_path: str
    ours_ms: float
    torch_ms: float
    ratio: float
    goal: float  # 1.00 against torch fused, 0.50 against torch foreach
    compile_s: float | None = None  # first fused step of this method (trace + compile)
    train_step_ms: float | None = None  # whole batch-64 MLP step with our fused optimizer
    share: float | None = None  # optimizer step / training step
    gbps: float | None = None
    copy_gbps: float | None = None
    bytes_per_param: int | None = None
    extra_peak_bytes: int | None = None


def bytes_per_param(opt: Any, itemsize: int) -> int:
    """Bytes a step moves per parameter: param r+w, grad r, each tensor state r+w."""
    group = opt.param_groups[0]
    states = [e for e in opt._state_spec(group) if e.kind != "scalar"]
    return (3 + 2 * len(states)) * itemsize


def compare_cpu(method: str, set_name: str, repeats: int, steps: int, warmup: int) -> FusedRow:
    our_cls, torch_cls, kwargs = COUNTERPARTS[method]
    shapes = PARAM_SETS[set_name]()
    from torchopt_survey.optim.core import emit_c as _codegen_c

    logged = len(_codegen_c.COMPILE_LOG)
    ours_opt = our_cls(make_params(shapes, "cpu", torch.float32, 0), **kwargs, fused=True)
    start = time.perf_counter()
    ours_opt.step()
    first = time.perf_counter() - start
    compiled = any(not disk for _, _, disk in _codegen_c.COMPILE_LOG[logged:])
    flags = torch_flags(method)
    torch_opt = torch_cls(make_params(shapes, "cpu", torch.float32, 0), **kwargs, **flags)
    for _ in range(warmup):
        ours_opt.step()
        torch_opt.step()
    ours_t, torch_t = [], []
    for _ in range(repeats):  # alternate, so machine drift affects both alike
        ours_t.append(time_steps(ours_opt, steps, "cpu"))
        torch_t.append(time_steps(torch_opt, steps, "cpu"))
    ours_ms = statistics.median(ours_t) * 1e3
    torch_ms = statistics.median(torch_t) * 1e3
    return FusedRow(
        method, set_name, sum(torch.Size(s).numel() for s in shapes), len(shapes), "float32",
        ",".join(f"{k}={v}" for k, v in flags.items()), round(ours_ms, 4), round(torch_ms, 4),
        round(ours_ms / torch_ms, 3), 1.0 if "fused" in flags else 0.5,
        compile_s=round(first, 3) if compiled else None,
    )


def mlp_train_step_ms(method: str, repeats: int, steps: int) -> float:
    """Median time of a whole batch-64 step of the 784-500-10 MLP with our fused optimizer."""
    our_cls, _, kwargs = COUNTERPARTS[method]
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 500), torch.nn.ReLU(),
                                torch.nn.Linear(500, 10))
    opt = our_cls(model.parameters(), **kwargs, fused=True)
    x = torch.randn(64, 784, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(5):
        train_step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            train_step()
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times) * 1e3


def run_cpu(args: argparse.Namespace) -> list[FusedRow]:
    rows = []
    for set_name in args.params:
        steps = args.steps or (20 if set_name == "mlp" else 3)
        for method in args.methods:
            row = compare_cpu(method, set_name, args.repeats, steps, args.warmup)
            if set_name == "mlp":
                row.train_step_ms = round(mlp_train_step_ms(method, args.repeats, 20), 4)
                row.share = round(row.ours_ms / row.train_step_ms, 3)
            rows.append(row)
            print(f"  {method:<9} {set_name:<4} ours {row.ours_ms:8.3f} ms  torch "
                  f"{row.torch_ms:8.3f} ms  {row.ratio:5.2f}x", file=sys.stderr, flush=True)
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
    flags = torch_flags(method)
    results = {}
    extra = 0
    opt: Any = None
    for which, cls, extra_flags in (("ours", our_cls, {"fused": True}),
                                    ("torch", torch_cls, flags)):
        params = make_params(shapes, "cuda", dtype, 0)
        opt = cls(params, **kwargs, **extra_flags)
        for _ in range(3):
            opt.step()
        torch.cuda.synchronize()
        if which == "ours":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            opt.step()
            torch.cuda.synchronize()
            extra = torch.cuda.max_memory_allocated() - before
        results[which] = cuda_median_ms(opt.step, iters)
        if which == "ours":
            bpp = bytes_per_param(opt, torch.finfo(dtype).bits // 8)
        del params, opt
        torch.cuda.empty_cache()
    ours_ms, torch_ms = results["ours"], results["torch"]
    gbps = total * bpp / (ours_ms * 1e-3) / 1e9
    return FusedRow(
        method, f"{total // 1_000_000}M", total, len(shapes), str(dtype).replace("torch.", ""),
        ",".join(f"{k}={v}" for k, v in flags.items()), round(ours_ms, 4), round(torch_ms, 4),
        round(ours_ms / torch_ms, 3), 1.0 if "fused" in flags else 0.5, gbps=round(gbps, 1),
        bytes_per_param=bpp, extra_peak_bytes=int(extra),
    )


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
                      f"({row.gbps} GB/s of {row.copy_gbps}) torch {row.torch_ms:8.3f} ms",
                      file=sys.stderr, flush=True)
    return rows


def print_table(rows: list[FusedRow], device: str, file: Any = sys.stdout) -> None:
    if device == "cpu":
        print("| method | params | torch path | ours ms | torch ms | ours/torch | goal | "
              "share of MLP train step | compile s |", file=file)
        print("|---|---|---|---:|---:|---:|---:|---:|---:|", file=file)
        for r in rows:
            share = "" if r.share is None else f"{100 * r.share:.1f} % of {r.train_step_ms:.2f} ms"
            comp = "" if r.compile_s is None else f"{r.compile_s:.2f}"
            print(f"| {r.method} | {r.params} | {r.torch_path} | {r.ours_ms:.3f} | "
                  f"{r.torch_ms:.3f} | {r.ratio:.2f} | <= {r.goal:.2f} | {share} | {comp} |",
                  file=file)
        return
    print("| method | params | dtype | torch path | ours ms | torch ms | ours/torch | GB/s | "
          "% of copy | extra peak MB |", file=file)
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|", file=file)
    for r in rows:
        pct = 100 * (r.gbps or 0) / (r.copy_gbps or 1)
        print(f"| {r.method} | {r.params} | {r.dtype} | {r.torch_path} | {r.ours_ms:.3f} | "
              f"{r.torch_ms:.3f} | {r.ratio:.2f} | {r.gbps} | {pct:.0f} % | "
              f"{(r.extra_peak_bytes or 0) / 2**20:.1f} |", file=file)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--methods", nargs="+", default=list(COUNTERPARTS), choices=COUNTERPARTS,
                        metavar="METHOD")
    parser.add_argument("--params", nargs="+", default=list(PARAM_SETS), choices=PARAM_SETS,
                        help="CPU parameter sets")
    parser.add_argument("--sizes", nargs="+", type=int,
                        default=[1_000_000, 10_000_000, 100_000_000, 1_000_000_000],
                        help="CUDA: total parameters of the 200 tensors")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (pinned)")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--steps", type=int, default=0,
                        help="CPU steps per round (default: 20 for mlp, 3 for 10m)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--keep-cache", action="store_true",
                        help="reuse the kernel cache (default: an empty one, to time compiles)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.keep_cache:
        os.environ["TORCHOPT_SURVEY_CACHE_DIR"] = tempfile.mkdtemp(prefix="torchopt_fused_")
    rows = run_cpu(args) if args.device == "cpu" else run_cuda(args)
    print(f"fused step time, {args.device}, {args.threads} thread(s), torch {torch.__version__}")
    print_table(rows, args.device)
    if args.json:
        write_json(args.json, "fused", environment(args.threads, args.device), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
