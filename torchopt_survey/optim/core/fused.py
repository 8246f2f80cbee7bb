"""``fused=True``: one generated kernel per (device, dtype layout) group and step, every method.

``SurveyOptimizer._apply`` routes fused groups here. Nothing in this module knows a method: the
group's ``_preprocess`` + ``_update`` are traced once per configuration into an elementwise graph
(:mod:`.tracing`), and the graph is emitted as

* **CPU**: a C function compiled with the system C compiler and called through ctypes
  (:mod:`.emit_c`): one auto-vectorised pass over each tensor of the group, all tensors in one
  call, the elements split across ``torch.get_num_threads()`` threads;
* **CUDA**: a multi-tensor Triton kernel (:mod:`.emit_triton`): one launch per group, pointer
  tables for every tensor, float32 arithmetic, step counters and tensor hyperparameters read on
  the device (so the step is CUDA-graph capturable), ``grad_scale``/``found_inf`` handled inside.

Common semantics (those of torch's fused optimizers):

* state scalars (``step``, ``mu_product``) are float32 0-d tensors on the parameter's device --
  state loaded from a non-fused optimizer is converted on the first fused step;
* AMP: ``GradScaler.step(opt)`` sets ``opt.grad_scale`` / ``opt.found_inf``; gradients are divided
  by ``grad_scale`` inside the kernel (and written back unscaled, as torch does); when
  ``found_inf`` is nonzero nothing changes -- parameters, moments, step counts;
* complex parameters are updated as real views; sparse gradients are refused.

What reaches a kernel is checked first (:func:`_unwrap`, :func:`_check_supported`): plain strided
floating-point (or complex) tensors on CPU or CUDA. A DTensor is replaced by its local shard
(FSDP2); anything else -- meta tensors, integer dtypes, wrapper subclasses -- raises a
``RuntimeError`` naming the parameter before any compiler or driver runs. Gradients are
read-only: a gradient the kernel cannot walk directly (expanded, transposed) is read through a
private dense copy that is never written back (AMP's unscaled write-back aside).
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .tracing import StructureMemo, Traced, hp_values, structure_key, trace_update

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

_TRACES: dict[tuple, Traced] = {}
_CPU_KERNELS: dict[tuple, Any] = {}

#: "auto" (C on CPU, Triton on CUDA) or "triton" (Triton everywhere: with TRITON_INTERPRET=1
#: this runs the CUDA kernels on CPU tensors, which is how CI tests them without a GPU)
BACKEND = os.environ.get("TORCHOPT_SURVEY_FUSED_BACKEND", "auto")


def get_trace(opt: Any, spec: list[Any], group: dict[str, Any],
              lazy_present: tuple[bool, ...]) -> Traced:
    """The traced update for this group's configuration (traced once, then cached)."""
    key = (type(opt), structure_key(group, lazy_present))
    traced = _TRACES.get(key)
    if traced is None:
        traced = trace_update(type(opt), spec, group, lazy_present)
        _TRACES[key] = traced
    return traced


def _as_real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


# ---------------------------------------------------------------------------------------------
# what may reach a kernel: plain strided floating-point tensors on a supported device
# ---------------------------------------------------------------------------------------------
_PLAIN = (Tensor, torch.nn.Parameter)


def _dtensor_class() -> type[DTensor] | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def _plain_memory(t: Tensor) -> bool:
    """A tensor whose data_ptr is its data: no ``__torch_dispatch__`` (wrapper) subclass.

    (A Python subclass of ``Tensor``/``Parameter`` that only adds methods or
    ``__torch_function__`` still owns ordinary strided storage.)
    """
    return type(t) in _PLAIN or (
        getattr(type(t), "__torch_dispatch__", None) is torch._C._disabled_torch_dispatch_impl
    )


def _where(opt: Any, group: dict[str, Any], param: Tensor) -> str:
    """``params[j] ('name') of param_groups[g]`` for an error message."""
    g = next((i for i, other in enumerate(opt.param_groups) if other is group), "?")
    j = next((i for i, other in enumerate(group["params"]) if other is param), "?")
    names = group.get("param_names")
    label = f" ({names[j]!r})" if names and isinstance(j, int) and j < len(names) else ""
    return f"{type(opt).__name__}(fused=True): param_groups[{g}]['params'][{j}]{label}"


