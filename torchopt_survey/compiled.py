"""A whole training step -- forward, loss, backward and the optimizer's update -- as one program.

:func:`compile_step` traces one step of ``loss_fn(model(x), y)`` with ``torch.func`` (the
gradient transform) and the optimizer's own update math, then compiles the trace with
TorchInductor::

    step = torchopt_survey.compile_step(model, F.cross_entropy, optimizer)
    for x, y in batches:
        loss = step(x, y)          # the parameters and the optimizer state are updated in place

Why one program: eager PyTorch writes every gradient to memory, reads it back in the
optimizer, and pays a dispatcher call per operation. In one program the compiler fuses each
parameter's update with the operation that produces its gradient; at batch size 1 a linear
layer's weight gradient is an outer product (a matrix product with an inner dimension of one),
which the graph pass below turns into a broadcast multiply, so the gradient is consumed by the
update as it is computed and never stored.

What is compiled, and when (see ``docs/compiled-step.md``):

* the graph is traced with fake tensors and compiled by ``torch._inductor.compile``; the
  program is cached per input shape and dtype, model mode, and hyperparameter values, so a
  last short batch compiles one more program;
* the learning rate is an input of the program (one 0-d tensor per parameter group, refilled
  from ``param_group["lr"]`` before each call), so a scheduler never causes a compilation;
  other hyperparameters are compiled in as constants (changing one compiles another program);
* a step object for another model of the same architecture and optimizer settings (the next
  run of a worker) traces the same code and reuses this process's compiled program; another
  process finds the generated code in Inductor's on-disk FX graph cache
  (``TORCHINDUCTOR_CACHE_DIR``, default ``/tmp/torchinductor_$USER``) and skips the C++
  compilation.

The optimizer keeps its state where it always does: ``optimizer.state_dict()``,
``load_state_dict`` and checkpoints work between calls unchanged. A step whose optimizer
state is not complete yet (the first step of SGD with momentum creates its buffer from the
first gradient) runs eagerly, exactly as ``zero_grad/backward/step``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from .optim.core.base import SurveyOptimizer

__all__ = ["CompiledStep", "compile_step"]

_aten = torch.ops.aten

#: compiled programs of this process by traced code and input layout (see CompiledStep._compile)
_SHARED_PROGRAMS: dict[tuple, Callable[..., Any]] = {}

# group entries that are bookkeeping, not hyperparameters of the math
_NOT_HYPERPARAMETERS = frozenset({"params", "param_names", "lr"})


@functools.cache
def _step_graph_pass() -> Any:
    """The graph pass below (built on first use: importing Inductor takes seconds)."""
    from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

    class StepGraphPass(CustomGraphPass):
        """Two rewrites of the traced step that Inductor does not make by itself on a CPU.

        * A matrix product whose inner dimension is 1 (a weight gradient at batch size 1)
          becomes a broadcast multiply: the same products (nothing is summed), but a pointwise
          node that the update fuses with, so the gradient is never written out.
        * A 0-d value computed from state (``1 - beta2**step``) is computed once into a
          buffer; left alone, Inductor inlines it into the update's loop and calls ``pow``
          once per vector of elements.
        """

        def __call__(self, graph: torch.fx.Graph) -> None:
            _rewrite(graph)

        def uuid(self) -> bytes:
            return get_hash_for_files((str(Path(__file__)),))

    return StepGraphPass()


def _rewrite(graph: torch.fx.Graph) -> None:
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        value = node.meta.get("val")
        if node.target is _aten.mm.default:
            left, right = node.args
            if _shape(left)[1:] == (1,):
                with graph.inserting_before(node):
                    outer = graph.call_function(_aten.mul.Tensor, (left, right))
                outer.meta = dict(node.meta)
                node.replace_all_uses_with(outer)
                graph.erase_node(node)
        elif (isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point()
              and any(_numel(user) > 1 for user in node.users)):
            node.meta["inductor_realize_to_strides"] = True


def _shape(node: Any) -> tuple[int, ...]:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(value.shape) if isinstance(value, Tensor) else ()


def _numel(node: torch.fx.Node) -> int:
    value = node.meta.get("val")
    return value.numel() if isinstance(value, Tensor) else 0


class CompiledStep:
    """``step(x, y) -> loss``: one compiled training step (see :func:`compile_step`, which
    builds it).

    Args:
        model (torch.nn.Module): the network, as for :func:`compile_step`.
        loss_fn (callable): ``loss_fn(output, target) -> 0-d loss``.
        optimizer (SurveyOptimizer): a first-order optimizer over ``model``'s parameters.
        grad_norms (bool, optional): also compute each parameter's gradient norm in the
            program (default ``False``).

    Attributes:
        compilations: programs traced so far (one per shape/dtype/hyperparameter set); each
            is compiled, or reused from another step object of this process with the same code.
        compile_seconds: total seconds spent tracing and compiling them.
        eager_steps: steps run eagerly because the optimizer state was not complete yet.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        optimizer: SurveyOptimizer,
        *,
        grad_norms: bool = False,
    ) -> None:
        _check_arguments(model, loss_fn, optimizer)
        if not isinstance(grad_norms, bool):
            raise TypeError(f"grad_norms: expected True or False, got {grad_norms!r}")
        self.grad_norms_enabled = grad_norms
        #: the L2 norm of each trained parameter's gradient at the last step (a 1-d tensor in
        #: the order of ``parameter_names``), with ``grad_norms=True``; else None
        self.grad_norms: Tensor | None = None
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        name_of = {id(p): name for name, p in model.named_parameters()}
        trained = [p for group in optimizer.param_groups for p in group["params"]]
        unknown = [i for i, p in enumerate(trained) if id(p) not in name_of]
        if unknown:
            raise ValueError(
                f"optimizer: parameter {unknown[0]} of its groups is not a parameter of model "
                "(compile_step differentiates the model's parameters only)")
        trained_ids = {id(p) for p in trained}
        self._trained = trained
        self._trained_names = [name_of[id(p)] for p in trained]
        #: the model's names of the trained parameters, in the optimizer's order
        self.parameter_names = list(self._trained_names)
        frozen = [(n, p) for n, p in model.named_parameters() if id(p) not in trained_ids]
        self._frozen = [p for _, p in frozen]
        self._frozen_names = [n for n, _ in frozen]
        self._group_sizes = [len(group["params"]) for group in optimizer.param_groups]
        self._lr_inputs: list[Tensor] = []
        self._lr_values: list[float | None] = []
        self._programs: dict[tuple, Callable[..., Any]] = {}
        self.compilations = 0
        self.compile_seconds = 0.0
        self.eager_steps = 0

    # ----------------------------------------------------------------------------------
    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """One training step on the batch ``(x, y)``; returns the loss (a detached 0-d tensor)."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self._group_sizes) or any(
                len(group["params"]) != size for group, size in zip(groups, self._group_sizes)):
            raise RuntimeError("optimizer: its parameter groups changed after compile_step; "
                               "build a new step for the new groups")
        states = self._states()
        if states is None:
            return self._eager_step(x, y)
        lrs = self._learning_rates()
        key = (x.shape, x.dtype, x.device, y.shape, y.dtype, self.model.training,
               self._hyperparameters(), tuple(s.dtype for s in states),
               tuple(lr.dtype for lr in lrs))
        args = [*(p.detach() for p in self._trained), *(p.detach() for p in self._frozen),
                *states, _detached(x), _detached(y), *lrs]
        program = self._programs.get(key)
        if program is None:
            program = self._compile(key, args)
        outputs = program(*args)
        if self.grad_norms_enabled:
            self.grad_norms = outputs[1]
        return outputs[0]

    def _states(self) -> list[Tensor] | None:
        """Every state tensor in the optimizer's order, or None while some are still missing."""
        opt = self.optimizer
        if getattr(opt, "_placeholders", None):
            return None  # lazy state still made up by a checkpoint helper: the first real step
        states: list[Tensor] = []
        for group in opt.param_groups:
            names = [entry.name for entry in opt._state_spec(group)]
            if not names:
                continue
            for param in group["params"]:
                state = opt.state.get(param)
                if not state:
                    return None
                for name in names:
                    value = state.get(name)
                    if value is None:
                        return None
                    states.append(value)
        return states

    def _learning_rates(self) -> list[Tensor]:
        """One 0-d tensor per group holding its current lr (refilled only when it changed)."""
        groups = self.optimizer.param_groups
        if len(self._lr_inputs) != len(groups):
            # float64, as the Python float that eager steps use: float64 parameters then
            # see the same lr, and float32 ones round it where eager does
            self._lr_inputs = [torch.zeros((), dtype=torch.float64, device=g["params"][0].device)
                               for g in groups]
            self._lr_values = [None] * len(groups)
        out: list[Tensor] = []
        for index, group in enumerate(groups):
            lr = group["lr"]
            if isinstance(lr, Tensor):
                out.append(lr.detach().reshape(()))
                continue
            if lr != self._lr_values[index]:
                self._lr_inputs[index].fill_(lr)
                self._lr_values[index] = lr
            out.append(self._lr_inputs[index])
        return out

    def _hyperparameters(self) -> tuple:
        """Every group's hyperparameters except lr (compiled in as constants; only lr may be
        a tensor, checked in the constructor, so every value here hashes by value)."""
        return tuple(tuple(item for item in group.items() if item[0] not in _NOT_HYPERPARAMETERS)
                     for group in self.optimizer.param_groups)

    def eager(self, x: Tensor, y: Tensor) -> Tensor:
        """One eager step (``zero_grad``, ``backward``, ``step``) that leaves the gradients in
        ``.grad``, for code that reads them now and then (gradient histograms); the state it
        updates is the compiled steps' own.

        Args:
            x (Tensor): the batch's inputs.
            y (Tensor): the batch's targets.

        Returns:
            The loss (computed before the update).
        """
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(x), y)
        loss.backward()
        if self.grad_norms_enabled:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                     for p in self._trained]
            self.grad_norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
        opt.step()
        self.eager_steps += 1
        return loss.detach()

    def _eager_step(self, x: Tensor, y: Tensor) -> Tensor:
        loss = self.eager(x, y)
        self.optimizer.zero_grad(set_to_none=True)  # compiled steps leave no .grad either
        return loss

    # ----------------------------------------------------------------------------------
    def _compile(self, key: tuple, args: list[Tensor]) -> Callable[..., Any]:
        from torch.fx.experimental.proxy_tensor import make_fx

        start = time.perf_counter()
        graph = make_fx(self._program_source(), tracing_mode="fake")(*args)
        # The traced step is a function of its inputs alone (unless it captured a tensor
        # constant): another model of the same architecture, trained the same way -- the next
        # run of a worker -- gets the same code and reuses the program without compiling.
        shared = None if any(node.op == "get_attr" for node in graph.graph.nodes) else (
            graph.code, tuple((a.shape, a.stride(), a.dtype, a.device) for a in args))
        program = _SHARED_PROGRAMS.get(shared) if shared is not None else None
        if program is None:
            from torch._guards import TracingContext, tracing
            from torch._subclasses.fake_tensor import FakeTensorMode
            from torch.fx.experimental.symbolic_shapes import ShapeEnv

            # Inductor's on-disk caches (the FX graph's generated code, AOTAutograd's graphs)
            # read the shape environment of the tracing context; without one they are
            # bypassed and every process lowers the step and generates its code again. The
            # shapes are static: the environment holds no symbols.
            # (Inductor returns a callable whose declared type is a private output class)
            with tracing(TracingContext(FakeTensorMode(shape_env=ShapeEnv()))):
                program = cast(Callable[..., Any], torch._inductor.compile(
                    graph, cast(list[Any], args),
                    options={"post_grad_custom_post_pass": _step_graph_pass()}))
            if shared is not None:
                _SHARED_PROGRAMS[shared] = program
        self._programs[key] = program
        self.compilations += 1
        self.compile_seconds += time.perf_counter() - start
        return program

    def _program_source(self) -> Callable[..., tuple[Tensor, ...]]:
        """The step as a function of tensors only (what is traced)."""
        opt, model, loss_fn = self.optimizer, self.model, self.loss_fn
        n_trained, n_frozen = len(self._trained), len(self._frozen)
        trained_names, frozen_names = self._trained_names, self._frozen_names
        groups = opt.param_groups
        with_norms = self.grad_norms_enabled
        specs = [opt._state_spec(group) for group in groups]
        widths = [len(spec) for spec in specs]
        scalar_slots = [[i for i, entry in enumerate(spec) if entry.kind == "scalar"]
                        for spec in specs]
        sizes = self._group_sizes
        hyperparameters = [
            {name: value for name, value in group.items() if name != "lr"} for group in groups]

        def loss_of(trained: list[Tensor], frozen: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
            tensors = dict(zip(trained_names, trained))
            tensors.update(zip(frozen_names, frozen))
            return loss_fn(torch.func.functional_call(model, tensors, (x,)), y)

        def program(*args: Tensor) -> tuple[Tensor, ...]:
            trained = list(args[:n_trained])
            frozen = list(args[n_trained:n_trained + n_frozen])
            x, y = args[-2 - len(groups)], args[-1 - len(groups)]
            lrs = args[len(args) - len(groups):]
            states = list(args[n_trained + n_frozen:-2 - len(groups)])
            grads, loss = torch.func.grad_and_value(loss_of)(trained, frozen, x, y)
            first = first_state = 0
            for hp, lr, size, width, slots in zip(hyperparameters, lrs, sizes, widths,
                                                  scalar_slots):
                # capturable: scalars (step counts, lr) stay tensors, so nothing is read out
                # as a Python number at trace time and frozen into the program
                view = {**hp, "lr": lr, "capturable": True, "foreach": False, "fused": False}
                group_states = states[first_state:first_state + size * width]
                # scalar state (a float32 step count) in float64 while the math uses it, as
                # eager reads it into a Python float: bias corrections round as in eager
                wide: list[Tensor | None] = list(group_states)
                for index in (i * width + k for i in range(size) for k in slots):
                    wide[index] = group_states[index].to(torch.float64)
                opt._apply(view, trained[first:first + size], list(grads[first:first + size]),
                           wide, False, False)
                for index in (i * width + k for i in range(size) for k in slots):
                    widened = wide[index]
                    if widened is not None and widened is not group_states[index]:
                        group_states[index].copy_(widened)
                first += size
                first_state += size * width
            if with_norms:
                norms = torch.stack([torch.linalg.vector_norm(g) for g in grads])
                return (loss.detach(), norms)
            return (loss.detach(),)

        return program


def _detached(tensor: Tensor) -> Tensor:
    return tensor.detach() if tensor.requires_grad else tensor


def _check_arguments(model: Any, loss_fn: Any, optimizer: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable (output, target) -> loss, got "
                        f"{type(loss_fn).__name__}")
    if not isinstance(optimizer, SurveyOptimizer):
        raise TypeError(
            "optimizer: expected one of torchopt_survey's first-order optimizers, got "
            f"{type(optimizer).__name__}" + (
                " (closure-based methods evaluate the loss several times per step and cannot be "
                "compiled into one)" if hasattr(optimizer, "step") else ""))
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise ValueError(
            f"model: has buffers ({', '.join(buffers[:3])}); compile_step supports models whose "
            "state is their parameters (no BatchNorm running statistics)")
    for index, group in enumerate(optimizer.param_groups):
        where = f"optimizer: param_groups[{index}]."
        if group.get("differentiable"):
            raise ValueError(f"{where}differentiable=True cannot be compiled into the step")
        for param in group["params"]:
            if param.is_complex() or not param.is_floating_point():
                raise ValueError(f"{where}params: compile_step supports real floating-point "
                                 f"parameters, got {param.dtype}")
            if param.is_sparse:
                raise ValueError(f"{where}params: sparse parameters are not supported")
        lr = group.get("lr")
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError(f"{where}lr: one value per parameter group is supported, got "
                             f"shape {tuple(lr.shape)} (per-replica values)")
        for name, value in group.items():
            if name in _NOT_HYPERPARAMETERS:
                continue
            if isinstance(value, Tensor) or isinstance(value, tuple) and any(
                    isinstance(v, Tensor) for v in value):
                raise ValueError(
                    f"{where}{name}: only lr may be a tensor in a compiled step (the other "
                    "hyperparameters are compiled in as constants)")
    if optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks:
        raise ValueError("optimizer: has step hooks, which the compiled step would not run")


def compile_step(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    optimizer: SurveyOptimizer,
    *,
    grad_norms: bool = False,
) -> CompiledStep:
    """Compile ``loss_fn(model(x), y)``, its gradient and ``optimizer``'s update into one step.

    Args:
        model: the network (parameters only, no buffers); its parameters in ``optimizer``'s
            groups are trained, any others are held fixed.
        loss_fn: ``loss_fn(output, target) -> 0-d loss`` (e.g. ``F.cross_entropy``).
        optimizer: a torchopt_survey first-order optimizer over ``model``'s parameters
            (``fused``/``foreach`` settings are ignored: the compiled program fuses anyway).
        grad_norms: also compute the L2 norm of every parameter's gradient in the program
            (``step.grad_norms`` after each call; ``step.parameter_names`` names them), for
            gradient-norm logging without gradients in ``.grad``.

    Returns:
        A :class:`CompiledStep`; ``step(x, y)`` trains on one batch and returns its loss
        (detached, on the device, computed before the update). The parameters' ``.grad`` is
        not set (``step.eager(x, y)`` is one eager step that sets it), and optimizer step
        hooks are refused (they would not run).

    Raises:
        TypeError: ``model``, ``loss_fn`` or ``optimizer`` of the wrong kind.
        ValueError: a model with buffers, complex/sparse parameters, per-replica
            hyperparameters, ``differentiable=True``, or an optimizer parameter not in ``model``.
    """
    return CompiledStep(model, loss_fn, optimizer, grad_norms=grad_norms)

