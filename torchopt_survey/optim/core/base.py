"""Shared machinery that turns one method's update math into torch.optim-style optimizers.

A method subclasses :class:`SurveyOptimizer` and supplies three things:

* ``_hyperparameters``: its constructor arguments with their checks (a table);
* ``_state_spec(group)``: the per-parameter state it keeps, in torch.optim's ``state_dict`` order;
* ``_update(ops, param, grad, state, hp)``: the update equation, written once against an ``ops``
  backend (see :mod:`torchopt_survey.optim.core.ops`).

Everything else is here, once: argument checks, lazy state creation, ``maximize``, weight decay
(L2 or decoupled), complex parameters (viewed as real pairs), parameters without gradients,
sparse gradients (row-wise, for methods that allow them), the forloop / foreach / differentiable
paths, capturable and compiled steps (scalars kept as device tensors), and strict
``load_state_dict`` checks. The structure follows torch.optim (``_init_group`` fills lists,
``step`` is wrapped by ``_use_grad_for_differentiable``) so ``torch.compile`` treats these
optimizers like its own.
"""

# The state lists below hold None only in the slots of lazily created entries, which the code
# tests before use; the checker cannot follow that per slot.
# pyright: reportOptionalMemberAccess=false, reportOptionalSubscript=false
# pyright: reportOptionalIterable=false

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    _default_to_fused_or_foreach,
    _get_scalar_dtype,
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
    _use_grad_for_differentiable,
)

from . import compact_state
from . import validation as V
from .ops import (
    EagerOps,
    ForeachOps,
    FunctionalOps,
    StoredScalar,
    TensorOps,
    broadcast_scalars,
)
from .replicas import Replicas, per_ndim, replica_count, wrap_group

StateKind = Literal["scalar", "tensor", "lazy"]

# Up to this many tensors, per-tensor scalar reads/writes beat building a batched tensor.
_FEW = 16

# Hyperparameters that may be given as tensors (besides the betas pair).
_TENSOR_CAPABLE = ("lr", "weight_decay")

# Flags that torch.optim added over releases: a state_dict saved without them still loads.
_OPTIONAL_GROUP_KEYS = frozenset(
    {"maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay",
     "state_dtype", "state_block_size"}
)


class StateSpec(NamedTuple):
    """One entry of a parameter's optimizer state.

    ``scalar``: a 0-d tensor (like ``step``), starting at ``init``;
    ``tensor``: shaped like the parameter, filled with ``init``;
    ``lazy``: shaped like the parameter but created by the update math on first use
    (torch.optim's SGD momentum buffer starts as a copy of the first gradient).

    Args:
        name (str): the key in ``optimizer.state[param]`` (torch.optim's name, e.g.
            ``"exp_avg"``).
        kind (str): ``"scalar"``, ``"tensor"`` or ``"lazy"``, as above.
        init (float, optional): the initial fill value (default ``0.0``).
        non_negative (bool, optional): the state never goes negative (second moments,
            accumulators), so compact ``int8`` state may store it on an unsigned code
            (default ``False``).
    """

    name: str
    kind: StateKind
    init: float = 0.0
    #: never negative (second moments, accumulators): compact state may use an unsigned code
    non_negative: bool = False


def _tensor_hyperparameter(value: Any, device: torch.device | None) -> Any:
    """A tensor hyperparameter on the parameters' device (capturable/compiled steps)."""
    if isinstance(value, Replicas):  # one value per replica: reshaped per parameter later
        if device is not None and value.device != device:
            return Replicas.wrap(value.to(device))
        return value
    if isinstance(value, Tensor):
        value = value.reshape(())
        return value.to(device) if device is not None and value.device != device else value
    return value


def _read_scalar(stored: Tensor | None, tensor_scalars: bool) -> Any:
    """A scalar state entry as the math sees it: the tensor itself, or a Python float (one
    that remembers a non-float64 tensor's dtype, see :func:`.ops.stored_mul`)."""
    if tensor_scalars:
        return stored
    return _as_python_scalar(stored.item(), stored.dtype)


def _as_python_scalar(value: float, dtype: torch.dtype) -> Any:
    return value if dtype is torch.float64 else StoredScalar(value, dtype)


def _store_scalar(stored: Tensor | None, new: Any, tensor_scalars: bool) -> None:
    """Write what the math computed back into the scalar state tensor, in place."""
    if not tensor_scalars:
        stored.fill_(new)
    elif new is not stored:
        stored.copy_(new)


def _holds_tensor(group: dict[str, Any]) -> bool:
    """Whether some value of the group is a tensor, or a tuple holding one (``betas``)."""
    for value in group.values():
        if isinstance(value, Tensor) or isinstance(value, tuple) and any(
                isinstance(v, Tensor) for v in value):
            return True
    return False


def _decays(weight_decay: Any) -> bool:
    """Whether weight decay applies (a tensor -- per-replica values too, some of them 0 --
    always takes the decay branch: adding 0 * param changes nothing)."""
    return isinstance(weight_decay, Tensor) or getattr(weight_decay, "per_replica", False) or (
        weight_decay != 0)


def _float_hyperparameter(value: Any) -> Any:
    if isinstance(value, Tensor) and not isinstance(value, Replicas):
        return value.item()
    return value


