"""Memory and time of a training step: compact optimizer state and the step inside backward.

    python benchmarks/bench_memory.py --json benchmarks/results/memory-cpu.json

One run, every setting on the same model (a deep MLP of equal square layers, so no single
gradient dominates) and the same batches, AdamW throughout:

* ``torch.optim.AdamW`` (foreach and fused), ours in fp32 (foreach and fused), ours with
  ``state_dtype="bfloat16"`` and ``"int8"`` (foreach and fused paths), ours stepping inside
  backward (fused, fp32 and int8), and -- where they install and run on this device --
  torchao's low-bit AdamW (8-bit, 4-bit, fp8) and bitsandbytes' ``AdamW8bit``.

Measured per setting:

* **peak**: the most bytes held by tensors during one training step (zero_grad, forward,
  backward, step), CPU: the persistent bytes at the step's start (parameters and optimizer
  state, summed from the tensors, gradients freed) plus the largest rise of the CPU
  allocator's running total during the step, integrated from ``torch.profiler``'s memory
  events (every allocation and free of the CPU allocator, in order: ``profile_memory=True``).
  CUDA: ``torch.cuda.max_memory_allocated`` over the step, from the same start. (CPU: the
  profiler cannot size frees of blocks allocated before it started, so two steps run under
  it and the second is measured);
* **state**: bytes of optimizer state (codes and scales counted; tensor subclasses by their
  inner tensors);
* **iteration** and **step** times: medians over ``--steps`` iterations, every setting timed
  in one loop whose order rotates each round (the machine may be shared: ratios between
  settings of one run are what to read). ``step`` is ``optimizer.step()`` alone (for the
  in-backward settings the update is inside backward and this is not separable).

Goals checked (issue #21): in-backward peak lower than the ordinary fused loop's by >= 90 % of
the gradient bytes and its iteration within 5 % of it (reported beside the ceiling of that
saving: a step inside backward must still hold one layer's gradient while the forward
activations are alive, which the ordinary loop has freed by the time it holds every gradient,
so at most ``1 - (largest layer's gradient + activations) / gradient bytes`` can go); int8
state <= 0.27x and bf16 <= 0.5x of fp32 state bytes; the fused int8 step <= 1.1x the fused
fp32 step.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from bench_optim import environment  # noqa: E402

import torchopt_survey.optim as O  # noqa: E402

LR, WEIGHT_DECAY = 1e-3, 1e-2


@dataclass
class Setting:
    name: str
    make: Callable[[torch.nn.Module], Any]  # optimizer (and hooks) for a fresh model
    in_backward: bool = False


@dataclass
class Row:
    setting: str
    peak_bytes: int
    state_bytes: int
    grad_bytes: int
    param_bytes: int
    iteration_s: float
    step_s: float | None
    note: str = ""
    per_element_state_bytes: int = 0


def model_for(width: int, depth: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers)


def tensor_bytes(value: Any) -> int:
    """Bytes a tensor holds; a wrapper subclass (torchao's state) by its inner tensors."""
    if not isinstance(value, torch.Tensor):
        return 0
    flatten = getattr(value, "__tensor_flatten__", None)
    if flatten is not None and type(value) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = flatten()
        return sum(tensor_bytes(getattr(value, name)) for name in names)
    return value.numel() * value.element_size()


def state_bytes(optimizer: Any, per_element: bool = False) -> int:
    """All state bytes, or only per-element state (without 0-d scalars such as ``step``)."""
    return sum(tensor_bytes(v) for state in optimizer.state.values() for v in state.values()
               if not per_element or isinstance(v, torch.Tensor) and v.dim())


def activation_bytes(model: torch.nn.Module, inputs: torch.Tensor) -> int:
    """Bytes of the tensors a forward pass saves for backward and allocates itself (each
    storage once; parameters and the batch, which exist before the step, left out)."""
    existing = {p.untyped_storage().data_ptr() for p in model.parameters()}
    existing.add(inputs.untyped_storage().data_ptr())
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in existing:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(inputs)
    return sum(saved.values())


def largest_layer_grad_bytes(model: torch.nn.Module) -> int:
    """The gradient bytes of the module whose own parameters are largest (a Linear's weight and
    bias gradients come out of one backward node, so both can exist at once)."""
    return max((sum(tensor_bytes(p) for p in module.parameters(recurse=False))
                for module in model.modules()), default=0)


def settings(device: str) -> list[Setting]:
    def ours(**flags: Any) -> Callable[[torch.nn.Module], Any]:
        return lambda model: O.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY,
                                     **flags)

    def in_backward(**flags: Any) -> Callable[[torch.nn.Module], Any]:
        def make(model: torch.nn.Module) -> Any:
            optimizer = ours(**flags)(model)
            optimizer.step_in_backward(model)
            return optimizer
        return make

    def torch_adamw(**flags: Any) -> Callable[[torch.nn.Module], Any]:
        return lambda model: torch.optim.AdamW(model.parameters(), lr=LR,
                                               weight_decay=WEIGHT_DECAY, **flags)

    found = [
        Setting("torch AdamW foreach", torch_adamw(foreach=True)),
        Setting("torch AdamW fused", torch_adamw(fused=True)),
        Setting("ours fp32 foreach", ours(foreach=True)),
        Setting("ours fp32 fused", ours(fused=True)),
        Setting("ours bf16 foreach", ours(foreach=True, state_dtype="bfloat16")),
        Setting("ours bf16 fused", ours(fused=True, state_dtype="bfloat16")),
        Setting("ours int8 foreach", ours(foreach=True, state_dtype="int8")),
        Setting("ours int8 fused", ours(fused=True, state_dtype="int8")),
        Setting("ours in-backward fp32 fused", in_backward(fused=True), in_backward=True),
        Setting("ours in-backward int8 fused", in_backward(fused=True, state_dtype="int8"),
                in_backward=True),
    ]
    try:
        from torchao.optim import AdamW4bit, AdamW8bit, AdamWFp8

        for label, cls in (("8bit", AdamW8bit), ("4bit", AdamW4bit), ("fp8", AdamWFp8)):
            found.append(Setting(
                f"torchao AdamW{label}",
                lambda model, cls=cls: cls(model.parameters(), lr=LR,
                                           weight_decay=WEIGHT_DECAY)))
    except ImportError as error:
        print(f"torchao: not available ({error})")
    try:
        import bitsandbytes

        found.append(Setting(
            "bitsandbytes AdamW8bit",
            lambda model: bitsandbytes.optim.AdamW8bit(model.parameters(), lr=LR,
                                                       weight_decay=WEIGHT_DECAY)))
    except ImportError as error:
        print(f"bitsandbytes: not available ({error})")
    return found