def _unwrap(
    opt: Any,
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[Tensor | None],
    width: int,
) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
    """The plain tensors the kernels work on: the local shard of a DTensor, else the tensor.

    A kernel sees raw memory, so a tensor subclass must never reach it. DTensor's update is
    elementwise on its local shard (param, grad and state share one sharding, checked here);
    any other subclass is refused naming the parameter. Plain tensors (the usual case) cost one
    type check each.
    """
    if all(type(t) in _PLAIN for t in params) and all(type(t) in _PLAIN for t in grads) and all(
            t is None or type(t) in _PLAIN for t in states):
        return params, grads, states
    dtensor = _dtensor_class()
    work_params, work_grads, work_states = [], [], []
    for index, (param, grad) in enumerate(zip(params, grads)):
        row = states[index * width : (index + 1) * width]
        if dtensor is not None and isinstance(param, dtensor):
            layout = (param.device_mesh, param.placements)
            for what, t in [("its gradient", grad), *((f"its state {i}", v) for i, v in
                                                       enumerate(row) if v is not None)]:
                if t.dim() == 0:
                    continue  # a scalar state (step): the same value on every rank
                if not isinstance(t, dtensor) or (t.device_mesh, t.placements) != layout:
                    raise RuntimeError(
                        f"{_where(opt, group, param)} is a DTensor with placements "
                        f"{param.placements}, but {what} is "
                        + (f"a DTensor with placements {t.placements}"
                           if isinstance(t, dtensor) else f"a {type(t).__name__}")
                        + ": the fused update runs elementwise on local shards, which needs "
                        "one sharding for all of them"
                    )
            # (the gradient was checked above to be a DTensor of the parameter's layout)
            param, grad = param.to_local(), grad.to_local()  # pyright: ignore[reportAttributeAccessIssue]
            row = [v.to_local() if isinstance(v, dtensor) else v for v in row]
        for what, t in [("", param), (" gradient", grad), *((" state", v) for v in row)]:
            if t is not None and not _plain_memory(t):
                raise RuntimeError(
                    f"{_where(opt, group, params[index])}{what} is a {type(t).__name__}: "
                    "a tensor subclass with its own __torch_dispatch__ has no plain memory for "
                    "the generated kernel; fused=True supports plain tensors and DTensor only "
                    "(use foreach=True for this parameter)"
                )
        work_params.append(param)
        work_grads.append(grad)
        work_states.extend(row)
    return work_params, work_grads, work_states


def _check_supported(opt: Any, group: dict[str, Any], original: Tensor, param: Tensor,
                     grad: Tensor) -> None:
    """Refuse what no kernel handles, before any compiler or driver runs (as torch does)."""
    for what, t in (("", param), (" gradient", grad)):
        if t.layout != torch.strided:
            if t.is_sparse:
                raise RuntimeError(f"{type(opt).__name__}(fused=True) does not support sparse "
                                   "gradients")
            raise RuntimeError(f"{_where(opt, group, original)}{what} has layout {t.layout}: "
                               "fused=True needs strided tensors")
        if t.device.type not in ("cpu", "cuda") or not (t.is_floating_point() or t.is_complex()):
            raise RuntimeError(
                f"{_where(opt, group, original)}{what} is a {t.device.type} tensor of dtype "
                f"{t.dtype}: fused=True needs floating-point (or complex) CPU or CUDA tensors"
            )
    if grad.device != param.device:
        raise RuntimeError(f"{_where(opt, group, original)}: its gradient is on {grad.device}, "
                           f"the parameter on {param.device}")


