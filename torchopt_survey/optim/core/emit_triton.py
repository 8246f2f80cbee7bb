"""CUDA fused kernels: a traced update (see ``tracing``) emitted as one multi-tensor Triton kernel.

One launch updates every tensor of a (device, dtype layout) group. The grid is a list of chunks
(``BLOCK * ITERS`` elements each); each program finds its tensor and offset in two small device
tables and its tensors' addresses in a pointer table (param, grad, every state), loads in each
tensor's own dtype, computes in float32 (float64 for float64 parameters) and stores back.

Scalars: float hyperparameters come in one float64 device buffer (re-uploaded only when their
values change), tensor hyperparameters (a tensor ``lr``) are read through their own pointer at
run time, and the per-step scalars (bias corrections, NAdam's schedule) are computed in float64
inside every program from the stored ``step``. So the kernel reads no host value, never
recompiles for new values, and can be captured in a CUDA graph: a scheduler that changes a
tensor ``lr`` in place changes what the replayed kernel reads.

Scalar state (``step``, ``mu_product``) is updated once per tensor by the last program to finish
that tensor: each program counts itself done with an atomic add on a per-tensor counter, and the
one that completes the count writes the new scalars and resets the counter. Programs read the old
``step`` before they count, so no program sees a half-updated step -- still a single launch.

AMP: with ``grad_scale`` the gradient is divided inside the kernel and stored back unscaled (as
torch's fused optimizers do); with ``found_inf`` nonzero every load/store is masked off and the
scalar update skipped, so nothing changes.

The generated module is written to the cache directory and imported from there, because
``@triton.jit`` reads a kernel's source from its file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import time
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

from .emit_c import COMPILE_LOG, cache_dir
from .tracing import Traced, _is_ref

#: elements per program and loop: one program covers ``BLOCK * ITERS`` elements of one tensor
BLOCK = 1024
ITERS = 4
NUM_WARPS = 4

_TL_TYPES = {
    torch.float32: "tl.float32",
    torch.float64: "tl.float64",
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
}

_TENSOR_OPS = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "tl.div_rn({0}, {1})",
    "neg": "-{0}",
    "abs": "tl.abs({0})",
    "sqrt": "tl.sqrt_rn({0})",
    "max": "tl.where(({0} > {1}) | ({0} != {0}), {0}, {1})",
}
#: float64 arithmetic is correctly rounded as written (the _rn forms are float32-only)
_WIDE_OPS = {"div": "{0} / {1}", "sqrt": "tl.sqrt({0})"}
_SCALAR_OPS = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
}


def emit_triton(
    traced: Traced,
    dtypes: tuple[Any, ...],
    tensor_hp: tuple[Any, ...],
    has_grad_scale: bool,
    has_found_inf: bool,
) -> str:
    """Python/Triton source of the fused kernel for one layout.

    ``dtypes``: one per slot (param, grad, each state; ``None`` for an absent lazy state).
    ``tensor_hp``: one per hyperparameter leaf, the dtype of a tensor value or ``None`` (float,
    read from the float64 buffer).
    """
    graph = traced.graph
    live = graph.live()
    wide = any(d == torch.float64 for d in dtypes[:2] if d is not None)
    ct = "tl.float64" if wide else "tl.float32"
    slot_of = {"param": 0, "grad": 1}
    kinds = {"param": "tensor"}
    for index, (name, kind, _present) in enumerate(traced.slots):
        slot_of[name] = 2 + index
        kinds[name] = kind
    hp_index = {ref: j for j, ref in enumerate(graph.hp_nodes)}

    scalar_lines: list[str] = []
    tensor_lines: list[str] = []
    casts: dict[int, str] = {}

    def const64(value: float) -> str:
        if not math.isfinite(value):
            raise ValueError(f"fused: non-finite constant {value}")
        return f"tl.full([], {float(value)!r}, tl.float64)"

    def operand(arg: Any, tensor_ctx: bool) -> str:
        if not _is_ref(arg):
            return f"tl.full([], {float(arg)!r}, {ct})" if tensor_ctx else const64(arg)
        if graph.nodes[arg].is_tensor:
            return f"v{arg}"
        if tensor_ctx:
            if arg not in casts:
                casts[arg] = f"c{arg}"
                scalar_lines.append(f"c{arg} = s{arg}.to({ct})")
            return casts[arg]
        return f"s{arg}"

    for index, node in enumerate(graph.nodes):
        if not live[index]:
            continue
        if node.op == "leaf":
            if node.is_tensor:
                name = node.name.split(":", 1)[-1]
                slot = slot_of[name]
                tensor_lines.append(
                    f"v{index} = tl.load(x{slot} + offs, mask=mask, other=0).to({ct})"
                )
                if name == "grad" and has_grad_scale:
                    div = f"v{index} / gs" if wide else f"tl.div_rn(v{index}, gs)"
                    tensor_lines.append(f"v{index} = {div}")
                    tensor_lines.append(
                        f"tl.store(x1 + offs, v{index}.to({_TL_TYPES[dtypes[1]]}), mask=mask)"
                    )
            elif node.name.startswith("hp:"):
                j = hp_index[index]
                if tensor_hp[j] is None:
                    scalar_lines.append(f"s{index} = tl.load(hp_ptr + {j})")
                else:
                    scalar_lines.append(f"s{index} = tl.load(thp{j}).to(tl.float64)")
            else:
                slot = slot_of[node.name.split(":", 1)[1]]
                scalar_lines.append(f"s{index} = tl.load(x{slot}).to(tl.float64)")
            continue
        if node.is_tensor:
            a = [operand(x, True) for x in node.args]
            template = (_WIDE_OPS if wide else _TENSOR_OPS).get(node.op, _TENSOR_OPS[node.op])
            tensor_lines.append(f"v{index} = {template.format(*a)}")
            continue
        x, y = node.args
        if node.op == "pow":
            if not _is_ref(y) and y == 0.5:
                expr = f"tl.sqrt({operand(x, False)})"  # float64: IEEE-rounded
            elif not _is_ref(y) and y == 2.0:
                expr = f"{operand(x, False)} * {operand(x, False)}"
            elif not _is_ref(x):
                if x <= 0:
                    raise ValueError(f"fused: power of a non-positive constant {x}")
                expr = f"tl.exp({const64(math.log(x))} * {operand(y, False)})"
            else:  # bases are betas, decays, bias corrections: positive (or 0 -> exp(-inf))
                expr = f"tl.exp(tl.log({operand(x, False)}) * {operand(y, False)})"
        else:
            expr = _SCALAR_OPS[node.op].format(operand(x, False), operand(y, False))
        scalar_lines.append(f"s{index} = {expr}")

    stores: list[str] = []
    scalar_stores: list[str] = []
    for name, value in graph.outputs.items():
        slot = slot_of[name]
        if kinds[name] == "scalar":
            scalar_stores.append(f"tl.store(x{slot}, ({operand(value, False)}).to(tl.float32))")
        else:
            stores.append(
                f"tl.store(x{slot} + offs, ({operand(value, True)}).to("
                f"{_TL_TYPES[dtypes[slot]]}), mask=mask)"
            )

    nslots = len(dtypes)
    decls = []
    for slot, dtype in enumerate(dtypes):
        if dtype is None:
            continue
        is_scalar = slot >= 2 and traced.slots[slot - 2][1] == "scalar"
        tl_type = "tl.float32" if is_scalar else _TL_TYPES[dtype]
        decls.append(f"x{slot} = tl.load(base + {slot}).to(tl.pointer_type({tl_type}))")
    thp_args = "".join(f"thp{j}, " for j, d in enumerate(tensor_hp) if d is not None)
    ok = "ok = tl.load(fi_ptr) == 0.0" if has_found_inf else "ok = pid >= 0"
    gs = f"gs = tl.load(gs_ptr).to({ct})" if has_grad_scale else ""
    comment = "\n".join("# " + line for line in graph.describe().splitlines())
    indent4 = "\n    "
    indent8 = "\n        "
    indent12 = "\n            "
    scalar_block = ""
    if scalar_stores:
        scalar_block = f"""
    if ok:
        done = tl.atomic_add(counter_ptr + t, 1, sem="acq_rel")
        if done == tl.load(nchunks_ptr + t) - 1:
            {indent12.join(scalar_stores)}
            tl.store(counter_ptr + t, 0)"""
    return f'''"""Generated by torchopt_survey.optim.core.emit_triton -- do not edit."""
import triton
import triton.language as tl

{comment}


@triton.jit
def fused_kernel(table_ptr, numel_ptr, chunk_tensor_ptr, chunk_start_ptr, counter_ptr,
                 nchunks_ptr, hp_ptr, {thp_args}gs_ptr, fi_ptr,
                 BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    {ok}
    t = tl.load(chunk_tensor_ptr + pid)
    start = tl.load(chunk_start_ptr + pid)
    n = tl.where(ok, tl.load(numel_ptr + t), 0)  # found_inf: every access masked off
    base = table_ptr + t * {nslots}
    {indent4.join(decls)}
    {gs}
    {indent4.join(scalar_lines)}
    for it in tl.static_range(ITERS):
        offs = start + it * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        {indent8.join(tensor_lines)}
        {indent8.join(stores)}{scalar_block}
'''


_MODULES: dict[str, Any] = {}


def load_kernel(source: str, label: str) -> Any:
    """Write ``source`` to the cache directory, import it, return its ``fused_kernel``."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    module = _MODULES.get(digest)
    if module is None:
        start = time.perf_counter()
        path = cache_dir() / f"triton_{digest}.py"
        from_disk = path.exists()
        if not from_disk:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(source)
            tmp.replace(path)
        spec = importlib.util.spec_from_file_location(f"torchopt_fused_{digest}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[digest] = module
        COMPILE_LOG.append((f"triton:{label}", time.perf_counter() - start, from_disk))
    return module.fused_kernel


class _Plan:
    """Device tables for one set of tensors (rebuilt only when an address changes)."""

    def __init__(self, device: torch.device, ptrs: list[int], numels: list[int], chunk: int):
        chunks = [max(1, -(-n // chunk)) for n in numels]
        chunk_tensor = [t for t, c in enumerate(chunks) for _ in range(c)]
        chunk_start = [i * chunk for c in chunks for i in range(c)]

        def put(values: list[int], dtype: torch.dtype) -> Tensor:
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        self.table = put(ptrs, torch.int64)
        self.numels = put(numels, torch.int64)
        self.chunk_tensor = put(chunk_tensor, torch.int32)
        self.chunk_start = put(chunk_start, torch.int64)
        self.nchunks = put(chunks, torch.int32)
        self.counter = torch.zeros(len(numels), dtype=torch.int32, device=device)
        self.grid = (len(chunk_tensor),)


_PLANS: OrderedDict[tuple, _Plan] = OrderedDict()
_HP_BUFFERS: OrderedDict[tuple, Tensor] = OrderedDict()
_KERNELS: dict[tuple, Any] = {}


def _cached(cache: OrderedDict, key: tuple, make: Any, size: int = 16) -> Any:
    value = cache.get(key)
    if value is None:
        value = make()
        cache[key] = value
        if len(cache) > size:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


def run_triton(
    traced: Traced,
    group: dict[str, Any],
    dtypes: tuple[Any, ...],
    ptrs: list[int],
    numels: list[int],
    device: torch.device,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    label: str = "",
) -> None:
    """One launch of the generated kernel.

    ``ptrs`` holds each parameter's row of addresses (param, grad, states in spec order; 0 for
    an absent lazy state), ``dtypes`` the row's dtypes, ``numels`` each parameter's size.
    """
    from .fused import hp_values

    values = hp_values(traced, group)
    tensor_hp = tuple(v.dtype if isinstance(v, Tensor) else None for v in values)
    has_gs, has_fi = grad_scale is not None, found_inf is not None
    key = (id(traced), dtypes, tensor_hp, has_gs, has_fi)
    entry = _KERNELS.get(key)
    if entry is None:
        source = emit_triton(traced, dtypes, tensor_hp, has_gs, has_fi)
        entry = _KERNELS[key] = (load_kernel(source, label), traced)
    kernel = entry[0]

    floats = tuple(0.0 if isinstance(v, Tensor) else float(v) for v in values) or (0.0,)
    hp = _cached(_HP_BUFFERS, (device, floats),
                 lambda: torch.tensor(floats, dtype=torch.float64).to(device))
    chunk = BLOCK * ITERS
    plan_key = (device, chunk, tuple(ptrs), tuple(numels))
    plan = _cached(_PLANS, plan_key, lambda: _Plan(device, ptrs, numels, chunk), size=8)
    thp = [v.to(device).reshape(()) for v in values if isinstance(v, Tensor)]
    gs = grad_scale.to(device) if has_gs else hp  # type: ignore[union-attr]
    fi = found_inf.to(device) if has_fi else hp  # type: ignore[union-attr]
    kernel[plan.grid](
        plan.table, plan.numels, plan.chunk_tensor, plan.chunk_start, plan.counter,
        plan.nchunks, hp, *thp, gs, fi, BLOCK=BLOCK, ITERS=ITERS, num_warps=NUM_WARPS,
    )
