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

Compact optimizer state (``state_dtype="bfloat16" | "int8"``) has a kernel of its own,
:func:`emit_triton_compact`, from the same graph walk: one program per int8 quantisation
block (or per ``BF16_UNIT`` elements of bfloat16 state) that decodes the block, updates it and
re-encodes it with its new largest magnitude -- bit for bit the general path's result (see
:mod:`.compact_state`).

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

from .codes import (
    EXPONENT_REBASE,
    HASH_MULTIPLIERS,
    LEVELS,
    MANTISSA_SHIFT,
    SIGNED_FACTOR,
    SMALLEST_NORMAL,
    SMALLEST_SCALE,
    SUBNORMAL_CODES,
    SUBNORMAL_STEP,
    TOP,
    TOP_INVERSE,
    reciprocal,
)
from .emit import Dialect, walk
from .kernel_cache import COMPILE_LOG, cache_dir, check_loadable, write_private
from .tracing import Traced, _is_ref, hp_values

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
    "mul32": "({0}.to(tl.float32) * {1}.to(tl.float32)).to(tl.float64)",
}


class TritonDialect(Dialect):
    """Triton spelling: scalars are float64 ``tl`` values, tensors blocks of ``BLOCK``."""

    def __init__(self, dtypes: tuple[Any, ...], tensor_hp: tuple[Any, ...],
                 has_grad_scale: bool, replica_hp: tuple[bool, ...] = (),
                 per_element: bool = False) -> None:
        super().__init__(dtypes, has_grad_scale)
        self.tensor_hp = tensor_hp
        self.replica_hp = replica_hp or (False,) * len(tensor_hp)
        # per-replica values: inside the element loop each element reads its replica's value
        # (a block); before it, the program's first replica (for the scalar state only, which
        # never depends on a per-replica value -- checked before any kernel runs)
        self.per_element = per_element
        self.ct = "tl.float64" if self.wide else "tl.float32"
        # float64 arithmetic is correctly rounded as written (the _rn forms are float32-only)
        self.ops = {**_TENSOR_OPS, **_WIDE_OPS} if self.wide else _TENSOR_OPS

    def tensor_const(self, value: float) -> str:
        return f"tl.full([], {value!r}, {self.ct})"

    def scalar_const(self, value: float) -> str:
        return f"tl.full([], {value!r}, tl.float64)"

    def cast(self, index: int) -> str:
        return f"c{index} = s{index}.to({self.ct})"

    def define_scalar(self, index: int, expr: str) -> str:
        return f"s{index} = {expr}"

    def define_tensor(self, index: int, expr: str) -> str:
        return f"v{index} = {expr}"

    def tensor_op(self, op: str, args: list[str]) -> str:
        return self.ops[op].format(*args)

    def scalar_op(self, op: str, args: list[str], raw: tuple[Any, ...]) -> str:
        if op != "pow":
            return _SCALAR_OPS[op].format(*args)
        (x, y), (rx, ry) = args, raw
        if not _is_ref(ry) and ry == 0.5:
            return f"tl.sqrt({x})"  # float64: IEEE-rounded
        if not _is_ref(ry) and ry == 2.0:
            return f"{x} * {x}"
        if not _is_ref(rx):
            if rx <= 0:
                raise ValueError(f"fused: power of a non-positive constant {rx}")
            return f"tl.exp({self.scalar_const(math.log(rx))} * {y})"
        # bases are betas, decays, bias corrections: positive (or 0 -> exp(-inf))
        return f"tl.exp(tl.log({x}) * {y})"

    def load_tensor(self, index: int, slot: int) -> list[str]:
        lines = [f"v{index} = tl.load(x{slot} + offs, mask=mask, other=0).to({self.ct})"]
        if slot == 1 and self.has_grad_scale:
            # AMP: unscale, and store the unscaled gradient back as torch's fused kernels do
            div = f"v{index} / gs" if self.wide else f"tl.div_rn(v{index}, gs)"
            lines += [f"v{index} = {div}",
                      f"tl.store(x1 + offs, v{index}.to({_TL_TYPES[self.dtypes[1]]}), mask=mask)"]
        return lines

    def load_hp(self, index: int, position: int) -> str:
        if self.tensor_hp[position] is None:
            return f"s{index} = tl.load(hp_ptr + {position})"
        if self.replica_hp[position]:
            at = "offs // rchunk, mask=mask, other=1" if self.per_element else "start // rchunk"
            return f"s{index} = tl.load(thp{position} + {at}).to(tl.float64)"
        return f"s{index} = tl.load(thp{position}).to(tl.float64)"

    def load_scalar_state(self, index: int, slot: int) -> str:
        return f"s{index} = tl.load(x{slot}).to(tl.float64)"

    def store_tensor(self, slot: int, expr: str) -> str:
        return f"tl.store(x{slot} + offs, ({expr}).to({_TL_TYPES[self.dtypes[slot]]}), mask=mask)"

    def store_scalar_state(self, slot: int, expr: str) -> str:
        return f"tl.store(x{slot}, ({expr}).to(tl.float32))"


