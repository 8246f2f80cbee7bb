"""RMSprop (Tieleman & Hinton, 2012)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .core import compact_state
from .core import validation as V
from .core.base import StateSpec, SurveyOptimizer


class RMSprop(SurveyOptimizer):
    """RMSprop -- a drop-in ``torch.optim.RMSprop``; survey 1 eqs. (8)-(9), survey 2 §II-D.

    torch.optim's form (default):

    .. math::
        v_t = \\alpha v_{t-1} + (1-\\alpha) g_t^2, \\qquad
        \\theta_{t+1} = \\theta_t - \\eta \\frac{g_t}{\\sqrt{v_t} + \\epsilon}

    ``eps_inside_sqrt=True`` gives the surveys' printed form
    :math:`\\theta_{t+1} = \\theta_t - \\eta\\, g_t / \\sqrt{v_t + \\epsilon}`.
    (``alpha`` is the surveys' :math:`\\beta` / :math:`\\gamma`.) ``centered=True`` divides by
    the estimated variance :math:`v_t - \\bar g_t^2` instead, and ``momentum > 0`` keeps a
    buffer :math:`b_t = \\mu b_{t-1} + g_t / (\\sqrt{\\cdot} + \\epsilon)`, both as torch.optim.

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts, as for
            every ``torch.optim`` optimizer.
        lr (float or Tensor, optional): the learning rate :math:`\\eta` (default ``1e-2``); a
            tensor of shape ``[N]`` is one value per replica. ``torch.optim.RMSprop(lr=...)``.
        alpha (float, optional): smoothing constant :math:`\\alpha` of the squared-gradient
            average, in [0, 1] (default ``0.99``). ``torch.optim.RMSprop(alpha=...)``.
        eps (float, optional): :math:`\\epsilon` added to the denominator (default ``1e-8``).
            ``torch.optim.RMSprop(eps=...)``.
        weight_decay (float, optional): L2 penalty added to the gradient (default ``0``).
            ``torch.optim.RMSprop(weight_decay=...)``.
        momentum (float, optional): momentum factor :math:`\\mu` of the buffer :math:`b_t`
            (default ``0``: no buffer). ``torch.optim.RMSprop(momentum=...)``.
        centered (bool, optional): normalise by the estimated variance instead of the uncentered
            second moment (default ``False``). ``torch.optim.RMSprop(centered=...)``.
        capturable (bool, optional): keep the step counter and tensor hyperparameters on the
            parameters' device so the step can be captured in a CUDA graph (default ``False``;
            accepted on CPU too, unlike torch.optim). ``torch.optim.RMSprop(capturable=...)``.
        foreach (bool or None, optional): force or forbid the multi-tensor (foreach) path;
            ``None`` (default) picks it when every parameter is on a GPU.
            ``torch.optim.RMSprop(foreach=...)``.
        maximize (bool, optional): maximize the objective instead of minimizing it (default
            ``False``). ``torch.optim.RMSprop(maximize=...)``.
        differentiable (bool, optional): run the step out of place so that autograd can
            differentiate through it (default ``False``).
            ``torch.optim.RMSprop(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (C on CPU, Triton
            on CUDA; default ``None``: never chosen automatically). ``torch.optim.RMSprop`` has
            no ``fused`` flag.
        state_dtype (str or None, optional): store every tensor state in compact form:
            ``"bfloat16"`` (written back with seeded stochastic rounding) or ``"int8"``
            (blockwise 8-bit code, one float32 scale per block; non-negative states on an
            unsigned code). Default ``None``: the parameters' dtype, as torch.optim. See
            :doc:`/memory`. No torch.optim counterpart.
        state_block_size (int or None, optional): elements per ``"int8"`` block, a multiple
            of 32 (default ``None``: 256). Only with ``state_dtype="int8"``. No torch.optim
            counterpart.
        eps_inside_sqrt (bool, optional): survey switch; ``True`` divides by :math:`\\sqrt{v_t +
            \\epsilon}`, the surveys' printed form (default ``False``). No torch.optim
            counterpart.
    """

    _hyperparameters = {
        "lr": V.non_negative(allow_tensor=True),
        "momentum": V.non_negative(),
        "alpha": V.unit_interval(closed_right=True),
        "eps": V.non_negative(),
        "centered": V.boolean,
        "weight_decay": V.non_negative(),
        "capturable": V.boolean,
        **V.COMMON_FLAGS,
        "eps_inside_sqrt": V.boolean,
    }
    _switches = ("eps_inside_sqrt",)

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
        *,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
        eps_inside_sqrt: bool = False,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        if fused is not None:  # torch.optim.RMSprop has no fused flag; add the key only if used
            defaults["fused"] = fused
        if eps_inside_sqrt is not False:
            defaults["eps_inside_sqrt"] = eps_inside_sqrt
        compact_state.add_options(defaults, state_dtype, state_block_size)
        super().__init__(params, defaults)

    def _state_spec(self, group: dict[str, Any]) -> list[StateSpec]:
        spec = [StateSpec("step", "scalar"), StateSpec("square_avg", "tensor", non_negative=True)]
        if group["momentum"] > 0:
            spec.append(StateSpec("momentum_buffer", "tensor"))
        if group["centered"]:
            spec.append(StateSpec("grad_avg", "tensor"))
        return spec

    @staticmethod
    def _update(ops, param, grad, state, hp):
        alpha, eps = hp["alpha"], hp["eps"]
        state["step"] = state["step"] + 1
        square_avg = ops.addcmul_(ops.mul_(state["square_avg"], alpha), grad, grad, 1 - alpha)
        state["square_avg"] = square_avg
        if hp["centered"]:
            grad_avg = state["grad_avg"] = ops.lerp_(state["grad_avg"], grad, 1 - alpha)
            variance = ops.addcmul(square_avg, grad_avg, grad_avg, -1)
        else:
            variance = square_avg
        if hp.get("eps_inside_sqrt", False):
            avg = ops.sqrt_(ops.add(variance, eps))
        elif hp["centered"]:
            avg = ops.add_(ops.sqrt_(variance), eps)
        else:
            avg = ops.add_(ops.sqrt(variance), eps)
        if hp["momentum"] > 0:
            buf = ops.addcdiv_(ops.mul_(state["momentum_buffer"], hp["momentum"]), grad, avg)
            state["momentum_buffer"] = buf
            return ops.add_(param, buf, alpha=-hp["lr"])
        return ops.addcdiv_(param, grad, avg, -hp["lr"])