def train_step(model: torch.nn.Module, optimizer: Any, batch: tuple[Any, Any],
               in_backward: bool, zero_grad: bool = True) -> None:
    if zero_grad:
        optimizer.zero_grad(set_to_none=True)
    inputs, targets = batch
    torch.nn.functional.mse_loss(model(inputs), targets).backward()
    if not in_backward:
        optimizer.step()


def peak_rise_cpu(fn: Callable[[], None], between: Callable[[], None]) -> int:
    """The largest rise of the CPU allocator's running total during a call of ``fn`` (bytes).

    The profiler cannot size the free of a block allocated before it started, so ``fn`` runs
    twice under it (``between`` the two: zero_grad) and the second call is measured: what it
    frees (replaced state tensors) was allocated under the profiler and is counted.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
        between()
        with record_function("measured call"):
            fn()
    events = list(prof.profiler.kineto_results.events())
    marker = next(e for e in events if e.name() == "measured call")
    memory = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())
    running = 0
    baseline = peak = None
    for event in memory:
        if baseline is None and event.start_ns() >= marker.start_ns():
            baseline = peak = running
        running += event.nbytes()
        if baseline is not None and event.start_ns() <= marker.end_ns():
            peak = max(peak, running)
    return 0 if baseline is None else peak - baseline


def peak_rise(fn: Callable[[], None], between: Callable[[], None], device: str) -> int:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    return peak_rise_cpu(fn, between)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(args: argparse.Namespace) -> tuple[list[Row], dict[str, int]]:
    device = args.device
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, args.width, generator=generator).to(device),
                torch.randn(args.batch, args.width, generator=generator).to(device))
               for _ in range(4)]
    runs: list[tuple[Setting, torch.nn.Module, Any, str]] = []
    for setting in settings(device):
        if args.only and not any(word in setting.name for word in args.only):
            continue
        model = model_for(args.width, args.depth).to(device)
        try:
            optimizer = setting.make(model)
            for step in range(args.warmup):  # state created, kernels compiled
                train_step(model, optimizer, batches[step % 4], setting.in_backward)
            synchronize(device)
        except Exception as error:  # noqa: BLE001 -- a third-party optimizer may not run here
            print(f"{setting.name}: skipped ({type(error).__name__}: {error})"[:300])
            continue
        runs.append((setting, model, optimizer, ""))

    probe = model_for(args.width, args.depth).to(device)
    held = {"activation_bytes": activation_bytes(probe, batches[0][0]),
            "largest_layer_grad_bytes": largest_layer_grad_bytes(probe)}
    rows: dict[str, Row] = {}
    for setting, model, optimizer, note in runs:
        param_bytes = sum(tensor_bytes(p) for p in model.parameters())
        optimizer.zero_grad(set_to_none=True)
        persistent = param_bytes + state_bytes(optimizer)
        # (gradients freed before the measured step, as they are in ``persistent``)
        rise = peak_rise(functools.partial(train_step, model, optimizer, batches[0],
                                           setting.in_backward, zero_grad=False),
                         functools.partial(optimizer.zero_grad, set_to_none=True), device)
        rows[setting.name] = Row(setting.name, persistent + rise, state_bytes(optimizer),
                                 param_bytes, param_bytes, 0.0, None, note,
                                 state_bytes(optimizer, per_element=True))

    iteration: dict[str, list[float]] = {s.name: [] for s, *_ in runs}
    step: dict[str, list[float]] = {s.name: [] for s, *_ in runs}
    for round_index in range(args.steps):
        shift = round_index % len(runs)
        for setting, model, optimizer, _ in runs[shift:] + runs[:shift]:
            batch = batches[round_index % 4]
            synchronize(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(batch[0]), batch[1]).backward()
            synchronize(device)
            middle = time.perf_counter()
            if not setting.in_backward:
                optimizer.step()
                synchronize(device)
            end = time.perf_counter()
            iteration[setting.name].append(end - start)
            if not setting.in_backward:
                step[setting.name].append(end - middle)
    for name, row in rows.items():
        row.iteration_s = statistics.median(iteration[name])
        row.step_s = statistics.median(step[name]) if step[name] else None
    return list(rows.values()), held


@dataclass
class ShapeRow:
    depth: int
    batch: int
    grad_bytes: int
    saving: float  # (ordinary fused peak - in-backward peak) / gradient bytes
    ceiling: float  # 1 - (largest layer's gradient + activations) / gradient bytes
    at_ceiling: bool
    goal_met: bool  # saving >= 0.9


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"16x32,32x32"`` -> [(depth, batch), ...]; ValueError naming the bad item."""
    shapes = []
    for item in text.split(","):
        depth, sep, batch = item.strip().partition("x")
        if not sep or not depth.isdigit() or not batch.isdigit() or not int(depth) or not int(
                batch):
            raise ValueError(f"--shapes: {item!r} is not DEPTHxBATCH with both >= 1")
        shapes.append((int(depth), int(batch)))
    return shapes


