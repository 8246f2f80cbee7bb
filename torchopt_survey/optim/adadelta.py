"""Adadelta (Zeiler, 2012)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .core import compact_state
from .core import validation as V
from .core.base import StateSpec, SurveyOptimizer


class Adadelta(SurveyOptimizer):
    """Adadelta -- a drop-in ``torch.optim.Adadelta``; survey 2 §II-C, Zeiler (2012) Alg. 1.

    .. math::
        E[g^2]_t &= \\rho E[g^2]_{t-1} + (1-\\rho) g_t^2 \\\\
        \\Delta x_t &= -\\frac{\\sqrt{E[\\Delta x^2]_{t-1} + \\epsilon}}
                              {\\sqrt{E[g^2]_t + \\epsilon}}\\, g_t \\\\
        E[\\Delta x^2]_t &= \\rho E[\\Delta x^2]_{t-1} + (1-\\rho) \\Delta x_t^2 \\\\
        x_{t+1} &= x_t + \\eta\\, \\Delta x_t

    with :math:`\\eta` = ``lr`` (1.0 in Zeiler's method and by default here).

    Note: survey 2 prints the numerator as :math:`\\sqrt{\\Delta x_{t-1} + \\epsilon}` -- a typo;
    Zeiler's paper (and this class, and torch.optim) use the running average of squared updates,
    :math:`\\sqrt{E[\\Delta x^2]_{t-1} + \\epsilon}` (the RMS of past updates). torch.optim's
    implementation *is* Zeiler's formula, so there is no switch.
    ``state['square_avg']`` is :math:`E[g^2]`, ``state['acc_delta']`` is :math:`E[\\Delta x^2]`.

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts, as for
            every ``torch.optim`` optimizer.
        lr (float or Tensor, optional): the learning rate :math:`\\eta` multiplying
            :math:`\\Delta x_t` (default ``1.0``); a tensor of shape ``[N]`` is one value per
            replica. ``torch.optim.Adadelta(lr=...)``.
        rho (float, optional): :math:`\\rho`, the decay rate of both running averages, in [0, 1]
            (default ``0.9``). ``torch.optim.Adadelta(rho=...)``.
        eps (float, optional): :math:`\\epsilon` inside both square roots (default ``1e-6``).
            ``torch.optim.Adadelta(eps=...)``.
        weight_decay (float, optional): L2 penalty added to the gradient (default ``0``).
            ``torch.optim.Adadelta(weight_decay=...)``.
        foreach (bool or None, optional): force or forbid the multi-tensor (foreach) path;
            ``None`` (default) picks it when every parameter is on a GPU.
            ``torch.optim.Adadelta(foreach=...)``.
        capturable (bool, optional): keep the step counter and tensor hyperparameters on the
            parameters' device so the step can be captured in a CUDA graph (default ``False``;
            accepted on CPU too, unlike torch.optim). ``torch.optim.Adadelta(capturable=...)``.
        maximize (bool, optional): maximize the objective instead of minimizing it (default
            ``False``). ``torch.optim.Adadelta(maximize=...)``.
        differentiable (bool, optional): run the step out of place so that autograd can
            differentiate through it (default ``False``).
            ``torch.optim.Adadelta(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (C on CPU, Triton
            on CUDA; default ``None``: never chosen automatically). ``torch.optim.Adadelta`` has
            no ``fused`` flag.
        state_dtype (str or None, optional): store every tensor state in compact form:
            ``"bfloat16"`` (written back with seeded stochastic rounding) or ``"int8"``
            (blockwise 8-bit code, one float32 scale per block; non-negative states on an
            unsigned code). Default ``None``: the parameters' dtype, as torch.optim. See
            :doc:`/memory`. No torch.optim counterpart.
        state_block_size (int or None, optional): elements per ``"int8"`` block, a multiple
            of 32 (default ``None``: 256). Only with ``state_dtype="int8"``. No torch.optim
            counterpart.
    """

    _hyperparameters = {
        "lr": V.non_negative(allow_tensor=True),
        "rho": V.unit_interval(closed_right=True),
        "eps": V.non_negative(),
        "weight_decay": V.non_negative(),
        "capturable": V.boolean,
        **V.COMMON_FLAGS,
    }

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1.0,
        rho: float = 0.9,
        eps: float = 1e-6,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        capturable: bool = False,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "rho": rho,
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
            "capturable": capturable,
            "foreach": foreach,
            "differentiable": differentiable,
        }
        if fused is not None:  # torch.optim.Adadelta has no fused flag; add the key only if used
            defaults["fused"] = fused
        compact_state.add_options(defaults, state_dtype, state_block_size)
        super().__init__(params, defaults)

    def _state_spec(self, group: dict[str, Any]) -> list[StateSpec]:
        return [
            StateSpec("step", "scalar"),
            StateSpec("square_avg", "tensor", non_negative=True),
            StateSpec("acc_delta", "tensor", non_negative=True),
        ]

    @staticmethod
    def _update(ops, param, grad, state, hp):
        rho, eps = hp["rho"], hp["eps"]
        state["step"] = state["step"] + 1
        square_avg = ops.addcmul_(ops.mul_(state["square_avg"], rho), grad, grad, 1 - rho)
        state["square_avg"] = square_avg
        # RMS[dx]_{t-1} / RMS[g]_t as one square root of the ratio (one pass fewer than two)
        ratio = ops.div_(ops.add(state["acc_delta"], eps), ops.add(square_avg, eps))
        delta = ops.mul_(ops.sqrt_(ratio), grad)
        acc_delta = ops.addcmul_(ops.mul_(state["acc_delta"], rho), delta, delta, 1 - rho)
        state["acc_delta"] = acc_delta
        return ops.add_(param, delta, alpha=-hp["lr"])
