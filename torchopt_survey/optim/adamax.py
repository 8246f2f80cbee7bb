"""AdaMax (Kingma & Ba, 2015, §7.1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .core import compact_state
from .core import validation as V
from .core.base import StateSpec, SurveyOptimizer


class Adamax(SurveyOptimizer):
    """AdaMax -- a drop-in ``torch.optim.Adamax``: Adam with the infinity norm (survey 2 §IV-B).

    .. math::
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad
        u_t = \\max(\\beta_2 u_{t-1}, |g_t| + \\epsilon), \\qquad
        \\theta_{t+1} = \\theta_t - \\frac{\\alpha}{1-\\beta_1^t} \\frac{m_t}{u_t}

    (Kingma & Ba write :math:`|g_t|`; torch.optim adds :math:`\\epsilon` inside the maximum so
    the division is safe, and so does this class.) ``state['exp_inf']`` is :math:`u_t`.

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts, as for
            every ``torch.optim`` optimizer.
        lr (float or Tensor, optional): the learning rate :math:`\\alpha` (default ``2e-3``); a
            tensor of shape ``[N]`` is one value per replica. ``torch.optim.Adamax(lr=...)``.
        betas (tuple[float, float], optional): :math:`(\\beta_1, \\beta_2)`, the decay of the
            first moment and of the infinity norm (default ``(0.9, 0.999)``).
            ``torch.optim.Adamax(betas=...)``.
        eps (float, optional): :math:`\\epsilon` inside the maximum (default ``1e-8``).
            ``torch.optim.Adamax(eps=...)``.
        weight_decay (float, optional): L2 penalty added to the gradient (default ``0``).
            ``torch.optim.Adamax(weight_decay=...)``.
        foreach (bool or None, optional): force or forbid the multi-tensor (foreach) path;
            ``None`` (default) picks it when every parameter is on a GPU.
            ``torch.optim.Adamax(foreach=...)``.
        maximize (bool, optional): maximize the objective instead of minimizing it (default
            ``False``). ``torch.optim.Adamax(maximize=...)``.
        differentiable (bool, optional): run the step out of place so that autograd can
            differentiate through it (default ``False``).
            ``torch.optim.Adamax(differentiable=...)``.
        capturable (bool, optional): keep the step counter and tensor hyperparameters on the
            parameters' device so the step can be captured in a CUDA graph (default ``False``;
            accepted on CPU too, unlike torch.optim). ``torch.optim.Adamax(capturable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (C on CPU, Triton
            on CUDA; default ``None``: never chosen automatically). ``torch.optim.Adamax`` has
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
        "betas": V.betas(),
        "eps": V.non_negative(),
        "weight_decay": V.non_negative(),
        "capturable": V.boolean,
        **V.COMMON_FLAGS,
    }

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        capturable: bool = False,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
    ) -> None:
        if isinstance(betas, list):  # accepted, as by torch.optim; stored as a tuple
            betas = tuple(betas)  # pyright: ignore[reportAssignmentType]
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "capturable": capturable,
        }
        if fused is not None:  # torch.optim.Adamax has no fused flag; add the key only if used
            defaults["fused"] = fused
        compact_state.add_options(defaults, state_dtype, state_block_size)
        super().__init__(params, defaults)

    def _state_spec(self, group: dict[str, Any]) -> list[StateSpec]:
        return [
            StateSpec("step", "scalar"),
            StateSpec("exp_avg", "tensor"),
            StateSpec("exp_inf", "tensor", non_negative=True),
        ]

    @staticmethod
    def _update(ops, param, grad, state, hp):
        beta1, beta2 = hp["betas"]
        step = state["step"] = state["step"] + 1
        exp_avg = state["exp_avg"] = ops.lerp_(state["exp_avg"], grad, 1 - beta1)
        bound = ops.add_(ops.abs(grad), hp["eps"])
        exp_inf = ops.maximum_(ops.mul_(state["exp_inf"], beta2), bound)
        state["exp_inf"] = exp_inf
        return ops.addcdiv_(param, exp_avg, exp_inf, -hp["lr"] / (1 - beta1**step))
