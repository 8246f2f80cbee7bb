"""Compact optimizer state of DTensor parameters (FSDP2's shards), in the unsharded layout.

A DTensor parameter whose placements are ``Shard(0)`` (on one mesh dimension) and
``Replicate()`` -- FSDP2's ``fully_shard``, HSDP -- holds a contiguous range of the elements of
the whole tensor in row-major order: ``[start, start + n)``. Its compact state is the state of
the unsharded parameter restricted to that range, so that a sharded run equals the one-process
run and a checkpoint is independent of the sharding:

* ``bfloat16``: the state is a DTensor placed like the parameter, its local shard bfloat16.
  Stochastic rounding draws the bits of each element from its *global* index: the hash of
  :func:`.compact_state.rounding_noise` is ``index * K + seed`` (uint32), so the shard's bits
  are those of the seed moved by ``start * K`` (:func:`shard_seed`) -- the same kernels and
  functions, with another seed.
* ``int8``: the blocks are those of the whole tensor, flattened (``block`` elements from
  element 0). A shard boundary may cut a block; such a block's scale is its largest magnitude
  over every rank that holds part of it: before quantising, each rank exchanges the maxima of
  its first and last blocks with the other ranks of the shard group (one small all-gather per
  state tensor, only for tensors where a boundary -- known from the global shape -- cuts a
  block), so the codes and scales are the unsharded ones. The codes are a DTensor
  placed like the parameter; the local scales (those of the blocks the shard touches, a
  boundary block's on both ranks) are a plain tensor while training. ``state_dict()``
  presents them as the whole tensor's scales (a replicated DTensor, gathered over the shard
  group), which torch.distributed.checkpoint saves once and loads into any sharding, or into
  a plain optimizer; loading takes each rank's range back out of them.

Quantising and ``state_dict()`` are therefore collective over the shard group for int8 state:
every rank steps, loads and saves together (as FSDP2's forward and backward already require).
The fused C kernel steps the local shards (:func:`in_kernel`: bfloat16 with the moved seeds,
int8 where no block is cut); the rest takes the general path (expand, the method's step on the
DTensors, compact).
Other placements (a shard of another dimension, nested or strided shards, ``Partial``) and
complex DTensor parameters are refused by :func:`check`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .codes import HASH_MULTIPLIERS

_LOW32 = 0xFFFFFFFF


def is_dtensor(value: Any) -> bool:
    """Whether ``value`` is a DTensor (without importing torch.distributed.tensor: where it
    has not been imported, nothing can be one)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(value, module.DTensor)


def local(value: Any) -> Tensor:
    """A DTensor's local shard; any other tensor itself."""
    return value.to_local() if is_dtensor(value) else value


def whole(value: Any) -> Tensor:
    """A DTensor's whole tensor (a collective where it is sharded); any other tensor itself."""
    return value.full_tensor() if is_dtensor(value) else value


def unsupported(param: Any) -> str | None:
    """Why compact state cannot be kept for this DTensor parameter's layout (None: it can)."""
    from torch.distributed.tensor import Replicate, Shard

    if param.is_complex():
        return "a complex DTensor"
    shards = 0
    for placement in param.placements:
        if type(placement) is Shard and placement.dim == 0:
            shards += 1
        elif type(placement) is not Replicate:
            return f"placements {tuple(param.placements)}"
    if shards > 1:
        return f"placements {tuple(param.placements)} (dim 0 sharded twice)"
    return None


def check(param: Any, where: str, index: int, state_dtype: str) -> None:
    """Refuse a DTensor parameter whose compact state could not be kept, naming the cause."""
    reason = unsupported(param)
    if reason is not None:
        raise ValueError(
            f"{where}state_dtype={state_dtype!r} is not supported for params[{index}]: "
            f"{reason}. Compact state of DTensor parameters needs each rank to hold whole "
            "rows -- placements Shard(0) (FSDP2's fully_shard) and Replicate() -- so that its "
            "shard is one range of the tensor's elements; use state_dtype=None for this layout"
        )


def flat_start(value: Any) -> int:
    """The row-major index, in the whole tensor, of the local shard's first element."""
    local = value.to_local()
    if local.numel() == 0 or value.dim() == 0:
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(value.shape, value.device_mesh,
                                                      value.placements)
    row = value.numel() // value.shape[0]
    return int(offset[0]) * row


def wrap(local: Tensor, like: Any) -> Any:
    """``local`` as the local shard of a DTensor placed like ``like`` (same global shape)."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())


def shard_seed(seed: int, start: int) -> int:
    """The seed whose rounding bits for element ``i`` are ``seed``'s for ``start + i``."""
    return (seed + start * HASH_MULTIPLIERS[0]) & _LOW32


def round_bfloat16(value: Any, seed: int, round_local: Callable[[Tensor, int], Tensor]) -> Any:
    """``round_local`` (:func:`.compact_state.round_bfloat16`) on the local shard, with the
    bits of its elements' global indices."""
    return wrap(round_local(value.to_local(), shard_seed(seed, flat_start(value))), value)