def fused_step(
    opt: Any,
    group: dict[str, Any],
    spec: list[Any],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[Tensor | None],
    plan_key: Any = None,
) -> None:
    """Update one parameter group with generated fused kernels (see the module docstring).

    ``plan_key`` names the prepared launch plan to reuse (default: the group's); a caller
    that steps a group part by part gives each part its own."""
    grad_scale: Tensor | None = getattr(opt, "grad_scale", None)
    found_inf: Tensor | None = getattr(opt, "found_inf", None)
    width = len(spec)
    originals = params  # state is keyed by these; the kernels see plain (local) tensors
    params, grads, states = _unwrap(opt, group, originals, grads, states, width)
    scalar_slots = [i for i, e in enumerate(spec) if e.kind == "scalar"]
    lazy_slots = [i for i, e in enumerate(spec) if e.kind == "lazy"]
    on_cpu = params[0].device.type == "cpu" and BACKEND != "triton"
    if on_cpu and found_inf is not None and float(found_inf.item()) != 0.0:
        return  # an overflow: the step is skipped and nothing changes (cheap to read on CPU)

    # Fast path: the same tensors at the same addresses as last step (the usual case) reuse the
    # prepared launches, so per-step host work is one data_ptr per tensor, not the row setup.
    plans = opt.__dict__.setdefault("_fused_plans", {})
    memos = opt.__dict__.setdefault("_fused_structure", {})
    memo = memos.get(id(group))
    if memo is None:
        memo = memos[id(group)] = StructureMemo()
    try:
        signature: tuple | None = (
            memo.key(group), grad_scale is None, found_inf is None, on_cpu,
            tuple([t.data_ptr() for t in params]), tuple([t.data_ptr() for t in grads]),
            tuple([0 if t is None else t.data_ptr() for t in states]),
        )
    except RuntimeError:  # sparse gradients have no data pointer: the slow path refuses them
        signature = None
    if plan_key is None:
        plan_key = id(group)
    plan = plans.get(plan_key)
    if plan is not None and signature is not None and plan[0] == signature:
        for launch in plan[1]:
            launch(group, grad_scale, found_inf)
        return

    partitions: dict[tuple, list[int]] = {}
    for index, (param, grad) in enumerate(zip(params, grads)):
        _check_supported(opt, group, originals[index], param, grad)
    states = list(states)  # (converted scalars are written into it below)
    for index, (param, grad) in enumerate(zip(params, grads)):
        row = states[index * width : (index + 1) * width]
        for slot in scalar_slots:
            value = row[slot]
            assert value is not None  # a scalar state exists from the first step on
            if value.dtype != torch.float32 or value.device != param.device:
                # e.g. state loaded from a non-fused optimizer: fused keeps float32 on device
                value = value.to(device=param.device, dtype=torch.float32)
                opt.state[originals[index]][spec[slot].name] = value
                states[index * width + slot] = value
        key = (
            param.device,
            param.dtype,
            grad.dtype,
            tuple(None if t is None else t.dtype for t in row),
            tuple(row[slot] is not None for slot in lazy_slots),
        )
        partitions.setdefault(key, []).append(index)

    launches: list[Any] = []
    for key, members in partitions.items():
        device = key[0]
        lazy_present = key[4]
        traced = get_trace(opt, spec, group, lazy_present)
        launch = _run_partition(opt, traced, group, spec, originals, params, grads, states,
                                members, device, grad_scale, found_inf, on_cpu)
        if launch is None:
            signature = None  # tensors were made or copied this step: not reusable as is
        else:
            launches.append(launch)
    if signature is not None and launches:
        plans[plan_key] = (signature, launches)
    else:
        plans.pop(plan_key, None)


def _run_partition(
    opt: Any,
    traced: Traced,
    group: dict[str, Any],
    spec: list[Any],
    originals: list[Tensor],
    params: list[Tensor],
    grads: list[Tensor],
    states: list[Tensor | None],
    members: list[int],
    device: torch.device,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    on_cpu: bool,
) -> Any:
    """Prepare and run one partition; return a launcher that repeats it, if reusable."""
    width = len(spec)
    outputs = traced.graph.outputs
    created: list[tuple[Tensor, str, Tensor]] = []  # lazy states made by this step
    copy_back: list[tuple[Tensor, Tensor]] = []
    copies: list[Tensor] = []  # read-only private copies (gradients): never written back
    rows: list[list[Tensor | None]] = []
    if not on_cpu and found_inf is not None and any(
        not present and name in outputs for name, kind, present in traced.slots
    ):
        # Lazy state (SGD's first momentum step) must not appear if the step is skipped; this
        # host read happens on that first step only.
        if float(found_inf.item()) != 0.0:
            return None
    for index in members:
        param, original = params[index], originals[index]
        row: list[Tensor | None] = [_as_real(param), _as_real(grads[index])]
        for slot, (name, kind, _present) in enumerate(traced.slots):
            value = states[index * width + slot]
            if kind == "scalar":
                row.append(value)
            elif value is not None:
                row.append(_as_real(value))
            elif name in outputs:
                # made like the original, so a DTensor parameter gets DTensor state
                buffer = torch.empty_like(original, memory_format=torch.preserve_format)
                created.append((original, name, buffer))
                # (a DTensor's empty_like is a DTensor)
                local = buffer if original is param else buffer.to_local()  # pyright: ignore
                row.append(_as_real(local))
            else:
                row.append(None)
        _make_dense(row, copy_back, copies, grad_scale is not None)
        rows.append(row)
    label = type(opt).__name__
    if on_cpu:
        launch = _cpu_launcher(traced, rows, grad_scale is not None, label)
    else:
        from .emit_triton import run_triton

        dtypes = tuple(None if t is None else t.dtype for t in rows[0])
        addresses = [0 if t is None else t.data_ptr() for row in rows for t in row]
        numels = [row[0].numel() for row in rows]  # type: ignore[union-attr]

        def launch(group: dict[str, Any], grad_scale: Any, found_inf: Any) -> None:
            run_triton(traced, group, dtypes, addresses, numels, device, grad_scale, found_inf,
                       label)

    launch(group, grad_scale, found_inf)
    for dense, original in copy_back:
        original.copy_(dense)
    for original, name, buffer in created:
        opt.state[original][name] = buffer
    return None if copy_back or created or copies else launch