def measure_shapes(args: argparse.Namespace, shapes: list[tuple[int, int]]) -> list[ShapeRow]:
    """The in-backward peak saving and its ceiling for each (depth, batch) of the MLP."""
    found = []
    for depth, batch in shapes:
        shape_args = argparse.Namespace(**{**vars(args), "depth": depth, "batch": batch,
                                           "steps": 1,
                                           "only": ["ours fp32 fused",
                                                    "ours in-backward fp32 fused"]})
        rows, held = measure(shape_args)
        checked = goals(rows, held)
        saving = checked["in_backward_peak_saving_of_grad_bytes"]
        ceiling = checked["in_backward_peak_saving_ceiling"]
        found.append(ShapeRow(depth, batch, rows[0].grad_bytes, saving, ceiling,
                              checked["in_backward_peak_at_ceiling"], saving >= 0.9))
        print(f"depth {depth:3d} batch {batch:4d}: saving {saving:.3f} of the gradient bytes, "
              f"ceiling {ceiling:.3f}")
    return found


def goals(rows: list[Row], held: dict[str, int] | None = None) -> dict[str, Any]:
    by = {row.setting: row for row in rows}
    out: dict[str, Any] = {}

    def ratio(a: str, b: str, field: str) -> float | None:
        if a in by and b in by and getattr(by[b], field):
            return getattr(by[a], field) / getattr(by[b], field)
        return None

    base, inbwd = by.get("ours fp32 fused"), by.get("ours in-backward fp32 fused")
    if base and inbwd:
        saved = (base.peak_bytes - inbwd.peak_bytes) / base.grad_bytes
        out["in_backward_peak_saving_of_grad_bytes"] = saved
        out["in_backward_peak_goal_met"] = saved >= 0.9
        if held:
            ceiling = 1 - (held["largest_layer_grad_bytes"] + held["activation_bytes"]) \
                / base.grad_bytes
            out["in_backward_peak_saving_ceiling"] = ceiling
            # (within 0.5 % of the gradient bytes: allocator rounding, the loss's scalars)
            out["in_backward_peak_at_ceiling"] = saved >= ceiling - 0.005
        out["in_backward_iteration_vs_fused"] = inbwd.iteration_s / base.iteration_s
        out["in_backward_iteration_goal_met"] = out["in_backward_iteration_vs_fused"] <= 1.05
    # (int8: every state byte, scales and step counts included; bf16: the per-element
    # state -- a 0-d step count is 4 bytes in both)
    for dtype, bound, field in (("int8", 0.27, "state_bytes"),
                                ("bf16", 0.5, "per_element_state_bytes")):
        value = ratio(f"ours {dtype} foreach", "ours fp32 foreach", field)
        out[f"{dtype}_state_bytes_vs_fp32"] = value
        out[f"{dtype}_state_goal_met"] = value is not None and value <= bound
    value = ratio("ours int8 fused", "ours fp32 fused", "step_s")
    out["int8_fused_step_vs_fp32_fused"] = value
    out["int8_fused_step_goal_met"] = value is not None and value <= 1.1
    return out