def _pointer_decls(traced: Traced, dtypes: tuple[Any, ...], aligned: bool,
                   types: dict[Any, str] | None = None) -> list[str]:
    """``x<slot> = ...``: each present slot's typed pointer, read from the program's row of
    the pointer table (``types``: storage type of each slot, default the dtype's; scalar state
    is float32)."""
    decls = []
    for slot, dtype in enumerate(dtypes):
        if dtype is None:
            continue
        is_scalar = slot >= 2 and traced.slots[slot - 2][1] == "scalar"
        tl_type = "tl.float32" if is_scalar else (types or {}).get(slot) or _TL_TYPES[dtype]
        pointer = f"tl.load(base + {slot}).to(tl.pointer_type({tl_type}))"
        if aligned and not is_scalar:
            pointer = f"tl.multiple_of({pointer}, 16)"
        decls.append(f"x{slot} = {pointer}")
    return decls


def _thp_args(tensor_hp: tuple[Any, ...]) -> str:
    return "".join(f"thp{j}, " for j, d in enumerate(tensor_hp) if d is not None)


def _scalar_block(scalar_stores: list[str]) -> str:
    """The new scalar state, written by the last program to finish its tensor."""
    if not scalar_stores:
        return ""
    indent12 = "\n            "
    return f"""
    if ok:
        done = tl.atomic_add(counter_ptr + t, 1, sem="acq_rel")
        if done == tl.load(nchunks_ptr + t) - 1:
            {indent12.join(scalar_stores)}
            tl.store(counter_ptr + t, 0)"""