def _is_dense(t: Tensor) -> bool:
    """Elements fill exactly ``numel`` consecutive slots (any dimension order, no gaps)."""
    expected = 1
    for stride, size in sorted((s, n) for n, s in zip(t.shape, t.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _make_dense(row: list[Tensor | None], copy_back: list[tuple[Tensor, Tensor]],
                copies: list[Tensor], unscales_grad: bool) -> None:
    """Kernels walk raw memory: every tensor of a row must be dense with the param's layout.

    Param and state are written, so a dense copy of one is copied back after the kernel. The
    gradient is read-only (an expanded gradient may even repeat one memory location): its copy is
    private and dropped -- except under AMP, where torch leaves the unscaled gradient in
    ``.grad``; that is copied back only where the gradient's elements are distinct memory.
    """
    param = row[0]
    assert param is not None
    if param.is_contiguous() and all(t is None or t.dim() == 0 or t.is_contiguous()
                                     for t in row[1:]):
        return
    if _is_dense(param) and all(
        t is None or t.dim() == 0 or t.stride() == param.stride() for t in row[1:]
    ):
        return
    for i, t in enumerate(row):
        if t is None or t.dim() == 0 or t.is_contiguous():
            continue
        dense = t.contiguous()
        row[i] = dense
        if i != 1 or (unscales_grad and torch._debug_has_internal_overlap(t) == 0):
            copy_back.append((dense, t))
        else:
            copies.append(dense)


def _cpu_launcher(
    traced: Traced, rows: list[list[Tensor | None]], has_gs: bool, label: str,
) -> Any:
    """A function that runs the C kernel over ``rows`` (address tables built once, here)."""
    from . import emit_c as C

    first = rows[0]
    dtypes = tuple(None if t is None else t.dtype for t in first)
    kernel_key = (id(traced), dtypes, has_gs)
    entry = _CPU_KERNELS.get(kernel_key)
    if entry is None:
        entry = (C.compile_c(C.emit_c(traced, dtypes, has_gs), label), traced)  # keeps id() valid
        _CPU_KERNELS[kernel_key] = entry
    fn = entry[0]
    nslots = len(first)
    n = len(rows)
    ptrs = (ctypes.c_void_p * (n * nslots))(
        *[0 if t is None else t.data_ptr() for row in rows for t in row]
    )
    numels = (ctypes.c_int64 * n)(*[row[0].numel() for row in rows])  # type: ignore[union-attr]
    # (no tensor is kept alive: a launcher is only reused when every address is unchanged)
    tables = (numels, ptrs)  # the launcher must keep the ctypes arrays it passes by address
    numels_at, ptrs_at = ctypes.addressof(numels), ctypes.addressof(ptrs)
    last: list[Any] = [None, None, 1]  # plain-number values, their table, nrep: reused as is

    def launch(group: dict[str, Any], grad_scale: Any, found_inf: Any) -> None:
        del found_inf  # checked on the host before any launch (a CPU read is free)
        _ = tables  # held by the closure: the kernel reads these ctypes arrays by address
        values = hp_values(traced, group)
        # a tensor value may have changed in place: only plain numbers can be compared
        plain = all(type(v) in (float, int, bool) for v in values)
        if plain and values == last[0]:
            hp, nrep = last[1], last[2]
        else:
            hp, nrep = _hp_table(values)
            last[:] = [values if plain else None, hp, nrep]
        scale = None
        if grad_scale is not None:
            scale_t = grad_scale.to(device="cpu", dtype=torch.float32).reshape(-1)
            scale = scale_t.data_ptr()
        # torch's intra-op thread count, read per step (torch.set_num_threads applies at once)
        fn(n, numels_at, ptrs_at, ctypes.addressof(hp), scale, torch.get_num_threads(), C.GRAIN,
           nrep)

    return launch


def _hp_table(values: list[Any]) -> tuple[Any, int]:
    """The C kernel's hyperparameter table: ``nrep`` values per leaf (replica-major rows).

    ``values``: each traced leaf's current value. Without per-replica values ``nrep`` is 1 and
    the table is one value per leaf; with them every leaf gets one value per replica (a plain
    value repeated).
    """
    nrep = max((v.numel() for v in values if isinstance(v, Tensor) and v.dim() == 1), default=1)
    flat: list[float] = []
    for value in values:
        if isinstance(value, Tensor) and value.dim() == 1 and value.numel() == nrep > 1:
            flat.extend(value.tolist())
        else:
            flat.extend([float(value)] * nrep)
    return (ctypes.c_double * max(1, len(flat)))(*flat), nrep


# ---------------------------------------------------------------------------------------------
# compact state read and written inside the C kernel (see compact_state.step_compact)
# ---------------------------------------------------------------------------------------------
def _compact_trace(opt: Any, group: dict[str, Any], spec: list[Any],
                   rows: list[list[Tensor]]) -> tuple[Any, tuple[torch.dtype, ...]]:
    """The traced update a compact kernel runs (every lazy state present: the kernel takes
    only compact state, which exists from the first step on) and the dtypes of a row."""
    lazy_present = tuple(True for entry in spec if entry.kind == "lazy")
    return get_trace(opt, spec, group, lazy_present), tuple(t.dtype for t in rows[0])


def run_compact_cpu(
    opt: Any,
    group: dict[str, Any],
    spec: list[Any],
    rows: list[list[Tensor]],
    extras: list[list[int]],
    compact: tuple[Any, ...],
    block: int,
) -> None:
    """One C kernel call over ``rows`` (param, grad, every state in spec order, all present,
    contiguous, on the CPU) whose tensor states are compact: ``compact[slot]`` names each
    slot's form (see :func:`.emit_c.emit_c_compact`), ``extras`` holds each row's extra
    entries (bfloat16 seeds, int8 scale addresses), ``block`` the elements of a unit of work."""
    from . import emit_c as C

    traced, dtypes = _compact_trace(opt, group, spec, rows)
    key = ("compact", id(traced), dtypes, compact, block)
    entry = _CPU_KERNELS.get(key)
    if entry is None:
        source = C.emit_c_compact(traced, dtypes, False, compact, block)
        entry = (C.compile_c(source, type(opt).__name__), traced)  # keeps id() valid
        _CPU_KERNELS[key] = entry
    n = len(rows)
    ptrs = (ctypes.c_void_p * (n * (len(dtypes) + len(extras[0]))))(
        *[value for row, extra in zip(rows, extras)
          for value in [t.data_ptr() for t in row] + extra])
    numels = (ctypes.c_int64 * n)(*[row[0].numel() for row in rows])
    hp, nrep = _hp_table(hp_values(traced, group))
    entry[0](n, ctypes.addressof(numels), ctypes.addressof(ptrs), ctypes.addressof(hp), None,
             torch.get_num_threads(), C.GRAIN, nrep)


def run_compact_triton(
    opt: Any,
    group: dict[str, Any],
    spec: list[Any],
    rows: list[list[Tensor]],
    extras: list[list[int]],
    compact: tuple[Any, ...],
    block: int | None,
) -> None:
    """:func:`run_compact_cpu` on the Triton backend: one launch of the compact kernel
    (:func:`.emit_triton.emit_triton_compact`) over ``rows`` (on one device); ``block`` is
    the int8 block size, ``None`` for bfloat16 state (the kernel's own unit of work). AMP's
    ``grad_scale`` / ``found_inf`` are handled inside, as by the ordinary kernel."""
    from . import emit_triton as T

    traced, dtypes = _compact_trace(opt, group, spec, rows)
    T.run_triton_compact(
        traced, group, dtypes, compact, [t.data_ptr() for row in rows for t in row],
        [value for extra in extras for value in extra], [row[0].numel() for row in rows],
        rows[0][0].device, T.BF16_UNIT if block is None else block, type(opt).__name__,
        getattr(opt, "grad_scale", None), getattr(opt, "found_inf", None))