def print_table(rows: list[Row]) -> None:
    mib = 1 << 20
    print(f"{'setting':<30} {'peak MiB':>9} {'state MiB':>10} {'iter ms':>8} {'step ms':>8}")
    for row in rows:
        step = f"{row.step_s * 1e3:8.2f}" if row.step_s is not None else f"{'(in bwd)':>8}"
        print(f"{row.setting:<30} {row.peak_bytes / mib:9.1f} {row.state_bytes / mib:10.2f} "
              f"{row.iteration_s * 1e3:8.2f} {step}")


def write_shapes(args: argparse.Namespace, found: list[ShapeRow]) -> int:
    possible = [row for row in found if row.ceiling >= 0.9]
    checked = {
        "shapes_at_ceiling": sum(row.at_ceiling for row in found),
        "shapes_ceiling_allows_goal": len(possible),
        "shapes_goal_met": sum(row.goal_met for row in found),
        "goal_met_wherever_ceiling_allows": all(row.goal_met for row in possible),
        "every_shape_at_ceiling": all(row.at_ceiling for row in found),
    }
    for key, value in checked.items():
        print(f"{key}: {value}")
    if args.json:
        folder = os.path.dirname(args.json)
        if folder:
            os.makedirs(folder, exist_ok=True)
        env = environment(args.threads, args.device)
        env.update(width=args.width, shapes=args.shapes)
        with open(args.json, "w") as handle:
            json.dump({"mode": "memory-in-backward-shapes", "environment": env,
                       "rows": [asdict(r) for r in found], "goals": checked}, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=None, metavar="WORD",
                        help="run only the settings whose name contains one of these")
    parser.add_argument("--json", default=None, help="write the rows and goals here")
    parser.add_argument("--shapes", default=None, metavar="DEPTHxBATCH,...",
                        help="instead: the in-backward peak saving and its ceiling for each of "
                             "these MLP shapes (e.g. 8x32,16x32,32x32,16x8)")
    args = parser.parse_args(argv)
    for name, value in (("width", args.width), ("depth", args.depth), ("batch", args.batch),
                        ("steps", args.steps), ("threads", args.threads)):
        if value < 1:
            print(f"--{name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)
    if args.shapes is not None:
        try:
            shapes = parse_shapes(args.shapes)
        except ValueError as error:
            print(error, file=sys.stderr)
            return 2
        return write_shapes(args, measure_shapes(args, shapes))
    rows, held = measure(args)
    print_table(rows)
    checked = goals(rows, held)
    for key, value in checked.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        folder = os.path.dirname(args.json)
        if folder:
            os.makedirs(folder, exist_ok=True)
        env = environment(args.threads, args.device)
        env.update(width=args.width, depth=args.depth, batch=args.batch, steps=args.steps, **held,
                   peak_method=("torch.profiler CPU memory events (allocator running total)"
                                if args.device == "cpu" else "torch.cuda.max_memory_allocated"))
        with open(args.json, "w") as handle:
            json.dump({"mode": "memory", "environment": env,
                       "rows": [asdict(r) for r in rows], "goals": checked}, handle, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