def _shard_group(value: Any, block: int) -> Any:
    """The process group of the mesh dimension that shards dim 0, where a shard boundary cuts
    one of the tensor's ``block``-element blocks (None: no block is cut). Every rank of the
    group decides alike: the boundaries follow from the global shape (``torch.chunk``'s split
    of dim 0, as ``Shard(0)`` places it)."""
    from torch.distributed.tensor import Shard

    for dim, placement in enumerate(value.placements):
        if type(placement) is Shard:
            ranks = value.device_mesh.size(dim)
            rows = -(-value.shape[0] // ranks)
            row = value.numel() // value.shape[0] if value.shape[0] else 0
            cuts = range(rows * row, value.numel(), rows * row) if rows * row else ()
            if any(cut % block for cut in cuts):
                return value.device_mesh.get_group(dim)
            return None
    return None


def in_kernel(param: Any, grad: Any, block: int) -> bool:
    """Whether the fused C kernel can step this shard's compact state on its local tensors:
    the gradient placed like the parameter and, for int8 (``block`` > 0), no block cut by a
    shard boundary (the kernel computes a block's scale from the elements it holds)."""
    return (is_dtensor(grad) and grad.device_mesh == param.device_mesh
            and grad.placements == param.placements
            and not (block and _shard_group(param, block) is not None))


def split_cut(params: list[Any], block: int) -> tuple[list[Any], list[Any]]:
    """(``params`` whose int8 blocks no shard boundary cuts, those whose blocks one cuts)."""
    whole: list[Any] = []
    cut: list[Any] = []
    for param in params:
        (cut if is_dtensor(param) and _shard_group(param, block) is not None else whole).append(
            param)
    return whole, cut


def _gather(group: Any, tensor: Tensor) -> list[Tensor]:
    import torch.distributed as dist

    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor, group=group)
    return parts


def _block_range(value: Any, block: int) -> tuple[int, int, int]:
    """(phase, first block, number of blocks) of the local shard: it starts ``phase``
    elements into the whole tensor's block ``first``."""
    start, count = flat_start(value), value.to_local().numel()
    if count == 0:
        return 0, 0, 0
    phase = start % block
    return phase, start // block, -(-(phase + count) // block)


def quantize(value: Any, block: int, non_negative: bool,
             quantize_local: Callable[..., tuple[Tensor, Tensor]]) -> tuple[Any, Tensor]:
    """(codes placed like ``value``, the local scales): ``quantize_local``
    (:func:`.compact_state.quantize_int8`) in the whole tensor's blocks, a block cut by a shard
    boundary scaled by its maximum over every rank."""
    phase, first, count = _block_range(value, block)
    group = _shard_group(value, block)

    def combine(peaks: Tensor) -> None:
        if group is None:
            return
        ends = [first, peaks[0].item(), first + count - 1, peaks[-1].item()] if count else (
            [-1.0, 0.0, -1.0, 0.0])
        mine = torch.tensor(ends, dtype=torch.float64, device=peaks.device)
        for part in _gather(group, mine):
            for index, peak in (part[:2].tolist(), part[2:].tolist()):
                i = int(index) - first
                if 0 <= i < count and peak > peaks[i]:
                    peaks[i] = peak

    codes, scales = quantize_local(value.to_local(), block, non_negative, phase=phase,
                                  combine=combine)
    return wrap(codes, value), scales


def dequantize(codes: Any, scales: Tensor, block: int, dtype: torch.dtype,
               dequantize_local: Callable[..., Tensor]) -> Any:
    """``dequantize_local`` (:func:`.compact_state.dequantize_int8`) of the local shard."""
    phase, _, _ = _block_range(codes, block)
    return wrap(dequantize_local(codes.to_local(), scales, block, dtype, phase=phase), codes)


def local_scales(codes: Any, scales: Tensor, block: int) -> Tensor:
    """The scales of the blocks that ``codes``' local shard touches, from the whole tensor's
    (a DTensor of any placement, or a plain tensor)."""
    full = whole(scales)
    _, first, count = _block_range(codes, block)
    if full.numel() != -(-codes.numel() // block):
        raise ValueError(
            f"int8 state of a {tuple(codes.shape)} parameter in blocks of {block} has "
            f"{-(-codes.numel() // block)} scales, the state dict holds {full.numel()}")
    return full.reshape(-1)[first:first + count].clone()


def global_scales(codes: Any, scales: Tensor, block: int) -> Any:
    """The whole tensor's scales as a replicated DTensor (collective over the shard group)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    mesh = codes.device_mesh
    total = -(-codes.numel() // block)
    dims = [dim for dim, placement in enumerate(codes.placements) if type(placement) is Shard]
    if not dims:
        full = scales
    else:
        group = mesh.get_group(dims[0])
        _, first, count = _block_range(codes, block)
        heads = _gather(group, torch.tensor([first, count], dtype=torch.int64,
                                            device=scales.device))
        width = max(int(head[1]) for head in heads)
        padded = torch.zeros(width, dtype=scales.dtype, device=scales.device)
        padded[:count] = scales
        full = torch.zeros(total, dtype=scales.dtype, device=scales.device)
        for head, part in zip(heads, _gather(group, padded)):
            start, length = int(head[0]), int(head[1])
            full[start:start + length] = part[:length]
    return DTensor.from_local(full, mesh, [Replicate()] * mesh.ndim, run_check=False)


def shard_like(full: Tensor, like: Any) -> Any:
    """A whole tensor (plain: a full state dict) as a DTensor placed like ``like``."""
    local_shape = like.to_local().shape
    start = flat_start(like)
    local = full.reshape(-1)[start:start + local_shape.numel()].reshape(local_shape).clone()
    return wrap(local.to(like.device), like)