def _split_names(param_group: dict[str, Any], params: list[Any]) -> list[Any]:
    """Take ``(name, tensor)`` pairs apart as torch.optim does (``named_parameters()``).

    The tensors become the group's ``params`` and the names its ``param_names``; a group must
    name all of its tensors or none. Returns the tensors (other entries are left for the
    caller's type check).
    """
    unnamed = [index for index, param in enumerate(params) if not isinstance(param, tuple)]
    if len(unnamed) == len(params):
        return params
    if unnamed:
        raise ValueError(  # torch.optim's wording, so code matching its message keeps working
            "all optimizer params should be with/without names. Some param names are missing "
            f"(params[{unnamed[0]}] has no name)"
        )
    names: list[str] = []
    tensors: list[Any] = []
    for index, pair in enumerate(params):
        if len(pair) != 2 or not isinstance(pair[0], str) or not isinstance(pair[1], Tensor):
            raise TypeError(
                f"params[{index}]: a named parameter must be a (str, Tensor) pair as yielded "
                f"by named_parameters(), got {tuple(type(x).__name__ for x in pair)}"
            )
        names.append(pair[0])
        tensors.append(pair[1])
    param_group["params"] = tensors
    param_group["param_names"] = names
    return tensors


class SurveyOptimizer(Optimizer):
    """Base class: a torch.optim.Optimizer whose math lives in ``_update``.

    A method subclasses it with a ``_hyperparameters`` table, a ``_state_spec`` and a static
    ``_update(ops, param, grad, state, hp)``; the base class runs that update on every path
    (see the module docstring and the architecture page of the documentation).

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts (an
            ordered collection, not a set). As for ``torch.optim.Optimizer``.
        defaults (dict): the constructor's hyperparameters, checked against
            ``_hyperparameters`` before anything is built. As for ``torch.optim.Optimizer``.
    """

    #: constructor arguments beyond ``params`` and their checks, in signature order
    _hyperparameters: ClassVar[dict[str, V.Check]] = {}
    #: group keys that select a survey formula instead of torch.optim's (not in torch's groups)
    _switches: ClassVar[tuple[str, ...]] = ()
    #: whether sparse gradients are accepted (updated row-wise, only the rows present)
    _supports_sparse: ClassVar[bool] = False

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        wrap_group(defaults)
        self._check_group(defaults, where="")
        if isinstance(params, Tensor):
            raise TypeError(
                "params must be an iterable of Tensors or dicts, but got a single Tensor "
                "(wrap it in a list)"
            )
        if isinstance(params, (set, frozenset)):
            raise TypeError(
                "params must be an ordered collection (list, tuple, generator), not a set: the "
                "order of tensors in a set changes between runs, and state_dict depends on it"
            )
        if params is None or isinstance(params, (str, bytes, dict)) or not hasattr(
            params, "__iter__"
        ):
            raise TypeError(
                "params must be an iterable of Tensors, (name, Tensor) pairs or parameter-group "
                f"dicts, got {type(params).__name__}"
            )
        super().__init__(params, defaults)
        if defaults.get("fused"):
            # GradScaler then hands grad_scale/found_inf to step(): the fused kernels unscale
            # inside and skip the whole step when a gradient overflowed
            self._step_supports_amp_scaling = True

    @staticmethod
    def profile_hook_step(func: Callable[..., Any]) -> Callable[..., Any]:
        """torch.optim's step wrapper (hooks, profiler label), minus an idle profiler's cost.

        torch.optim enters ``record_function`` on every step, which costs several
        microseconds even when no profiler runs -- a third of a small foreach step. Here the
        label is recorded only while a profiler (or a compiler) is active; the step pre/post
        hooks run exactly as in torch.optim.
        """
        labelled = Optimizer.profile_hook_step(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            profiling = torch._C._autograd._profiler_enabled()  # pyright: ignore[reportAttributeAccessIssue]
            if torch.compiler.is_compiling() or profiling:
                return labelled(*args, **kwargs)
            self = args[0]
            for pre_hook in chain(
                _global_optimizer_pre_hooks.values(), self._optimizer_step_pre_hooks.values()
            ):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if isinstance(result, tuple) and len(result) == 2:
                        args, kwargs = result
                    else:
                        raise RuntimeError(
                            f"{func} must return None or a tuple of (new_args, new_kwargs), "
                            f"but got {result}."
                        )
            out = func(*args, **kwargs)
            self._optimizer_step_code()
            for post_hook in chain(
                self._optimizer_step_post_hooks.values(), _global_optimizer_post_hooks.values()
            ):
                post_hook(self, args, kwargs)
            return out

        return wrapper

    # ----------------------------------------------------------------------------------
    # what a method supplies
    # ----------------------------------------------------------------------------------
    def _state_spec(self, group: dict[str, Any]) -> list[StateSpec]:
        raise NotImplementedError

    @staticmethod
    def _update(ops: Any, param: Any, grad: Any, state: dict[str, Any], hp: dict[str, Any]):
        raise NotImplementedError

    # ----------------------------------------------------------------------------------
    # argument checks
    # ----------------------------------------------------------------------------------
    #: float hyperparameters that cannot have one value per replica (they set initial state)
    _not_per_replica: ClassVar[tuple[str, ...]] = ()

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        for name, check in self._hyperparameters.items():
            if name in group:
                check(where + name, group[name])
        for name in self._not_per_replica:
            if isinstance(group.get(name), Replicas):
                raise ValueError(
                    f"{where}{name} cannot have one value per replica (it sets the initial "
                    f"state), got shape {tuple(group[name].shape)}"
                )
        self._check_consistency(group, where)

    def _check_consistency(self, group: dict[str, Any], where: str) -> None:
        """Checks that involve several hyperparameters (methods that have more extend this)."""
        if group.get("fused") and group.get("foreach"):
            raise V.FlagConflict(f"{where}fused and {where}foreach cannot both be True")
        if group.get("fused") and group.get("differentiable"):
            raise V.FlagConflict(f"{where}fused does not support differentiable=True")
        if "state_dtype" in group or "state_block_size" in group:
            compact_state.check_group(group, where)

    def _sparse_ok(self, group: dict[str, Any]) -> bool:
        return self._supports_sparse

    def _sparse_rowwise(self, group: dict[str, Any]) -> bool:
        """How a sparse gradient is applied: to the rows it holds only (True, torch.optim's
        Adagrad), or by running ``_update`` on the sparse tensor itself (False, torch.optim's
        SGD: its momentum buffer is then a sparse tensor too, and every row it ever touched
        keeps moving)."""
        return True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        if isinstance(params, Tensor):
            params_list = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            params_list = list(params) if params is not None else []
            if params is not None:
                param_group["params"] = params_list  # (a generator is used up by list())
        params_list = _split_names(param_group, params_list)
        for index, param in enumerate(params_list):
            if not isinstance(param, Tensor):
                raise TypeError(
                    f"params[{index}]: optimizer can only optimize Tensors, "
                    f"but got {type(param).__name__}"
                )
        V.check_params_dtype(params_list)
        where = f"param_groups[{len(self.param_groups)}]."
        wrap_group(param_group)
        merged = {**self.defaults, **param_group}
        self._check_group(merged, where=where)
        replica_count(merged, params_list, where=where)
        compact_state.check_params({**merged, "params": params_list}, where)
        super().add_param_group(param_group)
        if len(param_group["params"]) == 0:
            raise ValueError(f"{where}params: a parameter group must hold at least one tensor")
        if compact_state.is_compact(self.param_groups[-1]):
            compact_state.install(self)

    # ----------------------------------------------------------------------------------
    # state
    # ----------------------------------------------------------------------------------
    def _new_state(self, group: dict[str, Any], param: Tensor) -> dict[str, Any]:
        on_device = group.get("capturable", False) or bool(group.get("fused"))
        state: dict[str, Any] = {}
        for spec in self._state_spec(group):
            if spec.kind == "scalar":
                if on_device:
                    value = torch.full(
                        (), spec.init, dtype=_get_scalar_dtype(is_fused=group.get("fused")),
                        device=param.device,
                    )
                else:
                    value = torch.tensor(spec.init, dtype=_get_scalar_dtype())
                state[spec.name] = value
            elif spec.kind == "tensor":
                if spec.init == 0:
                    value = torch.zeros_like(param, memory_format=torch.preserve_format)
                else:
                    fill = complex(spec.init, spec.init) if param.is_complex() else spec.init
                    value = torch.full_like(param, fill, memory_format=torch.preserve_format)
                state[spec.name] = value
        return state

    def _init_group(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[Tensor | None],
    ) -> tuple[bool, bool]:
        """Collect the parameters that have gradients and their state (flat, spec order).

        Returns ``(has_complex, has_sparse)``. Named and shaped like torch.optim's so that
        torch.compile runs it eagerly instead of tracing it.
        """
        has_complex = False
        has_sparse = False
        names = [entry.name for entry in self._state_spec(group)]
        all_state = self.state
        placeholders = getattr(self, "_placeholders", None)
        # (this loop runs for every parameter on every step: keep it lean)
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            if grad.is_sparse:
                if not self._sparse_ok(group):
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients"
                    )
                has_sparse = True
            if param.is_complex():
                has_complex = True
            params.append(param)
            grads.append(grad)
            if not names:
                continue  # e.g. plain SGD: leave self.state empty, as torch.optim does
            state = all_state[param]
            if not state:
                state.update(self._new_state(group, param))
            if placeholders:
                # lazy state made up by _materialise_state: the math creates it on first use
                states.extend([None if placeholders.pop(id(state.get(name)), None) is not None
                               else state.get(name) for name in names])
                continue
            states.extend(map(state.get, names))
        return has_complex, has_sparse

    # ----------------------------------------------------------------------------------
    # step
    # ----------------------------------------------------------------------------------
    @_use_grad_for_differentiable
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform a single optimization step (``torch.optim.Optimizer.step``).

        Args:
            closure (callable, optional): re-evaluates the model and returns the loss; it is
                called once, with gradients enabled, before the update (default ``None``).

        Returns:
            The closure's loss, or ``None`` without a closure.
        """
        return self._closure_then_update(closure)

    def step_in_backward(
        self,
        model_or_params: Any,
        accumulation_steps: int = 1,
        *,
        max_grad_norm: float | None = None,
        bucket_bytes: int = 1 << 20,
    ) -> Any:
        """Update each parameter inside ``backward()``, as soon as its gradient is complete,
        and free that gradient (see :mod:`.in_backward`); returns a handle whose ``remove()``
        goes back to ``step()``.

        Args:
            model_or_params: an ``nn.Module`` (its trainable parameters) or an iterable of
                this optimizer's parameters.
            accumulation_steps: update on every N-th backward pass; the earlier N-1 only
                accumulate gradients (micro-batches).
            max_grad_norm: refused when set -- global-norm clipping needs every gradient
                before the first update.
            bucket_bytes: parameters with small gradients are stepped together, in one call,
                once the waiting gradients of their group reach this many bytes (or backward
                ends): at most this much waits beside the gradient that just arrived. ``0``
                steps each parameter as its gradient arrives.
        """
        from .in_backward import install

        return install(self, model_or_params, accumulation_steps, max_grad_norm,
                       bucket_bytes)

    def _step_parameters(self, group: dict[str, Any], subset: list[Tensor],
                         compact_ok: bool = False) -> None:
        """One step of ``subset`` (parameters of ``group``) from their ``.grad``, on the path
        the group's flags select -- the same arithmetic as ``step()``. (``compact_ok``: the
        compact state of ``subset`` is already expanded.)"""
        if not compact_ok and compact_state.is_compact(group):
            compact_state.step_compact(self, group, subset)
            return
        params: list[Tensor] = []
        grads: list[Tensor] = []
        states: list[Tensor | None] = []
        has_complex, has_sparse = self._init_group({**group, "params": subset}, params, grads,
                                                   states)
        if not params:
            return
        if group.get("fused"):
            from .fused import fused_step

            spec = self._state_spec(group)
            if self._replicas_of(group):
                self._check_replicas(group, spec, params, has_sparse)
            # a launch plan per parameter set, so alternating sets keep their prepared plans
            fused_step(self, group, spec, params, grads, states,
                       plan_key=(id(group), *map(id, params)))
            return
        self._apply(group, params, grads, states, has_complex, has_sparse)

    def _closure_then_update(self, closure: Callable[[], Any] | None) -> Any:
        """The body of ``step`` (unhooked, so subclasses can reuse it from their own step)."""
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        elif not self.state and self._is_materialisation_step():
            self._materialise_state()
            return None
        self._step_groups()
        return loss

    def _accelerator_graph_capture_health_check(self) -> None:
        """torch.optim's check before a step under CUDA graph capture, with two differences.

        A group without a ``capturable`` option (SGD's: no step count, as torch.optim.SGD,
        which skips the check) is not checked, and a ``fused`` group counts as capturable: its
        kernels read every scalar from the device (torch asks ``capturable=True`` there too).
        """
        # CUDA that was never initialised cannot be capturing, nor hold a capturable group's
        # tensors (what torch's warning is about): one cheap test per step on CPU
        if torch.compiler.is_compiling() or not torch.cuda.is_initialized():
            return
        if torch.cuda.is_current_stream_capturing():
            unsafe = [group for group in self.param_groups
                      if not group.get("capturable", True) and not group.get("fused")]
            if unsafe:
                raise RuntimeError(
                    f"Attempting CUDA graph capture of step() for an instance of "
                    f"{type(self).__name__} but param_groups' capturable is False "
                    "(pass capturable=True or fused=True)")
            return
        if all("capturable" in group for group in self.param_groups):
            super()._accelerator_graph_capture_health_check()  # its capturable=True warning

    def _is_materialisation_step(self) -> bool:
        """Whether this step is torch.distributed.checkpoint's state-initialisation step.

        ``get_optimizer_state_dict``/``set_optimizer_state_dict`` create the lazy state of a
        fresh optimizer by stepping once with every gradient zero and every lr set to 0. Run
        as a real step, that advances step counts (and, with L2 weight decay, fills moments
        and momentum buffers with ``weight_decay * param``), so a run whose state dict was
        read before its first step would train differently from one whose was not (torch.optim
        has this problem: pytorch/pytorch#164929). Only called while no state exists.
        """
        if torch.compiler.is_compiling():
            return False
        for group in self.param_groups:
            lr = group.get("lr", 1.0)
            # the checkpoint helper sets 0.0, or a CPU tensor 0.0 in place of a tensor lr; a
            # device tensor is never read here (that would synchronise every capturable step)
            if isinstance(lr, Tensor) and (lr.device.type != "cpu" or lr.numel() != 1) or (
                    lr != 0):
                return False
        saw_grad = False
        for group in self.param_groups:
            for param in group["params"]:
                grad = param.grad
                if grad is None:
                    continue
                saw_grad = True
                local = grad.to_local() if hasattr(grad, "to_local") else grad  # DTensor shard
                if local.is_sparse:
                    local = local._values()
                if local.numel() and bool(local.any()):
                    return False
        return saw_grad

    def _materialise_state(self) -> None:
        """Create every parameter's state as it is before the first step, changing nothing.

        Scalars and tensors get their initial values (step 0, zero moments: exactly what the
        first real step would start from). Lazy state (SGD's momentum buffer, a copy of the
        first gradient) has no initial value: a zero tensor holds its place and its shape for
        the checkpoint, and the first real step replaces it as if it were absent -- unless a
        loaded state dict replaced it first.
        """
        placeholders: dict[int, Tensor] = {}
        for group in self.param_groups:
            lazy = [entry.name for entry in self._state_spec(group) if entry.kind == "lazy"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                state.update(self._new_state(group, param))
                for name in lazy:
                    state[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
                if compact_state.is_compact(group):
                    # in the layout a checkpoint holds (codes and scales), so that a template
                    # made from this state receives a compact checkpoint entry by entry
                    compact_state.materialise(self, group, param)
                for name in lazy:
                    placeholders[id(state[name])] = state[name]
        self._placeholders = placeholders

    def _step_groups(self) -> None:
        """Update every group from the gradients already in ``.grad``."""
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            states: list[Tensor | None] = []
            has_complex, has_sparse = self._init_group(group, params, grads, states)
            if params:
                self._apply(group, params, grads, states, has_complex, has_sparse)

    def _apply(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[Tensor | None],
        has_complex: bool,
        has_sparse: bool,
    ) -> None:
        """Run the update of one group on the path its flags select."""
        spec = self._state_spec(group)
        differentiable = group.get("differentiable", False)
        tensor_valued = _holds_tensor(group)
        replicas = tensor_valued and self._replicas_of(group) and self._check_replicas(
            group, spec, params, has_sparse)
        if group.get("fused"):
            from .fused import fused_step

            fused_step(self, group, spec, params, grads, states)
            return
        foreach = group.get("foreach")
        if foreach is None:
            _, foreach = _default_to_fused_or_foreach(params, differentiable, use_fused=False)
        tensor_scalars = group.get("capturable", False) or torch.compiler.is_compiling()
        device = params[0].device if tensor_scalars else None
        hp = self._hp(group, tensor_scalars, device) if tensor_valued or tensor_scalars else group
        # (per-replica values with tensor scalars: the foreach path's 1-d per-parameter step
        # tensors would not broadcast against [N, 1, ...] values, so those run per tensor)
        if foreach and not differentiable and not has_sparse and not (replicas and tensor_scalars):
            if replicas:
                self._foreach_replicas(spec, hp, params, grads, states, has_complex)
            else:
                self._foreach(spec, hp, params, grads, states, tensor_scalars, has_complex)
        elif differentiable or replicas or has_complex or has_sparse:
            self._forloop(group, spec, hp, params, grads, states, tensor_scalars, replicas)
        else:
            self._forloop_plain(spec, hp, params, grads, states, tensor_scalars)

    @staticmethod
    def _replicas_of(group: dict[str, Any]) -> bool:
        """Whether some hyperparameter of the group has one value per replica."""
        for value in group.values():
            if isinstance(value, Tensor):
                if value.dim() == 1 and value.numel() > 1:
                    return True
            elif isinstance(value, tuple) and any(
                isinstance(v, Tensor) and v.dim() == 1 and v.numel() > 1 for v in value
            ):
                return True
        return False

    _replica_state_checked: ClassVar[dict[tuple, str]] = {}

    def _check_replicas(self, group: dict[str, Any], spec: list[StateSpec],
                        params: list[Tensor], has_sparse: bool) -> bool:
        """Check a group with per-replica values before its step (True: it has some).

        Besides the shapes (see :func:`.replicas.replica_count`), a per-replica value must not
        feed scalar state (NAdam's ``mu_product`` depends on beta1): that state is one number
        per parameter, shared by its replicas. The traced update tells which state depends on
        which hyperparameter, for every method alike.
        """
        wrap_group(group)  # values set after construction (a scheduler) are wrapped here
        g = next((i for i, other in enumerate(self.param_groups) if other is group), 0)
        where = f"param_groups[{g}]."
        replica_count(group, params, where=where)
        if has_sparse:
            raise ValueError(f"{where}: per-replica hyperparameters cannot be combined with "
                             "sparse gradients")
        from .fused import get_trace
        from .tracing import structure_key

        lazy = tuple(True for entry in spec if entry.kind == "lazy")
        key = (type(self), structure_key(group, lazy))
        problem = self._replica_state_checked.get(key)
        if problem is None:
            traced = get_trace(self, spec, group, lazy)
            problem = ", ".join(traced.scalar_state_depending_on_replicas())
            self._replica_state_checked[key] = problem
        if problem:
            raise ValueError(
                f"{type(self).__name__}: {where}{problem}; scalar state is one value per "
                "parameter, shared by all replicas -- give those values one parameter group "
                "each, or make them equal"
            )
        return True

    def _foreach_replicas(
        self,
        spec: list[StateSpec],
        hp: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[Tensor | None],
        has_complex: bool,
    ) -> None:
        """The foreach path with per-replica values: one pass per parameter rank, each with
        the values shaped ``[N, 1, ..., 1]`` to broadcast against every tensor of the pass."""
        width = len(spec)
        ranks: dict[int, list[int]] = {}
        for index, param in enumerate(params):
            ranks.setdefault(param.dim() + param.is_complex(), []).append(index)
        for ndim, members in ranks.items():
            with broadcast_scalars():
                self._foreach(
                    spec, per_ndim(hp, ndim), [params[i] for i in members],
                    [grads[i] for i in members],
                    [states[i * width + k] for i in members for k in range(width)],
                    False, has_complex,
                )

    def _hp(self, group: dict[str, Any], tensor_scalars: bool, device: Any) -> dict[str, Any]:
        """The group's hyperparameters as the math sees them (floats, or device tensors)."""
        if not tensor_scalars and not any(
            isinstance(group.get(key), Tensor) for key in _TENSOR_CAPABLE
        ) and not any(isinstance(beta, Tensor) for beta in group.get("betas", ())) and not (
            self._replicas_of(group)
        ):
            return group  # plain Python numbers already: the math reads the group itself
        convert: Callable[[Any], Any]  # pyright: ignore[reportRedeclaration]
        if tensor_scalars:
            def convert(value: Any) -> Any:
                return _tensor_hyperparameter(value, device)
        else:
            convert = _float_hyperparameter
        hp: dict[str, Any] = {}
        for key, value in group.items():
            if key == "params":
                continue
            if isinstance(value, tuple):
                value = tuple(convert(v) for v in value)
            hp[key] = convert(value)
        return hp

    @staticmethod
    def _preprocess(ops: Any, param: Any, grad: Any, hp: dict[str, Any]) -> tuple[Any, Any]:
        """maximize and weight decay, shared by every method."""
        if hp.get("maximize", False):
            grad = ops.neg(grad)
        weight_decay = hp.get("weight_decay", 0)
        if _decays(weight_decay):
            if hp.get("decoupled_weight_decay", False):
                param = ops.mul_(param, 1 - hp["lr"] * weight_decay)
            else:
                grad = ops.add(grad, param, alpha=weight_decay)
        return param, grad

    def _forloop_plain(
        self,
        spec: list[StateSpec],
        hp: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[Tensor | None],
        tensor_scalars: bool,
    ) -> None:
        """:meth:`_forloop` for the common case -- real dense tensors, in place, one value per
        hyperparameter -- with its per-tensor branches taken once per group: on a small model
        the Python around each tensor's few kernels is most of the step."""
        update = self._update
        ops = TensorOps if tensor_scalars else EagerOps
        preprocess = hp.get("maximize", False) or _decays(hp.get("weight_decay", 0))
        width = len(spec)
        if not spec:  # stateless (plain SGD)
            for param, grad in zip(params, grads):
                work_param = param
                if preprocess:
                    work_param, grad = self._preprocess(ops, param, grad, hp)
                new_param = update(ops, work_param, grad, {}, hp)
                if new_param is not work_param and new_param is not param:
                    param.copy_(new_param)
            return
        names = [entry.name for entry in spec]
        scalars = [(slot, entry.name) for slot, entry in enumerate(spec) if entry.kind == "scalar"]
        tensors = [(slot, entry.name) for slot, entry in enumerate(spec) if entry.kind != "scalar"]
        all_state = self.state
        for index, param in enumerate(params):
            grad = grads[index]
            stored = states[index * width : (index + 1) * width]
            state = dict(zip(names, stored))
            for slot, name in scalars:
                state[name] = _read_scalar(stored[slot], tensor_scalars)
            work_param = param
            if preprocess:
                work_param, grad = self._preprocess(ops, param, grad, hp)
            new_param = update(ops, work_param, grad, state, hp)
            for slot, name in scalars:
                _store_scalar(stored[slot], state[name], tensor_scalars)
            for slot, name in tensors:
                new, old = state[name], stored[slot]
                if new is old or new is None:
                    continue
                if old is None:  # created by the math (lazy state)
                    all_state[param][name] = new
                elif new.data_ptr() != old.data_ptr():
                    old.copy_(new)
            if new_param is not work_param and new_param is not param:
                param.copy_(new_param)

    def _forloop(
        self,
        group: dict[str, Any],
        spec: list[StateSpec],
        hp: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[Tensor | None],
        tensor_scalars: bool,
        replicas: bool = False,
    ) -> None:
        differentiable = group.get("differentiable", False)
        ops = FunctionalOps if differentiable else TensorOps
        width = len(spec)
        group_hp = hp
        shaped: dict[int, dict[str, Any]] = {}  # per-replica values, per parameter rank
        for index, (param, grad) in enumerate(zip(params, grads)):
            stored = states[index * width : (index + 1) * width]
            is_sparse = grad.is_sparse
            if is_sparse and self._sparse_rowwise(group):
                self._sparse_rows(spec, hp, param, grad, stored, tensor_scalars)
                continue
            # (a sparse tensor has no real view: the whole-tensor sparse math, which only
            # SGD uses, runs on complex values directly -- as torch.optim.SGD does)
            is_complex = torch.is_complex(param) and not is_sparse
            state: dict[str, Any] = {}
            for entry, value in zip(spec, stored):
                if entry.kind == "scalar":
                    state[entry.name] = _read_scalar(value, tensor_scalars)
                elif value is not None and is_complex:
                    state[entry.name] = torch.view_as_real(value)
                else:
                    state[entry.name] = value
            work_param = torch.view_as_real(param) if is_complex else param
            if is_complex:
                grad = torch.view_as_real(grad)
            if replicas:
                ndim = work_param.dim()
                hp = shaped.get(ndim) or shaped.setdefault(ndim, per_ndim(group_hp, ndim))
            work_param, grad = self._preprocess(ops, work_param, grad, hp)
            new_param = self._update(ops, work_param, grad, state, hp)
            self._write_back_one(spec, param, stored, state, differentiable, tensor_scalars)
            if new_param is not work_param or differentiable:
                if is_complex:
                    new_param = torch.view_as_complex(new_param)
                if new_param is not param:
                    param.copy_(new_param)

    def _write_back_one(
        self,
        spec: list[StateSpec],
        param: Tensor,
        stored: list[Tensor | None],
        state: dict[str, Any],
        differentiable: bool,
        tensor_scalars: bool,
    ) -> None:
        """Store what the math returned where the state lives (in place when possible)."""
        for entry, old in zip(spec, stored):
            new = state[entry.name]
            if entry.kind == "scalar":
                _store_scalar(old, new, tensor_scalars)
                continue
            if new is None:
                continue
            if param.is_complex() and not new.is_complex():
                new = torch.view_as_complex(new)
            if old is None or differentiable:
                # created by the math (lazy state), or autograd history must be kept
                self.state[param][entry.name] = new
            elif new is not old and new.data_ptr() != old.data_ptr():
                old.copy_(new)

    def _sparse_rows(
        self,
        spec: list[StateSpec],
        hp: dict[str, Any],
        param: Tensor,
        grad: Tensor,
        stored: list[Tensor | None],
        tensor_scalars: bool,
    ) -> None:
        """Apply the same elementwise math to the rows a sparse gradient touches."""
        if hp.get("weight_decay", 0) != 0:
            raise RuntimeError("weight_decay option is not compatible with sparse gradients")
        grad = grad.coalesce()  # the update is non-linear, so indices must be unique
        rows = tuple(grad._indices())
        values = grad._values()
        if hp.get("maximize", False):
            values = -values
        state: dict[str, Any] = {}
        for entry, value in zip(spec, stored):
            if entry.kind == "scalar":
                state[entry.name] = _read_scalar(value, tensor_scalars)
            else:
                state[entry.name] = value[rows]
        new_rows = self._update(TensorOps, param[rows], values, state, hp)
        param.index_put_(rows, new_rows)
        for entry, old in zip(spec, stored):
            if entry.kind == "scalar":
                _store_scalar(old, state[entry.name], tensor_scalars)
            else:
                old.index_put_(rows, state[entry.name])

    def _foreach(
        self,
        spec: list[StateSpec],
        hp: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[Tensor | None],
        tensor_scalars: bool,
        has_complex: bool = True,
    ) -> None:
        width = len(spec)
        scalar_slots = [i for i, entry in enumerate(spec) if entry.kind == "scalar"]
        lazy_slots = [i for i, entry in enumerate(spec) if entry.kind == "lazy"]
        # Float scalars (steps...) are read once for all parameters, then the parameters are
        # partitioned so that each foreach call gets one Python scalar per hyperparameter.
        scalar_values: list[list[float]] = []
        scalar_dtypes: list[torch.dtype] = []  # each scalar column's dtype, when uniform
        mixed_dtypes = False  # scalar state of several dtypes (e.g. partly loaded): partition
        if not tensor_scalars:
            for slot in scalar_slots:
                column = states[slot::width]
                if len(column) > _FEW:
                    # one read, not n
                    scalar_values.append(torch.stack(column).tolist())  # pyright: ignore[reportArgumentType]
                else:
                    scalar_values.append([value.item() for value in column])
                dtype = column[0].dtype
                scalar_dtypes.append(dtype)
                mixed_dtypes = mixed_dtypes or any(v.dtype is not dtype for v in column)
        # Common case first: one dtype, one device, equal scalars, same lazy-state presence.
        first = params[0]
        dtype, device_index = first.dtype, first.get_device()
        if (
            not mixed_dtypes
            and all(p.dtype is dtype and p.get_device() == device_index for p in params)
            and all(values.count(values[0]) == len(values) for values in scalar_values)
            and all(
                len({states[i * width + slot] is None for i in range(len(params))}) == 1
                for slot in lazy_slots
            )
        ):
            scalars = tuple(
                _as_python_scalar(values[0], dtype)
                for values, dtype in zip(scalar_values, scalar_dtypes)
            )
            self._foreach_partition(
                spec, hp, params, grads, states, None, scalars, tensor_scalars, has_complex
            )
            return
        partitions: dict[tuple, list[int]] = {}
        for index, param in enumerate(params):
            key = (
                param.device,
                param.dtype,
                tuple(values[index] for values in scalar_values),
                tuple(states[index * width + slot].dtype for slot in scalar_slots)
                if mixed_dtypes else tuple(scalar_dtypes),
                tuple(states[index * width + slot] is None for slot in lazy_slots),
            )
            members = partitions.get(key)
            if members is None:
                partitions[key] = [index]
            else:
                members.append(index)

        everyone = len(partitions) == 1
        for (_, _, values, dtypes, _), members in partitions.items():
            scalars = tuple(_as_python_scalar(v, d) for v, d in zip(values, dtypes))
            self._foreach_partition(
                spec, hp, params, grads, states, None if everyone else members, scalars,
                tensor_scalars, has_complex,
            )

    def _foreach_partition(
        self,
        spec: list[StateSpec],
        hp: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[Tensor | None],
        members: Sequence[int] | None,
        scalars: tuple[float, ...],
        tensor_scalars: bool,
        group_has_complex: bool,
    ) -> None:
        """One foreach pass over ``members`` (None: all parameters) sharing scalars."""
        width = len(spec)
        if members is None:
            members = range(len(params))
            member_params, member_grads = params, grads
        else:
            member_params = [params[i] for i in members]
            member_grads = [grads[i] for i in members]
        has_complex = group_has_complex and any(torch.is_complex(p) for p in member_params)

        def as_real(tensors: list[Tensor]) -> list[Tensor]:
            if not has_complex:
                return tensors
            return [torch.view_as_real(t) if torch.is_complex(t) else t for t in tensors]

        work_params = as_real(member_params)
        work_grads = as_real(member_grads)
        stored: list[list[Any]] = [states[slot::width] for slot in range(width)]
        if len(member_params) != len(params):
            stored = [[column[i] for i in members] for column in stored]
        state: dict[str, Any] = {}
        scalar_iter = iter(scalars)
        for entry, column in zip(spec, stored):
            if entry.kind == "scalar":
                state[entry.name] = torch.stack(column) if tensor_scalars else next(scalar_iter)
            elif column[0] is None:
                state[entry.name] = None
            else:
                state[entry.name] = as_real(column)
        given = dict(state)  # to tell in-place results from new lists after the math
        work_params, work_grads = self._preprocess(ForeachOps, work_params, work_grads, hp)
        new_params = self._update(ForeachOps, work_params, work_grads, state, hp)

        for entry, column in zip(spec, stored):
            new = state[entry.name]
            if entry.kind == "scalar":
                if tensor_scalars:
                    torch._foreach_copy_(column, list(new.unbind(0)))
                elif len(column) > _FEW:
                    source = torch.tensor(new, dtype=column[0].dtype)
                    torch._foreach_copy_(column, [source] * len(column))
                else:
                    for value in column:
                        value.fill_(new)
            elif new is None:
                continue
            elif column[0] is None:
                for i, tensor in zip(members, new):
                    param = params[i]
                    if param.is_complex():
                        tensor = torch.view_as_complex(tensor)
                    self.state[param][entry.name] = tensor
            elif new is not given[entry.name]:
                torch._foreach_copy_(given[entry.name], new)
        if new_params is not work_params:
            torch._foreach_copy_(work_params, new_params)

    # ----------------------------------------------------------------------------------
    # (de)serialisation
    # ----------------------------------------------------------------------------------
    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        compact_state.install(self)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            on_device = group.get("capturable", False) or bool(group.get("fused"))
            for param in group["params"]:
                param_state = self.state.get(param, {})
                for entry in self._state_spec(group):
                    value = param_state.get(entry.name)
                    if entry.kind == "scalar" and value is not None and not torch.is_tensor(value):
                        param_state[entry.name] = (
                            torch.tensor(float(value), dtype=_get_scalar_dtype(
                                is_fused=group.get("fused")), device=param.device)
                            if on_device
                            else torch.tensor(float(value), dtype=_get_scalar_dtype())
                        )

    def _required_group_keys(self) -> set[str]:
        return set(self.defaults) - _OPTIONAL_GROUP_KEYS - set(self._switches)

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Optimizer.state_dict``; compact int8 state of sharded (DTensor)
        parameters holds the whole tensor's block scales, gathered over the shard group (so
        every rank must call it, as torch.distributed.checkpoint's helpers do)."""
        return compact_state.shareable(self, super().state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from this class or its torch.optim counterpart, checked first.

        Raises ValueError (naming what is wrong) before anything is changed when the dict is
        malformed, has another number of groups or parameters, or comes from a different
        optimizer (missing hyperparameters, unknown or missing state entries, wrong shapes).
        """
        state_dict, keep = compact_state.before_load(self, state_dict)
        self._check_state_dict(state_dict)
        super().load_state_dict(state_dict)
        self._placeholders = {}  # loaded state is real state
        if keep or any(map(compact_state.is_compact, self.param_groups)) or "_step_groups" in (
                self.__dict__):
            compact_state.after_load(self, state_dict["param_groups"], keep)

    def _compact_position(self, param: Tensor) -> int:
        """The parameter's position over all groups (seeds compact state's rounding)."""
        positions = self.__dict__.get("_positions")
        if positions is None or id(param) not in positions:
            positions = self.__dict__["_positions"] = {
                id(p): i for i, p in enumerate(chain.from_iterable(
                    g["params"] for g in self.param_groups))}
        return positions[id(param)]

    def _check_state_dict(self, state_dict: Any) -> None:
        name = type(self).__name__
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(
                "state_dict must be a dict with keys 'state' and 'param_groups' "
                f"(as returned by {name}.state_dict())"
            )
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, dict):
            raise ValueError("state_dict['param_groups'] must be a list and ['state'] a dict")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(saved_groups)} parameter groups, {name} has "
                f"{len(self.param_groups)}"
            )
        required = self._required_group_keys()
        param_of_id: dict[Any, tuple[Tensor, dict[str, Any]]] = {}
        for index, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"state_dict['param_groups'][{index}] is not a parameter group")
            missing = sorted(required - set(saved))
            if missing:
                raise ValueError(
                    f"state_dict['param_groups'][{index}] lacks {missing}: it was saved by a "
                    f"different optimizer than {name}"
                )
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"state_dict['param_groups'][{index}] has {len(saved['params'])} parameters, "
                    f"the optimizer's group has {len(group['params'])}"
                )
            merged = {**self.defaults, **saved}
            self._check_group(merged, where=f"state_dict['param_groups'][{index}].")
            for saved_id, param in zip(saved["params"], group["params"]):
                param_of_id[saved_id] = (param, merged)
        for saved_id, entries in saved_state.items():
            if saved_id not in param_of_id:
                raise ValueError(
                    f"state_dict['state'] has an entry for unknown parameter {saved_id}"
                )
            param, merged = param_of_id[saved_id]
            spec = {entry.name: entry for entry in self._state_spec(merged)}
            if not isinstance(entries, dict):
                raise ValueError(f"state_dict['state'][{saved_id}] must be a dict")
            unknown = sorted(set(entries) - set(spec))
            absent = sorted(
                n for n, entry in spec.items() if entry.kind != "lazy" and n not in entries
            )
            if unknown or absent:
                raise ValueError(
                    f"state_dict['state'][{saved_id}] has entries {sorted(entries)}, {name} "
                    f"expects {sorted(spec)}: it was saved by a different optimizer or settings"
                )
            for key, value in entries.items():
                where = f"state_dict['state'][{saved_id}]['{key}']"
                if spec[key].kind == "scalar":
                    scalar_ok = (
                        isinstance(value, Tensor) and value.numel() == 1
                        or isinstance(value, (int, float)) and not isinstance(value, bool)
                    )
                    if not scalar_ok:
                        raise ValueError(f"{where} must be a number or 1-element tensor")
                elif value is None:
                    if spec[key].kind != "lazy":
                        raise ValueError(f"{where} is None; {name} needs a tensor there")
                else:
                    if not isinstance(value, Tensor) or value.shape != param.shape:
                        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value)
                        raise ValueError(
                            f"state_dict['state'][{saved_id}]['{key}'] has shape {shape}, "
                            f"the parameter has shape {tuple(param.shape)}"
                        )
