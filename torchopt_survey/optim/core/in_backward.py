"""The step inside backward: each parameter is updated as soon as its gradient is complete.

``SurveyOptimizer.step_in_backward(model)`` registers a
``Tensor.register_post_accumulate_grad_hook`` on every parameter (as PyTorch's tutorial
"How to save memory by fusing the optimizer step into the backward pass" does), runs the
optimizer's own update for that one parameter -- on the path its group selects (forloop,
foreach, or the fused C / Triton kernel) -- and frees the gradient. The gradients of the whole
model then never exist together, which is what saves memory.

Unlike one optimizer per parameter, this keeps *one* optimizer: its ``param_groups``, ``state``
and ``state_dict()`` are the ordinary ones (a checkpoint moves freely between the two ways of
stepping), schedulers change its groups as usual, and its step pre/post hooks run once per
optimizer step (pre: before the first parameter of the step, post: when that backward ends).

The per-parameter update is the same arithmetic as ``step()`` (every path is elementwise per
parameter), so the trajectories are bitwise those of the ordinary loop.

Parameters whose gradients are small are stepped together: a parameter whose gradient has
arrived waits in its group's *bucket* until the bucket's gradients reach ``bucket_bytes``
(or backward ends), and the bucket is then stepped in one call of the group's path and its
gradients freed. Each call has a fixed cost (checks, the kernel's argument tables), which a
bias or a norm's scale would otherwise pay alone; a gradient of ``bucket_bytes`` or more is
stepped as soon as it arrives, so at most ``bucket_bytes`` of waiting gradients exist beside
the one that just arrived. ``bucket_bytes=0`` steps every parameter at once.

What cannot be done inside backward is refused, never approximated: global-norm gradient
clipping (it needs every gradient before any update), closures, DistributedDataParallel (its
all-reduce runs after these hooks), differentiable steps, and a parameter whose gradient
arrives twice in one backward pass (reentrant checkpointing that reuses a parameter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks
from torch.utils.hooks import RemovableHandle

from .compact_shards import is_dtensor


@dataclass
class _Bucket:
    """The parameters of one group whose gradients wait for their update, and those
    gradients' bytes."""

    group: dict[str, Any]
    params: list[Tensor] = field(default_factory=list)
    nbytes: int = 0


class StepInBackward:
    """The installed hooks of :meth:`SurveyOptimizer.step_in_backward`; ``remove()`` undoes
    them (the optimizer then steps with ``step()`` again, its state unchanged)."""

    def __init__(self, optimizer: Any, params: Sequence[Tensor], accumulation_steps: int,
                 module: torch.nn.Module | None, bucket_bytes: int) -> None:
        self.optimizer = optimizer
        self.accumulation_steps = accumulation_steps
        self.bucket_bytes = bucket_bytes
        #: per group (by id): the parameters whose gradient waits for their update
        self._buckets: dict[int, _Bucket] = {}
        group_of: dict[int, dict[str, Any]] = {}
        for group in optimizer.param_groups:
            for param in group["params"]:
                group_of[id(param)] = group
        self._params = params
        self._groups = [group_of[id(param)] for param in params]
        self._index = {id(param): i for i, param in enumerate(params)}
        #: backward passes each parameter has seen since its last update (accumulation)
        self._pending = [0] * len(params)
        #: parameters whose gradient arrived since the module's last forward (or, given a
        #: list of tensors, in the current backward pass -- each reentrant checkpoint segment
        #: is a pass of its own there, so only the module form sees across segments): a
        #: second arrival would step on a partial gradient
        self._seen: set[int] = set()
        self._callback_queued = False
        self._stepped_this_pass = False
        self._module = module
        self._handles: list[RemovableHandle] = [
            param.register_post_accumulate_grad_hook(self._on_gradient) for param in params
        ]
        self._handles.append(optimizer.register_step_pre_hook(_refuse_closure))
        if module is not None:
            self._handles.append(module.register_forward_pre_hook(self._on_forward))

    # ------------------------------------------------------------------------------------
    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if getattr(self.optimizer, "_in_backward", None) is self:
            del self.optimizer._in_backward

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def _on_forward(self, module: Any, args: Any) -> None:
        if torch.is_grad_enabled():
            self._seen.clear()

    def _on_gradient(self, param: Tensor) -> None:
        index = self._index[id(param)]
        if index in self._seen:
            # (the waiting parameters keep their gradients, for the step() the error suggests)
            self._buckets.clear()
            raise RuntimeError(
                f"step_in_backward: parameter {self._describe(index)} received its gradient "
                "twice in one backward pass (e.g. reentrant checkpointing of a shared "
                "parameter, or a second backward of the same forward); stepping on a partial "
                "gradient would be wrong -- use step() after backward() for this model"
            )
        self._seen.add(index)
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_of_backward)
        pending = self._pending[index] + 1
        if pending < self.accumulation_steps:
            self._pending[index] = pending  # an earlier micro-batch: the gradient accumulates
            return
        self._pending[index] = 0
        if not self._stepped_this_pass:
            self._stepped_this_pass = True
            self._run_pre_hooks()
        group = self._groups[index]
        bucket = self._buckets.setdefault(id(group), _Bucket(group))
        bucket.params.append(param)
        grad = param.grad
        bucket.nbytes += grad.numel() * grad.element_size() if grad is not None else 0
        if bucket.nbytes >= self.bucket_bytes:
            self._step_bucket(id(group))

    def _step_bucket(self, key: int) -> None:
        bucket = self._buckets.pop(key)
        try:
            with torch.no_grad():
                self.optimizer._step_parameters(bucket.group, bucket.params)
        finally:
            for param in bucket.params:
                param.grad = None

    def _end_of_backward(self) -> None:
        self._callback_queued = False
        if self._module is None:
            self._seen.clear()
        try:
            for key in list(self._buckets):
                self._step_bucket(key)
        finally:
            self._buckets.clear()
        if self._stepped_this_pass:
            self._stepped_this_pass = False
            optimizer = self.optimizer
            optimizer._opt_called = True  # what lr schedulers check for "step() ran"
            optimizer._optimizer_step_code()
            for hook in chain(optimizer._optimizer_step_post_hooks.values(),
                              _global_optimizer_post_hooks.values()):
                hook(optimizer, (), {})

    def _run_pre_hooks(self) -> None:
        optimizer = self.optimizer
        for hook in chain(_global_optimizer_pre_hooks.values(),
                          optimizer._optimizer_step_pre_hooks.values()):
            if hook is _refuse_closure:
                continue
            if hook(optimizer, (), {}) is not None:
                raise RuntimeError(
                    "step_in_backward: a step pre-hook returned new arguments, but a step "
                    "inside backward takes none"
                )

    def _describe(self, index: int) -> str:
        group = self._groups[index]
        param = self._params[index]
        g = next(i for i, other in enumerate(self.optimizer.param_groups) if other is group)
        j = next(i for i, other in enumerate(group["params"]) if other is param)
        names = group.get("param_names")
        return f"param_groups[{g}]['params'][{j}]" + (f" ({names[j]!r})" if names else "")