def emit_triton(
    traced: Traced,
    dtypes: tuple[Any, ...],
    tensor_hp: tuple[Any, ...],
    has_grad_scale: bool,
    has_found_inf: bool,
    replica_hp: tuple[bool, ...] = (),
    aligned: bool = False,
) -> str:
    """Python/Triton source of the fused kernel for one layout.

    ``dtypes``: one per slot (param, grad, each state; ``None`` for an absent lazy state).
    ``tensor_hp``: one per hyperparameter leaf, the dtype of a tensor value or ``None`` (float,
    read from the float64 buffer). ``aligned``: every address is a multiple of 16 bytes, so the
    tensor pointers carry that hint and whole chunks load and store 16 bytes per access.
    """
    dialect = TritonDialect(dtypes, tensor_hp, has_grad_scale, replica_hp)
    body = walk(traced, dialect)
    per_element: list[str] = []  # the scalar math again, per element, for per-replica values
    if any(replica_hp):
        per_element = walk(traced, TritonDialect(dtypes, tensor_hp, has_grad_scale, replica_hp,
                                                 per_element=True)).scalar_lines
    ct = dialect.ct
    graph = traced.graph
    scalar_lines, tensor_lines = body.scalar_lines, body.tensor_lines
    stores, scalar_stores = body.stores, body.scalar_stores

    nslots = len(dtypes)
    decls = _pointer_decls(traced, dtypes, aligned)
    thp_args = _thp_args(tensor_hp)
    ok = "ok = tl.load(fi_ptr) == 0.0" if has_found_inf else "ok = pid >= 0"
    gs = f"gs = tl.load(gs_ptr).to({ct})" if has_grad_scale else ""
    comment = "\n".join("# " + line for line in graph.describe().splitlines())
    indent4 = "\n    "
    indent8 = "\n        "
    scalar_block = _scalar_block(scalar_stores)

    def loop(mask: str, indent: str) -> str:
        body = ["offs = start + it * BLOCK + tl.arange(0, BLOCK)", f"mask = {mask}",
                *per_element, *tensor_lines, *stores]
        return f"for it in tl.static_range(ITERS):{indent}    " + f"{indent}    ".join(body)

    chunk_loops = loop("offs < n", indent4)
    if not per_element:
        # a whole chunk: a constant mask lets loads and stores go 16 bytes at a time (a bound
        # read from memory would split every access into single elements). Not with
        # per-replica values, whose per-element scalars would change type inside the branch.
        chunk_loops = (f"if start + BLOCK * ITERS <= n:{indent8}"
                       f"{loop('tl.full([BLOCK], 1, tl.int1)', indent8)}"
                       f"{indent4}else:{indent8}{loop('offs < n', indent8)}")
    return f'''"""Generated by torchopt_survey.optim.core.emit_triton -- do not edit."""
import triton
import triton.language as tl

{comment}


@triton.jit
def fused_kernel(table_ptr, numel_ptr, chunk_tensor_ptr, chunk_start_ptr, counter_ptr,
                 nchunks_ptr, hp_ptr, {thp_args}gs_ptr, fi_ptr, nrep,
                 BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0)
    {ok}
    t = tl.load(chunk_tensor_ptr + pid)
    start = tl.multiple_of(tl.load(chunk_start_ptr + pid), 16)  # a multiple of BLOCK * ITERS
    n = tl.where(ok, tl.load(numel_ptr + t), 0)  # found_inf: every access masked off
    base = table_ptr + t * {nslots}
    {indent4.join(decls)}
    {gs}
    rchunk = tl.maximum(tl.load(numel_ptr + t) // nrep, 1)  # elements per replica
    {indent4.join(scalar_lines)}
    {chunk_loops}{scalar_block}
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
            write_private(path, source)
        check_loadable(path)  # importing it runs it: only a file nobody else can write
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
        # 16-byte aligned addresses (fresh allocations; not every view): the vectorised kernel
        self.aligned = all(ptr % 16 == 0 for ptr in ptrs)


_PLANS: OrderedDict[tuple, _Plan] = OrderedDict()
_HP_BUFFERS: OrderedDict[tuple, Tensor] = OrderedDict()
#: the kernel's copy of a host tensor hyperparameter per (source, version, device)
_HP_COPIES: OrderedDict[tuple, tuple[Tensor, Tensor]] = OrderedDict()
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


def _kernel_copy(value: Tensor, device: torch.device, replica: bool) -> Tensor:
    """``value`` as the kernel reads it, on ``device``.

    A value already there is passed as is (the kernel reads its memory: an in-place change, a
    CUDA graph's replay included, is seen). One elsewhere -- a per-replica lr on the host --
    is copied once and again only after it changed in place (its version counter moved):
    copying it every step cost a blocking host-to-device copy and a stream sync per step.
    """
    shape = -1 if replica else ()
    if value.device == device:
        return value.reshape(shape)
    try:
        version = value._version
    except RuntimeError:  # an inference tensor has no version counter: copy every step
        return value.to(device).reshape(shape)
    # (an entry holds its source, so the source's id is not reused while the entry lives)
    entry = _cached(_HP_COPIES, (id(value), version, device),
                    lambda: (value, value.detach().to(device).reshape(shape)), size=32)
    return entry[1]


def _hp_kinds(values: list[Any]) -> tuple[tuple[Any, ...], tuple[bool, ...]]:
    """Each hyperparameter's tensor dtype (``None``: a number) and whether it holds one value
    per replica."""
    tensor_hp = tuple(v.dtype if isinstance(v, Tensor) else None for v in values)
    replica_hp = tuple(isinstance(v, Tensor) and v.dim() == 1 and v.numel() > 1
                       for v in values)
    return tensor_hp, replica_hp


def _hp_arguments(values: list[Any], replica_hp: tuple[bool, ...],
                  device: torch.device) -> tuple[Tensor, list[Tensor]]:
    """The kernel's hyperparameter arguments: the float64 buffer of the plain numbers, and
    each tensor value as the kernel reads it."""
    floats = tuple(0.0 if isinstance(v, Tensor) else float(v) for v in values) or (0.0,)
    hp = _cached(_HP_BUFFERS, (device, floats),
                 lambda: torch.tensor(floats, dtype=torch.float64).to(device))
    thp = [_kernel_copy(v, device, replica) for v, replica in zip(values, replica_hp)
           if isinstance(v, Tensor)]
    return hp, thp


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
    values = hp_values(traced, group)
    tensor_hp, replica_hp = _hp_kinds(values)
    nrep = max((v.numel() for v, r in zip(values, replica_hp) if r), default=1)
    has_gs, has_fi = grad_scale is not None, found_inf is not None
    chunk = BLOCK * ITERS
    if chunk % 16:
        raise ValueError(f"fused: BLOCK * ITERS must be a multiple of 16, got {chunk}")
    plan_key = (device, chunk, tuple(ptrs), tuple(numels))
    plan = _cached(_PLANS, plan_key, lambda: _Plan(device, ptrs, numels, chunk), size=8)
    key = (id(traced), dtypes, tensor_hp, replica_hp, has_gs, has_fi, plan.aligned)
    entry = _KERNELS.get(key)
    if entry is None:
        source = emit_triton(traced, dtypes, tensor_hp, has_gs, has_fi, replica_hp,
                             plan.aligned)
        entry = _KERNELS[key] = (load_kernel(source, label), traced)
    kernel = entry[0]

    hp, thp = _hp_arguments(values, replica_hp, device)
    gs = grad_scale.to(device) if has_gs else hp  # type: ignore[union-attr]
    fi = found_inf.to(device) if has_fi else hp  # type: ignore[union-attr]
    kernel[plan.grid](
        plan.table, plan.numels, plan.chunk_tensor, plan.chunk_start, plan.counter,
        plan.nchunks, hp, *thp, gs, fi, nrep, BLOCK=BLOCK, ITERS=ITERS, num_warps=NUM_WARPS,
    )


# ---------------------------------------------------------------------------------------------
# compact state (bfloat16 / int8) read and written inside the kernel
# ---------------------------------------------------------------------------------------------
#: elements per program of the compact kernel on bfloat16 state (int8: one quantisation block)
BF16_UNIT = 1024
#: most lanes of a compact program: a wider int8 block is walked in steps of this many (a
#: whole block of 65536 per program took a minute to compile for sm_90, 2 MB of code)
MAX_LANES = 4096
#: storage type of each compact form: bfloat16 as its bits (the rounding works on them)
_COMPACT_TYPES = {"bfloat16": "tl.uint16", "int8": "tl.int8", "uint8": "tl.uint8"}


def _u32(value: int) -> str:
    return f"tl.full([], {value}, tl.uint32)"


def _f32(value: float) -> str:
    return f"tl.full([], {float(value)!r}, tl.float32)"


def _compact_helpers(kinds: set[str], interpreted: bool) -> str:
    """Triton functions that load, round and (de)quantise compact state, the float32 and
    uint32 operations of :mod:`.codes` and :func:`.compact_state.round_bfloat16` (and of the
    C kernel's), so that every path stores the same bits.

    A dequantised value is a product that the general path stores to memory before its
    update reads it; on the GPU, where the compiler contracts a product and a sum into one
    fused multiply-add, it is formed by one ``mul.rn.f32`` instruction of its own (inline
    assembly: never contracted, and subnormals kept, unlike libdevice's ``mul_rn``), so that
    it is that rounded value the update adds. The interpreter (CPU tensors) does not contract
    and runs no assembly."""
    first, second, third = HASH_MULTIPLIERS
    parts: list[str] = []
    if kinds & {"int8", "uint8"}:
        product = "u * amax" if interpreted else (
            'tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [u, amax], '
            "dtype=tl.float32, is_pure=True, pack=1)")
        parts.append(f'''
