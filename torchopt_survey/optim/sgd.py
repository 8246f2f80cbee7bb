"""Gradient descent and its momentum forms: SGD, Momentum (heavy ball) and NAG.

Full-batch GD, single-sample SGD and mini-batch GD are the same update,

.. math:: \\theta \\leftarrow \\theta - \\eta \\nabla J(\\theta; \\mathcal{B}),

applied to gradients of the whole set, one sample, or a mini-batch ``B``; the regime is chosen by
the data loader, not the optimizer (see ``torchopt_survey.experiments``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _use_grad_for_differentiable

from .core import compact_state
from .core import validation as V
from .core.base import StateSpec, SurveyOptimizer

_SGD_ARGS: dict[str, V.Check] = {
    "lr": V.non_negative(allow_tensor=True),
    "momentum": V.non_negative(),
    "dampening": V.non_negative(),
    "weight_decay": V.non_negative(allow_tensor=True),
    "nesterov": V.boolean,
    **V.COMMON_FLAGS,
}


class SGD(SurveyOptimizer):
    """Stochastic gradient descent, optionally with momentum -- a drop-in ``torch.optim.SGD``.

    Survey 1, eqs. (1)-(4) and survey 2, §II-A (plain form, ``momentum=0``):

    .. math:: \\theta_{t+1} = \\theta_t - \\eta\\, g_t

    With ``momentum`` :math:`\\mu > 0` (torch.optim's form; ``dampening`` :math:`\\tau`):

    .. math::
        b_t = \\mu b_{t-1} + (1-\\tau) g_t \\quad (b_1 = g_1), \\qquad
        \\theta_{t+1} = \\theta_t - \\eta\\, b_t

    and with ``nesterov=True`` the step direction is :math:`g_t + \\mu b_t`.
    ``momentum_form="survey"`` (see :class:`Momentum`) keeps the velocity with the learning
    rate inside it, as survey 1 writes it.

    Arguments, defaults, ``param_groups`` keys and ``state_dict`` layout are torch.optim.SGD's.
    Sparse gradients (``nn.Embedding(sparse=True)``) are accepted with and without momentum
    and handled as torch.optim.SGD handles them: the update runs on the sparse tensors, so the
    momentum buffer is sparse as well (``weight_decay`` cannot be combined with them).

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts, as for
            every ``torch.optim`` optimizer.
        lr (float or Tensor, optional): the learning rate :math:`\\eta` (default ``1e-3``); a
            tensor of shape ``[N]`` is one value per replica. ``torch.optim.SGD(lr=...)``.
        momentum (float, optional): momentum factor :math:`\\mu` (default ``0``: plain SGD).
            ``torch.optim.SGD(momentum=...)``.
        dampening (float, optional): dampening :math:`\\tau` of the gradient in the momentum
            buffer (default ``0``). ``torch.optim.SGD(dampening=...)``.
        weight_decay (float or Tensor, optional): L2 penalty, added to the gradient as
            :math:`\\lambda\\theta` (default ``0``). ``torch.optim.SGD(weight_decay=...)``.
        nesterov (bool, optional): Nesterov momentum, step direction :math:`g_t + \\mu b_t`
            (default ``False``; needs ``momentum > 0`` and zero dampening).
            ``torch.optim.SGD(nesterov=...)``.
        maximize (bool, optional): maximize the objective instead of minimizing it (default
            ``False``). ``torch.optim.SGD(maximize=...)``.
        foreach (bool or None, optional): force or forbid the multi-tensor (foreach) path;
            ``None`` (default) picks it when every parameter is on a GPU.
            ``torch.optim.SGD(foreach=...)``.
        differentiable (bool, optional): run the step out of place so that autograd can
            differentiate through it (default ``False``). ``torch.optim.SGD(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (C on CPU,
            Triton on CUDA; default ``None``: never chosen automatically).
            ``torch.optim.SGD(fused=...)``.
        state_dtype (str or None, optional): store every tensor state in compact form:
            ``"bfloat16"`` (written back with seeded stochastic rounding) or ``"int8"``
            (blockwise 8-bit code, one float32 scale per block; non-negative states on an
            unsigned code). Default ``None``: the parameters' dtype, as torch.optim. See
            :doc:`/memory`. No torch.optim counterpart.
        state_block_size (int or None, optional): elements per ``"int8"`` block, a multiple
            of 32 (default ``None``: 256). Only with ``state_dtype="int8"``. No torch.optim
            counterpart.
        momentum_form (str, optional): survey switch; ``"torch"`` (default) or ``"survey"``
            (velocity with the learning rate inside, see :class:`Momentum`). No torch.optim
            counterpart.
    """

    _hyperparameters = {**_SGD_ARGS, "momentum_form": V.one_of("torch", "survey")}
    _switches = ("momentum_form",)

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
        momentum_form: str = "torch",
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        # survey switches become group keys only when used, so default groups match torch's
        if momentum_form != "torch":
            defaults["momentum_form"] = momentum_form
        defaults.update(self._extra_switches)
        compact_state.add_options(defaults, state_dtype, state_block_size)
        super().__init__(params, defaults)

    _extra_switches: dict[str, Any] = {}

    def _sparse_ok(self, group: dict[str, Any]) -> bool:
        return True

    def _sparse_rowwise(self, group: dict[str, Any]) -> bool:
        # torch.optim.SGD runs its update on the sparse gradient itself: with momentum the
        # buffer is a sparse tensor that decays (and moves) every row it ever held, so a
        # row-wise update would differ from it
        return False

    def _check_consistency(self, group: dict[str, Any], where: str) -> None:
        super()._check_consistency(group, where)
        if group.get("nesterov") and (group.get("momentum", 0) <= 0 or group.get("dampening", 0)):
            raise ValueError(
                f"{where}nesterov: Nesterov momentum requires a momentum > 0 and zero dampening "
                f"(got momentum={group.get('momentum')}, dampening={group.get('dampening')})"
            )

    def _state_spec(self, group: dict[str, Any]) -> list[StateSpec]:
        return [StateSpec("momentum_buffer", "lazy")] if group["momentum"] != 0 else []

    @staticmethod
    def _update(ops, param, grad, state, hp):
        momentum, lr = hp["momentum"], hp["lr"]
        if momentum == 0:
            return ops.add_(param, grad, alpha=-lr)
        damped = 1 - hp["dampening"]
        buf = state["momentum_buffer"]
        if hp.get("momentum_form", "torch") == "survey":
            # v_t = mu v_{t-1} + eta g_t ;  theta = theta - v_t   (v_1 = eta g_1)
            if buf is None:
                buf = ops.mul(grad, lr)
            else:
                buf = ops.add_(ops.mul_(buf, momentum), grad, alpha=lr * damped)
            state["momentum_buffer"] = buf
            if hp["nesterov"]:  # theta -= eta g + mu v, as two in-place passes
                param = ops.add_(param, grad, alpha=-lr)
                return ops.add_(param, buf, alpha=-momentum)
            return ops.add_(param, buf, alpha=-1)
        # torch.optim form: b_t = mu b_{t-1} + (1 - dampening) g_t ; theta -= lr b_t
        buf = ops.clone(grad) if buf is None else ops.add_(ops.mul_(buf, momentum), grad, damped)
        state["momentum_buffer"] = buf
        if hp["nesterov"]:
            # theta -= lr (g + mu b) as two in-place passes: no temporary the size of the
            # parameters and the gradient untouched (torch's foreach adds mu b into the
            # gradients; out of place, a fresh 40 MB temporary per step made a 10M-parameter
            # foreach step 1.9x slower). The price: g + mu b is not rounded on its own, so
            # results differ from torch's in the last bit (~1e-16), not bitwise.
            param = ops.add_(param, grad, alpha=-lr)
            return ops.add_(param, buf, alpha=-lr * momentum)
        return ops.add_(param, buf, alpha=-lr)


class Momentum(SGD):
    """Gradient descent with (heavy-ball) momentum, survey 1 §III-D, eqs. (5)-(6).

    ``momentum_form="torch"`` (default, identical to ``torch.optim.SGD(momentum=0.9)``):

    .. math:: b_t = \\gamma b_{t-1} + g_t, \\qquad \\theta_{t+1} = \\theta_t - \\eta b_t

    ``momentum_form="survey"`` -- the survey's equations, learning rate inside the velocity:

    .. math:: v_t = \\gamma v_{t-1} + \\eta \\nabla_\\theta J(\\theta), \\qquad
              \\theta = \\theta - v_t

    The two agree exactly (up to rounding) while the learning rate is constant; they differ
    once a scheduler changes it (the survey form keeps old steps at their old size).
    Defaults: ``momentum=0.9`` (the survey's usual :math:`\\gamma`).

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts.
        lr (float or Tensor, optional): the learning rate :math:`\\eta` (default ``1e-3``; a
            tensor of shape ``[N]`` is per replica). ``torch.optim.SGD(lr=...)``.
        momentum (float, optional): :math:`\\gamma`, must be ``> 0`` (default ``0.9``).
            ``torch.optim.SGD(momentum=...)``.
        dampening (float, optional): dampening of the gradient in the buffer (default ``0``).
            ``torch.optim.SGD(dampening=...)``.
        weight_decay (float or Tensor, optional): L2 penalty (default ``0``).
            ``torch.optim.SGD(weight_decay=...)``.
        nesterov (bool, optional): Nesterov's form (default ``False``; see :class:`NAG`).
            ``torch.optim.SGD(nesterov=...)``.
        maximize (bool, optional): maximize the objective instead of minimizing it (default
            ``False``). ``torch.optim.SGD(maximize=...)``.
        foreach (bool or None, optional): force or forbid the multi-tensor (foreach) path;
            ``None`` (default) picks it when every parameter is on a GPU.
            ``torch.optim.SGD(foreach=...)``.
        differentiable (bool, optional): run the step out of place so that autograd can
            differentiate through it (default ``False``). ``torch.optim.SGD(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (C on CPU,
            Triton on CUDA; default ``None``: never chosen automatically).
            ``torch.optim.SGD(fused=...)``.
        state_dtype (str or None, optional): store every tensor state in compact form:
            ``"bfloat16"`` (written back with seeded stochastic rounding) or ``"int8"``
            (blockwise 8-bit code, one float32 scale per block; non-negative states on an
            unsigned code). Default ``None``: the parameters' dtype, as torch.optim. See
            :doc:`/memory`. No torch.optim counterpart.
        state_block_size (int or None, optional): elements per ``"int8"`` block, a multiple
            of 32 (default ``None``: 256). Only with ``state_dtype="int8"``. No torch.optim
            counterpart.
        momentum_form (str, optional): survey switch; ``"torch"`` (default, torch.optim's
            buffer) or ``"survey"`` (the equations above, learning rate inside the velocity).
            No torch.optim counterpart.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.9,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
        momentum_form: str = "torch",
    ) -> None:
        super().__init__(
            params, lr, momentum, dampening, weight_decay, nesterov, maximize=maximize,
            foreach=foreach, differentiable=differentiable, fused=fused,
            state_dtype=state_dtype, state_block_size=state_block_size,
            momentum_form=momentum_form,
        )

    def _check_consistency(self, group: dict[str, Any], where: str) -> None:
        super()._check_consistency(group, where)
        if not group.get("momentum", 0) > 0:
            raise ValueError(f"Invalid {where}momentum: {group.get('momentum')} (must be > 0)")


class NAG(SGD):
    """Nesterov accelerated gradient, survey 1 §III-E and survey 2 §IV-A.

    ``lookahead=False`` (default) is torch.optim's reformulation, identical to
    ``torch.optim.SGD(momentum=0.9, nesterov=True)``: with :math:`b_t = \\mu b_{t-1} + g_t`,

    .. math:: \\theta_{t+1} = \\theta_t - \\eta\\,(g_t + \\mu b_t).

    ``lookahead=True`` is the survey's equation with the true lookahead gradient:

    .. math:: v_{t+1} = \\mu v_t - \\eta \\nabla f(x_t + \\mu v_t), \\qquad
              x_{t+1} = x_t + v_{t+1}

    It needs ``step(closure)``: the optimizer moves the parameters to :math:`x_t + \\mu v_t`,
    calls the closure there (which must zero and recompute the gradients and return the loss),
    restores :math:`x_t` bit for bit and applies the update. The returned loss is the loss at
    the lookahead point. ``state['momentum_buffer']`` then holds :math:`v` (which includes
    :math:`-\\eta`). Defaults: ``momentum=0.9``.

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts.
        lr (float or Tensor, optional): the learning rate :math:`\\eta` (default ``1e-3``; a
            tensor of shape ``[N]`` is per replica). ``torch.optim.SGD(lr=...)``.
        momentum (float, optional): :math:`\\mu`, must be ``> 0`` (default ``0.9``).
            ``torch.optim.SGD(momentum=...)``.
        dampening (float, optional): must be ``0`` for Nesterov momentum (default ``0``).
            ``torch.optim.SGD(dampening=...)``.
        weight_decay (float or Tensor, optional): L2 penalty (default ``0``; with
            ``lookahead=True`` it is taken at the lookahead point).
            ``torch.optim.SGD(weight_decay=...)``.
        nesterov (bool, optional): must be ``True`` (the default); anything else raises
            ``ValueError`` -- use :class:`Momentum` for classical momentum.
            ``torch.optim.SGD(nesterov=True)``.
        maximize (bool, optional): maximize the objective instead of minimizing it (default
            ``False``). ``torch.optim.SGD(maximize=...)``.
        foreach (bool or None, optional): force or forbid the multi-tensor (foreach) path;
            ``None`` (default) picks it when every parameter is on a GPU.
            ``torch.optim.SGD(foreach=...)``.
        differentiable (bool, optional): run the step out of place so that autograd can
            differentiate through it (default ``False``). ``torch.optim.SGD(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (C on CPU,
            Triton on CUDA; default ``None``: never chosen automatically).
            ``torch.optim.SGD(fused=...)``; not with ``lookahead=True``.
        state_dtype (str or None, optional): store every tensor state in compact form:
            ``"bfloat16"`` (written back with seeded stochastic rounding) or ``"int8"``
            (blockwise 8-bit code, one float32 scale per block; non-negative states on an
            unsigned code). Default ``None``: the parameters' dtype, as torch.optim. See
            :doc:`/memory`. No torch.optim counterpart.
        state_block_size (int or None, optional): elements per ``"int8"`` block, a multiple
            of 32 (default ``None``: 256). Only with ``state_dtype="int8"``. No torch.optim
            counterpart.
        lookahead (bool, optional): survey switch; ``True`` evaluates the gradient at the
            lookahead point :math:`x_t + \\mu v_t` and needs ``step(closure)`` (default
            ``False``). No torch.optim counterpart.
    """

    _hyperparameters = {**SGD._hyperparameters, "lookahead": V.boolean}
    _switches = ("momentum_form", "lookahead")

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.9,
        dampening: float = 0,
        weight_decay: float | Tensor = 0,
        nesterov: bool = True,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
        lookahead: bool = False,
    ) -> None:
        if nesterov is not True:
            raise ValueError(
                f"Invalid nesterov: {nesterov!r} (NAG requires nesterov=True; use Momentum for "
                "classical momentum)"
            )
        self._extra_switches = {"lookahead": lookahead} if lookahead is not False else {}
        super().__init__(
            params, lr, momentum, dampening, weight_decay, nesterov, maximize=maximize,
            foreach=foreach, differentiable=differentiable, fused=fused,
            state_dtype=state_dtype, state_block_size=state_block_size,
        )

    def _check_consistency(self, group: dict[str, Any], where: str) -> None:
        super()._check_consistency(group, where)
        if not group.get("nesterov", True):
            raise ValueError(f"{where}nesterov: NAG requires nesterov=True")
        if group.get("lookahead") and group.get("fused"):
            raise ValueError(f"{where}lookahead: the lookahead form has no fused path")

    @_use_grad_for_differentiable
    def step(self, closure=None):
        """Perform one optimization step.

        Args:
            closure (callable, optional): re-evaluates the model and returns the loss. Required
                with ``lookahead=True``: it is called at the lookahead point and must zero and
                recompute the gradients there (``ValueError`` without it).

        Returns:
            The closure's loss (at the lookahead point with ``lookahead=True``), or ``None``.
        """
        lookahead_groups = [g for g in self.param_groups if g.get("lookahead", False)]
        if not lookahead_groups:
            return self._closure_then_update(closure)
        if closure is None:
            raise ValueError(
                "NAG(lookahead=True).step needs a closure: the gradient is evaluated at the "
                "lookahead point theta + momentum * v"
            )
        self._accelerator_graph_capture_health_check()
        saved: list[tuple[Tensor, Tensor]] = []
        with torch.no_grad():
            for group in lookahead_groups:
                for param in group["params"]:
                    velocity = self.state[param].get("momentum_buffer")
                    if velocity is not None:
                        saved.append((param, param.detach().clone()))
                        param.add_(velocity, alpha=group["momentum"])
        try:
            with torch.enable_grad():
                loss = closure()
        finally:
            with torch.no_grad():
                for param, original in saved:
                    param.copy_(original)  # restore x_t exactly, not x_t + mu v - mu v
        self._step_groups()
        return loss

    @staticmethod
    def _update(ops, param, grad, state, hp):
        if not hp.get("lookahead", False):
            return SGD._update(ops, param, grad, state, hp)
        # v_{t+1} = mu v_t - eta grad f(x_t + mu v_t) ;  x_{t+1} = x_t + v_{t+1}
        velocity = state["momentum_buffer"]
        weight_decay = hp["weight_decay"]
        if velocity is not None and (isinstance(weight_decay, Tensor) or weight_decay != 0):
            # the L2 term belongs at the lookahead point too: the shared preprocessing added
            # wd * x_t, this adds wd * mu * v_t
            grad = ops.add(grad, velocity, alpha=weight_decay * hp["momentum"])
        if velocity is None:
            velocity = ops.mul(grad, -hp["lr"])
        else:
            velocity = ops.add_(ops.mul_(velocity, hp["momentum"]), grad, alpha=-hp["lr"])
        state["momentum_buffer"] = velocity
        return ops.add_(param, velocity)
