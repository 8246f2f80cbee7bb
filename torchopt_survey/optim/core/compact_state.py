"""Compact optimizer state: tensor state stored in bfloat16 or in 8-bit blocks.

``state_dtype="bfloat16"`` keeps every tensor state (moments, accumulators, momentum buffers)
in bfloat16, written back with stochastic rounding (an unbiased rounding: small updates are
not lost on average, as they would be to round-to-nearest). The random bits are a hash of each
element's index and a seed made of the parameter's position and its update count (counter-
based, so a kernel computes any element's bits on its own), so a run is reproducible,
independent of the order parameters are updated in (``step()`` or ``step_in_backward``), and
continues identically from a checkpoint.

``state_dtype="int8"`` stores each tensor state as one byte per element in blocks of
``state_block_size`` elements (default 256) with one float32 scale per block (the block's
largest magnitude), through a *power* code map (:mod:`.codes`): signed state as
``sign(c) * (|c|/127)^2`` of the scale, state a method declares non-negative
(``StateSpec.non_negative``: second moments, accumulators) as an unsigned 8-bit float (5
exponent, 3 mantissa bits) scaled to it (never below zero, and reaching down to 1e-10 of the
block's maximum, so that small second moments do not collapse to zero). Both decode and encode
by arithmetic alone, which the fused kernel's loops vectorise.

Scalar state (``step``) stays as it is. On the fused path the generated kernel reads and
writes the compact state itself (:func:`_step_in_kernel`; C on the CPU,
:func:`.emit_c.emit_c_compact`, Triton on CUDA, :func:`.emit_triton.emit_triton_compact`):
one pass per int8 block, one call per parameter group, bit for bit what the general path
gives. The general path (forloop, foreach, the first fused step, what the kernels do not
take): each parameter's
state is expanded to the parameter's dtype, the method's ordinary path runs on it, and the
result is compacted again -- in chunks of parameters, so at most one chunk's full-precision
state exists at a time.

``state_dict()`` holds the compact tensors themselves (bfloat16 tensors, or uint8/int8 codes
plus ``<name>_blockmax`` scales) -- plain tensors, loadable with ``weights_only=True``.
``load_state_dict`` converts between layouts: a full-precision state dict loaded into a
compact optimizer is compacted, a compact one loaded into a full-precision optimizer is
expanded, and a compact one loaded into the same compact configuration is taken as is. int8
state saved by version 0.2.0 (codes of its dynamic map with ``<name>_absmax`` scales) is
decoded with that map and converted.

DTensor parameters sharded along dim 0 (FSDP2) keep their compact state in the unsharded
layout, shard by shard: see :mod:`.compact_shards`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MethodType
from typing import Any

import torch
from torch import Tensor

from . import compact_shards as shards
from .codes import HASH_MULTIPLIERS, SMALLEST_SCALE, code_map, legacy_code_table

STATE_DTYPES = ("bfloat16", "int8")
DEFAULT_BLOCK_SIZE = 256
#: block sizes: a multiple of this, up to the maximum (one scale per block)
BLOCK_MULTIPLE = 32
MAX_BLOCK_SIZE = 1 << 16
#: parameters' elements expanded to full precision at once (a chunk) on a step()
CHUNK_ELEMENTS = 1 << 18
#: elements quantised at once inside one tensor (bounds the temporaries of the code search)
SLICE_ELEMENTS = 1 << 16
#: suffix of an int8 state's per-block scales in the state dict (power code maps)
SCALE = "_blockmax"
#: the suffix of version 0.2.0, whose codes were those of its dynamic map (read only)
LEGACY_SCALE = "_absmax"
#: state entry counting a parameter's updates where the method keeps no ``step`` (it seeds
#: the stochastic rounding of bfloat16 state)
ROUNDINGS = "bf16_roundings"
_SEED = 0x5EED
_COMPACT_DTYPES = (torch.int8, torch.uint8, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# checks (construction and load_state_dict)
# ---------------------------------------------------------------------------------------------
def check_group(group: dict[str, Any], where: str) -> None:
    """Refuse bad ``state_dtype`` / ``state_block_size`` values, naming the argument."""
    dtype = group.get("state_dtype")
    block = group.get("state_block_size")
    if dtype is None:
        if block is not None:
            raise ValueError(
                f"{where}state_block_size={block!r} is only meaningful with state_dtype='int8'"
            )
        return
    if dtype not in STATE_DTYPES:
        raise ValueError(
            f"Invalid {where}state_dtype: {dtype!r} (choose from None, 'bfloat16', 'int8')"
        )
    if block is not None:
        if dtype != "int8":
            raise ValueError(
                f"{where}state_block_size={block!r} is only meaningful with state_dtype='int8' "
                f"(got state_dtype={dtype!r})"
            )
        if isinstance(block, bool) or not isinstance(block, int):
            raise TypeError(
                f"{where}state_block_size must be an int, got {type(block).__name__} ({block!r})"
            )
        if not (BLOCK_MULTIPLE <= block <= MAX_BLOCK_SIZE and block % BLOCK_MULTIPLE == 0):
            raise ValueError(
                f"Invalid {where}state_block_size: {block} (must be a multiple of "
                f"{BLOCK_MULTIPLE} between {BLOCK_MULTIPLE} and {MAX_BLOCK_SIZE})"
            )
    if group.get("differentiable"):
        raise ValueError(
            f"{where}state_dtype={dtype!r} cannot be combined with differentiable=True: "
            "rounding the state has no useful derivative"
        )


def check_params(group: dict[str, Any], where: str) -> None:
    """Refuse compact state for DTensor parameters whose layout it cannot follow (see
    :mod:`.compact_shards`: FSDP2's dim-0 shards are supported, other placements are not)."""
    if not is_compact(group):
        return
    for index, param in enumerate(group["params"]):
        if shards.is_dtensor(param):
            shards.check(param, where, index, group["state_dtype"])


def add_options(defaults: dict[str, Any], state_dtype: Any, state_block_size: Any) -> None:
    """Put the options into a constructor's defaults -- only when used, so that default
    groups keep torch.optim's keys."""
    if state_dtype is not None:
        defaults["state_dtype"] = state_dtype
    if state_block_size is not None:
        defaults["state_block_size"] = state_block_size


def is_compact(group: dict[str, Any]) -> bool:
    return group.get("state_dtype") is not None


def install(optimizer: Any) -> None:
    """Route ``step()`` through the compact path when some group is compact (an instance
    attribute, so optimizers without compact state run the ordinary step unchanged)."""
    if any(is_compact(group) for group in optimizer.param_groups):
        optimizer.__dict__["_step_groups"] = MethodType(_step_groups, optimizer)
    else:
        optimizer.__dict__.pop("_step_groups", None)


def _blocks(flat: Tensor, block: int) -> Tensor:
    """``flat`` as rows of ``block`` elements (the last one zero-padded)."""
    pad = -flat.numel() % block
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.view(-1, block)


def quantize_int8(value: Tensor, block: int, non_negative: bool, phase: int = 0,
                  combine: Callable[[Tensor], None] | None = None) -> tuple[Tensor, Tensor]:
    """``value`` (any float dtype) as (codes shaped like it, float32 per-block scales).

    Works through the blocks a slice at a time, so its temporaries stay small whatever the
    tensor's size (compact state exists to save memory). ``phase``: ``value`` starts that
    many elements into its first block (a shard of a larger tensor); ``combine``: called with
    every block's largest magnitude before any is used, to update them in place (the maxima
    of blocks that other shards share)."""
    flat = value.detach().reshape(-1)
    count = flat.numel()
    if phase:
        flat = torch.nn.functional.pad(flat, (phase, 0))
    rows = _blocks(flat, block)
    table = code_map(not non_negative, value.device)
    codes = torch.empty(rows.shape, dtype=torch.uint8 if non_negative else torch.int8,
                        device=value.device)
    absmax = torch.empty(rows.shape[0], dtype=torch.float32, device=value.device)
    step = max(1, SLICE_ELEMENTS // block)
    def part_of(start: int) -> Tensor:
        part = rows[start:start + step].float()
        return part.clamp(min=0) if non_negative else part

    if combine is not None:  # every block's maximum first, joined with the other shards'
        for start in range(0, rows.shape[0], step):
            absmax[start:start + step] = part_of(start).abs().amax(dim=1)
        combine(absmax)
        absmax.copy_(smallest_scale(absmax))
    for start in range(0, rows.shape[0], step):
        part = part_of(start)
        if combine is None:
            absmax[start:start + step] = smallest_scale(part.abs().amax(dim=1))
        peak = absmax[start:start + step]
        scale = torch.where(peak > 0, peak, torch.ones_like(peak))
        inverse = torch.full_like(scale, table.numerator) / scale  # (as the kernel does)
        nearest = table.nearest(part * inverse[:, None])
        codes[start:start + step] = nearest - table.zero if table.zero else nearest
    codes = codes.reshape(-1)[phase:phase + count].view(value.shape)
    return (codes.clone() if phase else codes), absmax  # (a shard's codes: their own storage)


def smallest_scale(peak: Tensor) -> Tensor:
    """Each block's scale from its largest magnitude: that magnitude, or ``SMALLEST_SCALE``
    where it is positive but smaller (zero stays zero: an all-zero block)."""
    return torch.where((peak > 0) & (peak < SMALLEST_SCALE), SMALLEST_SCALE, peak)


def dequantize_int8(codes: Tensor, absmax: Tensor, block: int, dtype: torch.dtype,
                    legacy: bool = False, phase: int = 0) -> Tensor:
    """The full-precision tensor (``dtype``) that ``codes`` and ``absmax`` stand for
    (``legacy``: codes of version 0.2.0's dynamic map; ``phase``: as for
    :func:`quantize_int8`)."""
    signed = codes.dtype != torch.uint8
    if legacy:
        values, zero = legacy_code_table(signed).to(codes.device), 127 if signed else 0
    else:
        table = code_map(signed, codes.device)
        values, zero = table.values, table.zero
    flat = codes.reshape(-1)
    if phase:
        flat = torch.nn.functional.pad(flat, (phase, 0))
    rows = _blocks(flat, block)
    out = torch.empty(rows.shape, dtype=dtype, device=codes.device)
    step = max(1, SLICE_ELEMENTS // block)
    for start in range(0, rows.shape[0], step):
        index = rows[start:start + step].long()
        if zero:
            index += zero
        out[start:start + step] = values[index] * absmax[start:start + step, None]
    return out.reshape(-1)[phase:phase + codes.numel()].view(codes.shape)


_LOW32 = 0xFFFFFFFF


def rounding_noise(seed: int, count: int, device: torch.device | str = "cpu") -> Tensor:
    """16 random bits (int32, in [0, 65536)) for each of ``count`` elements: a hash of the
    element's index and the 32-bit ``seed`` (the C kernel's ``st_bf16_sr``, in uint32).

    A counter-based hash rather than a generator's stream, so that any element's bits are
    known without the others': the generated kernels compute them inside their element loop,
    in whatever thread an element falls, bit for bit as this function does.
    """
    first, second, third = HASH_MULTIPLIERS
    # uint32 arithmetic in int32 tensors: products wrap modulo 2^32, and a masked arithmetic
    # shift is the logical one
    x = torch.arange(count, dtype=torch.int32, device=device).mul_(first).add_(_as_int32(seed))
    x ^= (x >> 16) & 0xFFFF
    x.mul_(second)
    x ^= (x >> 15) & 0x1FFFF
    x.mul_(third)
    x ^= (x >> 16) & 0xFFFF
    return (x >> 16).bitwise_and_(0xFFFF)


def _as_int32(value: int) -> int:
    """The int32 with the low 32 bits of ``value``."""
    value &= _LOW32
    return value - (1 << 32) if value >= 1 << 31 else value


def rounding_seed(position: int, slot: int, count: int) -> int:
    """The 32-bit seed of one state tensor's rounding: the parameter's position over all
    groups, the state's slot among its tensor states, and the parameter's update count."""
    return hash((_SEED, position, slot, count)) & _LOW32


def round_bfloat16(value: Tensor, seed: int) -> Tensor:
    """``value`` in bfloat16 with stochastic rounding (float32 first, then the bits below
    bfloat16's mantissa decide, with probability equal to their weight, whether to round up;
    the random bits are :func:`rounding_noise` of ``seed``)."""
    value32 = value.detach().float().contiguous()
    noise = rounding_noise(seed & _LOW32, value32.numel(), value.device).view(value32.shape)
    bits = value32.view(torch.int32)
    rounded = ((bits + noise) & -65536).view(torch.float32)  # -65536: 0xFFFF0000
    # (NaN stays NaN; infinities stay, and a value within one bfloat16 step of the largest
    # finite one may round up to infinity, as stochastic rounding does)
    rounded = torch.where(torch.isnan(value32), value32, rounded)
    return rounded.to(torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# compacting and expanding one parameter's state
# ---------------------------------------------------------------------------------------------
def _tensor_entries(optimizer: Any, group: dict[str, Any]) -> list[Any]:
    return [entry for entry in optimizer._state_spec(group) if entry.kind != "scalar"]


def _block(group: dict[str, Any]) -> int:
    return group.get("state_block_size") or DEFAULT_BLOCK_SIZE


def expand(optimizer: Any, group: dict[str, Any], param: Tensor) -> None:
    """Replace the parameter's compact tensor state by full-precision tensors, in place."""
    state = optimizer.state.get(param)
    if not state:
        return
    real_dtype = param.real.dtype if param.is_complex() else param.dtype
    placeholders: dict[int, Tensor] = getattr(optimizer, "_placeholders", None) or {}
    for entry in _tensor_entries(optimizer, group):
        value = state.get(entry.name)
        if value is None or value.dtype not in _COMPACT_DTYPES:
            continue  # absent lazy state, or full precision (not compacted yet)
        if group["state_dtype"] == "int8":
            scales = state.pop(entry.name + SCALE)
            if shards.is_dtensor(value):
                full = shards.dequantize(value, scales, _block(group), real_dtype,
                                         dequantize_int8)
            else:
                full = dequantize_int8(value, scales, _block(group), real_dtype)
        else:
            full = value.to(real_dtype)
        state[entry.name] = torch.view_as_complex(full) if param.is_complex() else full
        if id(value) in placeholders:  # lazy state not created yet: its expansion is too
            placeholders[id(state[entry.name])] = state[entry.name]


def compact(optimizer: Any, group: dict[str, Any], param: Tensor, stochastic: bool) -> None:
    """Replace the parameter's full-precision tensor state by its compact form, in place."""
    state = optimizer.state.get(param)
    if not state:
        return
    entries = _tensor_entries(optimizer, group)
    position = count = 0
    if group["state_dtype"] == "bfloat16" and stochastic:
        count = _update_count(state)
        position = optimizer._compact_position(param)
    for slot, entry in enumerate(entries):
        value = state.get(entry.name)
        if value is None or value.dtype in _COMPACT_DTYPES:
            continue  # absent lazy state, or compact already
        if value.is_sparse:
            raise RuntimeError(
                f"{type(optimizer).__name__}(state_dtype={group['state_dtype']!r}): state "
                f"{entry.name!r} is a sparse tensor (sparse gradients), which compact state "
                "cannot hold; use state_dtype=None for sparse gradients"
            )
        real = torch.view_as_real(value) if value.is_complex() else value
        sharded = shards.is_dtensor(real)
        if group["state_dtype"] == "int8":
            codes, absmax = (shards.quantize(real, _block(group), entry.non_negative,
                                             quantize_int8) if sharded else
                             quantize_int8(real, _block(group), entry.non_negative))
            state[entry.name] = codes
            state[entry.name + SCALE] = absmax
        elif stochastic:
            seed = rounding_seed(position, slot, count)
            state[entry.name] = (shards.round_bfloat16(real, seed, round_bfloat16) if sharded
                                 else round_bfloat16(real, seed))
        else:
            state[entry.name] = real.to(torch.bfloat16)


def materialise(optimizer: Any, group: dict[str, Any], param: Tensor) -> None:
    """The initial state (just created, full precision) in the layout a checkpoint holds:
    codes and scales, and the update counter of bfloat16 rounding where the method keeps no
    ``step`` -- so that a template made from it (torch.distributed.checkpoint's) receives
    every entry of a compact checkpoint."""
    compact(optimizer, group, param, stochastic=False)
    state = optimizer.state[param]
    if group["state_dtype"] == "bfloat16" and "step" not in state:
        state.setdefault(ROUNDINGS, torch.tensor(0, dtype=torch.int64))


def _update_count(state: dict[str, Any]) -> int:
    """How many updates this parameter has had: its ``step`` state where the method keeps
    one, else a counter of its own (:data:`ROUNDINGS`)."""
    step = state.get("step")
    if isinstance(step, Tensor):
        return int(step.item())
    count = int(state.get(ROUNDINGS, 0)) + 1
    state[ROUNDINGS] = torch.tensor(count, dtype=torch.int64)
    return count


def _step_groups(optimizer: Any) -> None:
    """``step()`` for an optimizer with compact groups (see :func:`install`)."""
    for group in optimizer.param_groups:
        subset = [param for param in group["params"] if param.grad is not None]
        if not is_compact(group):
            if subset:
                optimizer._step_parameters(group, subset)
            continue
        # the fused kernel needs no full-precision copies: one call for the whole group
        # (a call per chunk costs its Python set-up each time)
        if group.get("fused") and subset and _step_in_kernel(optimizer, group, subset):
            continue
        chunk: list[Tensor] = []
        size = 0
        for param in subset:
            chunk.append(param)
            size += param.numel()
            if size >= CHUNK_ELEMENTS:
                step_compact(optimizer, group, chunk)
                chunk, size = [], 0
        if chunk:
            step_compact(optimizer, group, chunk)


def step_compact(optimizer: Any, group: dict[str, Any], params: list[Tensor]) -> None:
    """One step of ``params``: inside the fused kernel where it reads compact state
    (:func:`_step_in_kernel`), else the ordinary step on full-precision copies of it."""
    if group.get("fused"):
        # (int8 shards whose blocks a shard boundary cuts: the general path, the rest the kernel)
        kernel, rest = (shards.split_cut(params, _block(group))
                        if group["state_dtype"] == "int8" else (params, []))
        if _step_in_kernel(optimizer, group, kernel):
            if not rest:
                return
            params = rest
    for param in params:
        expand(optimizer, group, param)
    try:
        optimizer._step_parameters(group, params, compact_ok=True)
    finally:
        for param in params:
            compact(optimizer, group, param, stochastic=True)


#: elements per unit of work of a fused kernel on bfloat16 state (int8: one block); the kernel
#: prefetches the next unit's cache lines as each starts, and a much larger burst of
#: prefetches stalls it
BF16_UNIT = 256
#: parameter dtypes whose compact state the C kernel reads and writes itself
_IN_KERNEL_DTYPES = (torch.float32, torch.float64)


def _step_in_kernel(optimizer: Any, group: dict[str, Any], params: list[Tensor]) -> bool:
    """Step ``params`` with the fused kernel reading and writing their compact state in
    place, if it can: True when done, False (nothing changed) to take the general path.

    The kernel -- C on the CPU, Triton on CUDA (and on the CPU with ``fused.BACKEND ==
    "triton"``, the interpreter) -- gives bit for bit what the general path gives on the same
    backend (expand, ordinary step, compact): the same dequantisation, float arithmetic,
    block maxima, nearest codes and rounding bits. What it does not handle takes the general
    path: the first step (state not compact yet), per-replica hyperparameters, AMP's
    grad_scale/found_inf on the C kernel, parameters that are not contiguous float32/float64
    tensors on one kind of device, tensor subclasses other than DTensor shards on the CPU
    that :func:`.compact_shards.in_kernel` admits (their local tensors are the whole
    tensor's layout: bfloat16 seeds moved to the shard's start, int8 blocks that no shard
    boundary cuts).
    """
    from . import fused

    backend = _kernel_backend(params)
    if backend is None or optimizer._replicas_of(group) or backend == "c" and (
            getattr(optimizer, "grad_scale", None) is not None
            or getattr(optimizer, "found_inf", None) is not None):
        return False
    spec = optimizer._state_spec(group)
    entries = _tensor_entries(optimizer, group)
    if not entries:
        return False
    int8 = group["state_dtype"] == "int8"
    placeholders = getattr(optimizer, "_placeholders", None) or {}
    rows: list[list[Tensor]] = []
    work: list[tuple[Tensor, dict[str, Any], int]] = []
    for param in params:
        grad = param.grad
        state = optimizer.state.get(param)
        if grad is None:
            continue
        tensor, gradient, start = param, grad, 0
        if shards.is_dtensor(param):  # (the kernel runs on the local shard of the whole layout)
            if backend != "c" or not shards.in_kernel(param, grad, _block(group) if int8 else 0):
                return False
            tensor, gradient = shards.local(param), shards.local(grad)
            start = shards.flat_start(param)
        if not state or type(tensor) not in fused._PLAIN or type(gradient) not in fused._PLAIN or (
                tensor.dtype not in _IN_KERNEL_DTYPES
                or gradient.dtype != tensor.dtype or gradient.layout != torch.strided
                or not tensor.is_contiguous() or not gradient.is_contiguous()):
            return False
        row = [tensor, gradient]
        for entry in spec:
            value = state.get(entry.name)
            if not isinstance(value, Tensor) or id(value) in placeholders:  # (lazy state not
                return False  # created yet)
            value = shards.local(value)
            if value.device != tensor.device:
                return False
            if entry.kind == "scalar":
                if value.dtype != torch.float32:
                    return False
            elif (value.dtype not in _COMPACT_DTYPES or not value.is_contiguous()
                  or value.shape != tensor.shape or (int8 and entry.name + SCALE not in state)):
                return False
            row.append(value)
        rows.append(row)
        work.append((param, state, start))
    if not rows:
        return True
    compact: tuple[Any, ...] = (None, None) + tuple(
        None if entry.kind == "scalar" else ("uint8" if entry.non_negative else "int8")
        if int8 else "bfloat16" for entry in spec)
    extras: list[list[int]] = []
    counts = [] if int8 else _next_update_counts([state for _param, state, _start in work])
    for index, (param, state, start) in enumerate(work):
        if int8:
            extras.append([state[entry.name + SCALE].data_ptr() for entry in entries])
        else:
            position = optimizer._compact_position(param)
            extras.append([shards.shard_seed(rounding_seed(position, slot, counts[index]), start)
                           for slot in range(len(entries))])
    block = _block(group) if int8 else None
    partitions: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        partitions.setdefault((row[0].device, *(t.dtype for t in row)), []).append(index)
    for members in partitions.values():
        part = [rows[i] for i in members], [extras[i] for i in members]
        if backend == "c":
            fused.run_compact_cpu(optimizer, group, spec, *part, compact, block or BF16_UNIT)
        else:  # (bfloat16 state: the Triton kernel picks its own unit of work)
            fused.run_compact_triton(optimizer, group, spec, *part, compact, block)
    return True


def _kernel_backend(params: list[Tensor]) -> str | None:
    """Which fused kernel steps ``params`` with compact state: ``"c"`` (CPU tensors),
    ``"triton"`` (CUDA tensors, or CPU ones when ``fused.BACKEND`` is ``"triton"``), or
    ``None`` (other devices, or a mix)."""
    from . import fused

    kinds = {"triton" if p.device.type == "cuda" or (p.device.type == "cpu"
                                                    and fused.BACKEND == "triton")
             else "c" if p.device.type == "cpu" else None for p in params}
    return kinds.pop() if len(kinds) == 1 else None


def _next_update_counts(states: list[dict[str, Any]]) -> list[int]:
    """:func:`_update_count` of each state as it will read after the coming update (which
    adds one to a ``step`` state), the ``step`` tensors read in one transfer (on a GPU one
    synchronisation per step, not one per parameter)."""
    steps = [state.get("step") for state in states]
    held = [step for step in steps if isinstance(step, Tensor)]
    if len({step.device for step in held}) == 1:
        values = iter(torch.stack([step.reshape(()) for step in held]).tolist())
    else:
        values = iter([step.item() for step in held])
    return [int(next(values)) + 1 if isinstance(step, Tensor) else _update_count(state)
            for step, state in zip(steps, states)]


# ---------------------------------------------------------------------------------------------
# state dicts
# ---------------------------------------------------------------------------------------------
def _saved_entry_full(value: Tensor, absmax: Tensor | None, block: int,
                      legacy: bool) -> Tensor:
    if absmax is not None:
        if shards.is_dtensor(value):  # (a sharded state dict: the whole tensor's scales)
            return shards.dequantize(value, shards.local_scales(value, absmax, block), block,
                                     torch.float32, dequantize_int8)
        return dequantize_int8(value, shards.whole(absmax), block, torch.float32,
                               legacy=legacy)
    return value.float() if value.dtype == torch.bfloat16 else value


def before_load(optimizer: Any, state_dict: Any) -> tuple[Any, dict[Any, dict[str, Any]]]:
    """The state dict in the full-precision layout the checks and torch's loader know, plus
    the compact entries to take over unchanged (same compact configuration on both sides).

    Groups keep the *receiving* optimizer's ``state_dtype``/``state_block_size``: a layout is
    a property of the optimizer, not of the checkpoint.
    """
    if not isinstance(state_dict, dict) or not isinstance(state_dict.get("param_groups"), list):
        return state_dict, {}
    saved_groups = state_dict["param_groups"]
    compact_saved = any(isinstance(g, dict) and is_compact(g) for g in saved_groups)
    if not compact_saved and not any(is_compact(g) for g in optimizer.param_groups):
        return state_dict, {}
    saved_state = state_dict.get("state")
    if not isinstance(saved_state, dict):
        return state_dict, {}
    new_groups = []
    new_state = dict(saved_state)
    keep: dict[Any, dict[str, Any]] = {}
    for index, saved in enumerate(saved_groups):
        if not isinstance(saved, dict):
            return state_dict, {}
        own = optimizer.param_groups[index] if index < len(optimizer.param_groups) else {}
        group = {k: v for k, v in saved.items() if k not in ("state_dtype", "state_block_size")}
        for key in ("state_dtype", "state_block_size"):
            if own.get(key) is not None:
                group[key] = own[key]
        new_groups.append(group)
        saved_dtype = saved.get("state_dtype")
        same = saved_dtype is not None and saved_dtype == own.get("state_dtype") and (
            saved_dtype != "int8" or _block(saved) == _block(own))
        block = _block(saved)
        for saved_id in saved.get("params", []):
            entries = saved_state.get(saved_id)
            if not isinstance(entries, dict) or saved_dtype is None:
                continue
            full: dict[str, Any] = {}
            taken: dict[str, Any] = {}
            legacy = False  # int8 codes of version 0.2.0's map: converted, never taken over
            for key, value in entries.items():
                if key == ROUNDINGS or any(key.endswith(suffix) and key[: -len(suffix)]
                                           in entries for suffix in (SCALE, LEGACY_SCALE)):
                    taken[key] = value
                    continue
                absmax = entries.get(key + SCALE)
                old_map = absmax is None and entries.get(key + LEGACY_SCALE) is not None
                if old_map:
                    absmax = entries[key + LEGACY_SCALE]
                if isinstance(value, Tensor) and (absmax is not None
                                                  or value.dtype == torch.bfloat16):
                    taken[key] = value
                    legacy = legacy or old_map
                    full[key] = _saved_entry_full(value, absmax, block, legacy=old_map)
                    if full[key].dim() and full[key].shape[-1:] == (2,) and _complex_param(
                            optimizer, index, saved, saved_id):
                        full[key] = torch.view_as_complex(full[key].contiguous())
                else:
                    full[key] = value
            new_state[saved_id] = full
            if same and not legacy:
                keep[saved_id] = taken
    return {**state_dict, "param_groups": new_groups, "state": new_state}, keep


def _complex_param(optimizer: Any, index: int, saved: dict[str, Any], saved_id: Any) -> bool:
    try:
        position = list(saved["params"]).index(saved_id)
        return bool(optimizer.param_groups[index]["params"][position].is_complex())
    except (IndexError, ValueError):
        return False


def after_load(optimizer: Any, saved_groups: list[Any], keep: dict[Any, dict[str, Any]]) -> None:
    """Compact what was loaded in full precision; put back compact entries taken over."""
    install(optimizer)
    for group, saved in zip(optimizer.param_groups, saved_groups):
        if not is_compact(group):
            continue
        for saved_id, param in zip(saved["params"], group["params"]):
            state = optimizer.state.get(param)
            if not state:
                continue
            sharded = shards.is_dtensor(param)
            taken = keep.get(saved_id)
            if taken:
                for key, value in taken.items():
                    if key == ROUNDINGS:
                        state[key] = value
                    elif sharded and key.endswith(SCALE):
                        state[key] = shards.local_scales(param, value, _block(group)).to(
                            param.device)
                    elif sharded and not shards.is_dtensor(value):  # from a full state dict
                        state[key] = shards.shard_like(value, param)
                    elif not sharded and shards.is_dtensor(value):
                        state[key] = shards.whole(value).to(param.device)
                    else:
                        state[key] = value.to(param.device)
                continue
            if sharded:  # full-precision state from a full state dict: this rank's shard
                for entry in _tensor_entries(optimizer, group):
                    value = state.get(entry.name)
                    if isinstance(value, Tensor) and not shards.is_dtensor(value):
                        state[entry.name] = shards.shard_like(value, param)
            compact(optimizer, group, param, stochastic=False)


def shareable(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict()``'s result with the int8 scales of DTensor parameters as the whole
    tensor's (collective over each shard group; see :mod:`.compact_shards`)."""
    if "_step_groups" not in optimizer.__dict__:
        return state_dict  # no compact group
    state = state_dict["state"]
    for group in state_dict["param_groups"]:
        if group.get("state_dtype") != "int8":
            continue
        for saved_id in group["params"]:
            entries = state.get(saved_id)
            if not entries:
                continue
            scales = {key: shards.global_scales(entries[key[: -len(SCALE)]], value, _block(group))
                      for key, value in entries.items()
                      if key.endswith(SCALE) and not shards.is_dtensor(value)
                      and shards.is_dtensor(entries.get(key[: -len(SCALE)]))}
            if scales:
                state[saved_id] = {**entries, **scales}
    return state_dict


def state_bytes(optimizer: Any) -> int:
    """Bytes of tensor state held (scales included; scalar state such as ``step`` too)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, Tensor):
                value = shards.local(value)
                total += value.numel() * value.element_size()
    return total