def _refuse_closure(optimizer: Any, args: tuple, kwargs: dict) -> None:
    # (the hook sees step's arguments with the optimizer first)
    if any(arg is not None for arg in args[1:]) or kwargs.get("closure") is not None:
        raise RuntimeError(
            f"{type(optimizer).__name__}.step(closure): this optimizer steps inside backward "
            "(step_in_backward), where a closure cannot be re-evaluated; call remove() on the "
            "handle step_in_backward returned to step with closures again"
        )


def install(optimizer: Any, model_or_params: Any, accumulation_steps: int,
            max_grad_norm: float | None, bucket_bytes: int) -> StepInBackward:
    """Check everything, then register the hooks (see :meth:`SurveyOptimizer.step_in_backward`)."""
    name = type(optimizer).__name__
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 0:
        raise ValueError(f"bucket_bytes must be an integer >= 0, got {bucket_bytes!r}")
    if max_grad_norm is not None:
        raise ValueError(
            f"max_grad_norm={max_grad_norm!r}: global-norm gradient clipping needs every "
            "gradient before the first update, which a step inside backward cannot wait for; "
            "clip per parameter (torch.nn.utils.clip_grad_value_ in a hook) or use step() "
            "after clip_grad_norm_"
        )
    if (isinstance(accumulation_steps, bool) or not isinstance(accumulation_steps, int)
            or accumulation_steps < 1):
        raise ValueError(
            f"accumulation_steps must be an integer >= 1, got {accumulation_steps!r}"
        )
    if getattr(optimizer, "_in_backward", None) is not None:
        raise RuntimeError(
            f"{name}.step_in_backward: already installed; call remove() on its handle first"
        )
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model_or_params, DistributedDataParallel):
        raise RuntimeError(
            "step_in_backward does not support DistributedDataParallel: its gradient hooks "
            "run before DDP's bucket all-reduce, so they would update with this rank's "
            "unreduced gradient. Use step() after backward() under DDP (or FSDP2 with "
            "step()), or step inside backward without DDP"
        )
    module: torch.nn.Module | None = None
    if isinstance(model_or_params, torch.nn.Module):
        module = model_or_params
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    elif isinstance(model_or_params, Tensor):
        raise TypeError(
            "model_or_params must be an nn.Module or an iterable of Tensors, got a single "
            "Tensor (wrap it in a list)"
        )
    else:
        try:
            params = list(model_or_params)
        except TypeError:
            raise TypeError(
                "model_or_params must be an nn.Module or an iterable of Tensors, got "
                f"{type(model_or_params).__name__}"
            ) from None
        if not all(isinstance(p, Tensor) for p in params):
            raise TypeError("model_or_params: every entry must be a Tensor")
    if not params:
        raise ValueError("model_or_params has no parameters that require grad")
    owned = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    seen: set[int] = set()
    for index, param in enumerate(params):
        group = owned.get(id(param))
        if group is None:
            raise ValueError(
                f"model_or_params: parameter {index} (shape {tuple(param.shape)}) is not in "
                f"{name}'s param_groups"
            )
        if id(param) in seen:
            raise ValueError(f"model_or_params: parameter {index} is listed twice")
        seen.add(id(param))
        if is_dtensor(param):
            raise RuntimeError(
                f"model_or_params: parameter {index} is a DTensor (sharded by FSDP2): its "
                "gradient arrives through FSDP's reduce-scatter after autograd's hooks, so a "
                "step inside backward would update nothing. Use step() after backward()"
            )
        if group.get("differentiable"):
            raise ValueError(
                f"{name}(differentiable=True) cannot step inside backward: the update "
                "would have to be part of the graph that is being differentiated"
            )
        if not param.is_leaf:
            raise ValueError(f"model_or_params: parameter {index} is not a leaf tensor")
    handle = StepInBackward(optimizer, params, accumulation_steps, module, bucket_bytes)
    optimizer._in_backward = handle
    return handle