@triton.jit
def scaled(u, amax):
    return {product}
''')
    if "bfloat16" in kinds:
        parts.append(f'''
@triton.jit
def ld_bf16(h):
    return (h.to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def st_bf16_sr(f, index, seed):
    """bfloat16 bits of f with stochastic rounding: 16 bits of a hash of the element's index
    and the seed are added below bfloat16's mantissa, then cut off (NaN stays NaN)."""
    x = index.to(tl.uint32) * {_u32(first)} + seed
    x = x ^ (x >> 16)
    x = x * {_u32(second)}
    x = x ^ (x >> 15)
    x = x * {_u32(third)}
    x = x ^ (x >> 16)
    u = f.to(tl.uint32, bitcast=True)
    r = (u + (x >> 16)) & {_u32(0xFFFF0000)}
    r = tl.where((u & {_u32(0x7FFFFFFF)}) > {_u32(0x7F800000)}, {_u32(0x7FC00000)}, r)
    return (r >> 16).to(tl.uint16)
''')
    if "int8" in kinds:
        levels = float(LEVELS[True])
        parts.append(f'''
@triton.jit
def unit_S(c):
    t = c.to(tl.float32) * {_f32(reciprocal())}
    return t * tl.abs(t)


@triton.jit
def quant_S(v, inverse):
    """The nearest code of the signed map (see codes.CodeMap.nearest)."""
    q = v * inverse
    m = tl.abs(q)
    r = tl.sqrt_rn(m) * {_f32(levels)}
    r = tl.where(r < {_f32(levels)}, r, {_f32(levels)})  # (NaN too)
    f = r.to(tl.int32).to(tl.float32)  # (r >= 0: truncation)
    code = f + tl.where(m * {_f32(SIGNED_FACTOR)} > f * f + f + {_f32(0.5)}, 1.0, 0.0)
    negative = (q.to(tl.uint32, bitcast=True) >> 31) != 0  # (copysign: the sign bit)
    return tl.where(negative, -code, code).to(tl.int32)
''')
    if "uint8" in kinds:
        half = 1 << (MANTISSA_SHIFT - 1)
        parts.append(f'''
@triton.jit
def unit_U(c):
    k = c.to(tl.int32)
    w = ((k + {EXPONENT_REBASE}) << {MANTISSA_SHIFT}).to(tl.float32, bitcast=True)
    w = tl.where(k < {SUBNORMAL_CODES}, k.to(tl.float32) * {_f32(SUBNORMAL_STEP)}, w)
    return w * {_f32(TOP_INVERSE)}


@triton.jit
def quant_U(v, inverse):
    """The nearest code of the unsigned map (see codes.CodeMap.nearest)."""
    q = v * inverse
    u = q.to(tl.uint32, bitcast=True)
    normal = ((u + {_u32(half)}) >> {MANTISSA_SHIFT}).to(tl.int32) - {EXPONENT_REBASE}
    tiny = q < {_f32(SMALLEST_NORMAL)}
    small = (tl.where(tiny, q, 0.0) * {_f32(1.0 / SUBNORMAL_STEP)} + {_f32(0.5)}).to(tl.int32)
    code = tl.where(tiny, small, normal)
    return tl.minimum(tl.maximum(code, 0), {LEVELS[False]})
''')
    return "\n".join(parts)


class CompactTritonDialect(TritonDialect):
    """:class:`TritonDialect` with compact state slots: ``compact[slot]`` is ``None`` (a plain
    slot), ``"bfloat16"`` (bfloat16 bits, stochastic rounding on store) or ``"int8"`` /
    ``"uint8"`` (codes of the signed / unsigned map, dequantised with the block's scale on
    load; the new values kept in ``y<slot>`` until the block is re-quantised)."""

    def __init__(self, dtypes: tuple[Any, ...], tensor_hp: tuple[Any, ...],
                 compact: tuple[Any, ...], has_grad_scale: bool = False) -> None:
        super().__init__(dtypes, tensor_hp, has_grad_scale)
        self.compact = compact

    def load_tensor(self, index: int, slot: int) -> list[str]:
        kind = self.compact[slot]
        if kind is None:
            return super().load_tensor(index, slot)
        raw = f"tl.load(x{slot} + offs, mask=mask, other=0)"
        if kind == "bfloat16":
            return [f"v{index} = ld_bf16({raw}).to({self.ct})"]
        name = "S" if kind == "int8" else "U"
        return [f"v{index} = scaled(unit_{name}({raw}), amax{slot}).to({self.ct})"]

    def store_tensor(self, slot: int, expr: str) -> str:
        kind = self.compact[slot]
        if kind is None:
            return super().store_tensor(slot, expr)
        if kind == "bfloat16":
            return (f"tl.store(x{slot} + offs, st_bf16_sr(({expr}).to(tl.float32), offs, "
                    f"seed{slot}), mask=mask)")
        if kind == "uint8":  # (non-negative state: a rounding error below 0 is clamped)
            return (f"y{slot} = ({expr}).to(tl.float32); "
                    f"y{slot} = tl.where(y{slot} < 0.0, 0.0, y{slot})")
        return f"y{slot} = ({expr}).to(tl.float32)"


def emit_triton_compact(traced: Traced, dtypes: tuple[Any, ...], tensor_hp: tuple[Any, ...],
                        compact: tuple[Any, ...], unit: int, interpreted: bool = False,
                        looped: bool = False, has_grad_scale: bool = False,
                        has_found_inf: bool = False) -> str:
    """Python/Triton source of a fused step whose state slots are compact (see
    :class:`CompactTritonDialect`): one program per ``unit`` elements of one tensor -- for
    int8 state one quantisation block, which the program loads (codes and scale), updates,
    and re-quantises itself: the block's new largest magnitude is a reduction inside the
    program, the nearest codes and the new scale are stored in the same pass. ``unit`` need
    not be a power of two: the program's lanes (``BLOCK``) are the next one, the extra lanes
    masked off.

    ``looped``: the unit is wider than the program's lanes (``BLOCK < UNIT``, a large
    ``state_block_size``), so the program walks it in ``BLOCK``-lane steps, rather than hold a
    whole block at once: int8 state twice -- once for the new largest magnitude (computing the
    update, storing nothing), once to store.

    Besides the pointer table (param, grad, every state), each tensor has a row of ``aux``
    entries, one per compact slot: the bfloat16 rounding seed, or the int8 scales' address.
    ``interpreted``: the source for the interpreter (CPU tensors). AMP as in
    :func:`emit_triton`: the gradient divided by ``grad_scale`` (and stored back unscaled);
    with ``found_inf`` nonzero every access is masked off -- codes, scales, steps unchanged.
    """
    dialect = CompactTritonDialect(dtypes, tensor_hp, compact, has_grad_scale)
    body = walk(traced, dialect)
    compact_slots = [slot for slot, kind in enumerate(compact) if kind is not None]
    outputs = {2 + i for i, (name, _kind, _p) in enumerate(traced.slots)
               if name in traced.graph.outputs}
    decls = _pointer_decls(traced, dtypes, False,
                           {slot: _COMPACT_TYPES[compact[slot]] for slot in compact_slots})
    decls.append(f"aux = aux_ptr + t * {len(compact_slots)}")
    per_block: list[str] = []
    written = []
    for k, slot in enumerate(compact_slots):
        if compact[slot] == "bfloat16":
            decls.append(f"seed{slot} = tl.load(aux + {k}).to(tl.uint32)")
            continue
        decls.append(f"A{slot} = tl.load(aux + {k}).to(tl.pointer_type(tl.float32))")
        per_block.append(f"amax{slot} = tl.load(A{slot} + blk, mask=start < n, other=0.0)")
        if slot in outputs:
            written.append(slot)
    # the block's largest magnitude: the largest bit pattern of |y| (what the C kernel takes;
    # the same as the float maximum)
    most = {slot: f"tl.max(tl.where(mask, y{slot}.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 0), "
            "axis=0)" for slot in written}
    scales = []
    encode = []
    for slot in written:
        name = "S" if compact[slot] == "int8" else "U"
        scales += [
            f"peak{slot} = most{slot}.to(tl.float32, bitcast=True)",
            f"peak{slot} = tl.where((peak{slot} > 0.0) & (peak{slot} < "
            f"{_f32(SMALLEST_SCALE)}), {_f32(SMALLEST_SCALE)}, peak{slot})",
            f"tl.store(A{slot} + blk, peak{slot}, mask=start < n)",
            f"inverse{slot} = tl.div_rn({_f32(1.0 if name == 'S' else TOP)}, "
            f"tl.where(peak{slot} > 0.0, peak{slot}, 1.0))",
        ]
        encode.append(f"tl.store(x{slot} + offs, quant_{name}(y{slot}, inverse{slot}).to("
                      f"{_COMPACT_TYPES[compact[slot]]}), mask=mask)")
    lanes = ["offs = start + lane", "mask = (lane < UNIT) & (offs < n)"]
    if not looped:
        main = ["lane = tl.arange(0, BLOCK)", *lanes, *body.tensor_lines, *body.stores,
                *(f"most{slot} = {most[slot]}" for slot in written), *scales, *encode]
    else:
        # (only the new values of the written compact slots are kept in the first walk: the
        # compiler drops the rest of the update there)
        keep = [line for line in body.stores if line.startswith("y")]
        walk_lines = ["lane = c + tl.arange(0, BLOCK)", *lanes, *body.tensor_lines]
        main = [
            *(f"most{slot} = tl.full([], 0, tl.int32)" for slot in written),
            "for c in range(0, UNIT, BLOCK):",
            *("    " + line for line in walk_lines + keep),
            *(f"    most{slot} = tl.maximum(most{slot}, {most[slot]})" for slot in written),
            *scales,
        ] if written else []  # (nothing to re-quantise: one walk)
        main += ["for c in range(0, UNIT, BLOCK):",
                 *("    " + line for line in walk_lines + body.stores + encode)]
    comment = "\n".join("# " + line for line in traced.graph.describe().splitlines())
    indent4 = "\n    "
    kinds = {compact[slot] for slot in compact_slots}
    return f'''"""Generated by torchopt_survey.optim.core.emit_triton (compact) -- do not edit."""
import triton
import triton.language as tl

# compact state: {", ".join(f"slot {s} {compact[s]}" for s in compact_slots)}, units of {unit}
{comment}
{_compact_helpers(kinds, interpreted)}

@triton.jit
def fused_kernel(table_ptr, aux_ptr, numel_ptr, chunk_tensor_ptr, chunk_start_ptr, counter_ptr,
                 nchunks_ptr, hp_ptr, {_thp_args(tensor_hp)}gs_ptr, fi_ptr, UNIT: tl.constexpr,
                 BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    {"ok = tl.load(fi_ptr) == 0.0" if has_found_inf else "ok = pid >= 0"}
    t = tl.load(chunk_tensor_ptr + pid)
    start = tl.load(chunk_start_ptr + pid)  # a multiple of UNIT
    blk = start // UNIT
    n = tl.where(ok, tl.load(numel_ptr + t), 0)  # found_inf: every access masked off
    base = table_ptr + t * {len(dtypes)}
    {indent4.join(decls)}
    {f"gs = tl.load(gs_ptr).to({dialect.ct})" if has_grad_scale else ""}
    {indent4.join(body.scalar_lines)}
    {indent4.join(per_block)}
    {indent4.join(main)}{_scalar_block(body.scalar_stores)}
'''


def run_triton_compact(
    traced: Traced,
    group: dict[str, Any],
    dtypes: tuple[Any, ...],
    compact: tuple[Any, ...],
    ptrs: list[int],
    extras: list[int],
    numels: list[int],
    device: torch.device,
    unit: int,
    label: str = "",
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One launch of the compact kernel (:func:`emit_triton_compact`): ``ptrs`` holds each
    parameter's row of addresses (param, grad, states in spec order, all present), ``extras``
    each row's aux entries, ``unit`` the elements of one program (int8: the block size),
    ``grad_scale`` / ``found_inf`` AMP's."""
    values = hp_values(traced, group)
    tensor_hp, replica_hp = _hp_kinds(values)
    if any(replica_hp):
        raise ValueError("fused compact kernel: per-replica hyperparameters are not supported")
    plan = _cached(_PLANS, (device, ("compact", unit), tuple(ptrs), tuple(numels)),
                   lambda: _Plan(device, ptrs, numels, unit), size=8)
    # lanes: the power of two at or above unit, at most MAX_LANES (then the block is walked)
    block = min(1 << max(0, unit - 1).bit_length(), MAX_LANES)
    has_gs, has_fi = grad_scale is not None, found_inf is not None
    key = ("compact", id(traced), dtypes, compact, unit, tensor_hp, block, has_gs, has_fi)
    entry = _KERNELS.get(key)
    if entry is None:
        source = emit_triton_compact(traced, dtypes, tensor_hp, compact, unit,
                                     interpreted=device.type == "cpu", looped=block < unit,
                                     has_grad_scale=has_gs, has_found_inf=has_fi)
        entry = _KERNELS[key] = (load_kernel(source, label + " compact"), traced)
    aux = _cached(_AUX, (device, tuple(extras)),
                  lambda: torch.tensor(extras, dtype=torch.int64).to(device, non_blocking=True))
    hp, thp = _hp_arguments(values, replica_hp, device)
    gs = grad_scale.to(device) if grad_scale is not None else hp
    fi = found_inf.to(device) if found_inf is not None else hp
    entry[0][plan.grid](
        plan.table, aux, plan.numels, plan.chunk_tensor, plan.chunk_start, plan.counter,
        plan.nchunks, hp, *thp, gs, fi, UNIT=unit, BLOCK=block,
        num_warps=max(1, min(8, block // 256)),
    )


#: the aux tables (seeds change every step; int8 scales' addresses stay)
_AUX: OrderedDict[tuple, Tensor] = OrderedDict()
