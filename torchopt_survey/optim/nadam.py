"""NAdam (Dozat, 2016)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .core import compact_state
from .core import validation as V
from .core.base import StateSpec, SurveyOptimizer
from .core.ops import stored_mul


class NAdam(SurveyOptimizer):
    """NAdam -- a drop-in ``torch.optim.NAdam``: Adam with Nesterov momentum (survey 2 §IV).

    With the momentum schedule :math:`\\mu_t = \\beta_1 (1 - \\tfrac12 0.96^{t\\psi})`
    (:math:`\\psi` = ``momentum_decay``):

    .. math::
        m_t &= \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2, \\qquad
        \\hat v_t = v_t / (1-\\beta_2^t) \\\\
        \\theta_{t+1} &= \\theta_t
          - \\gamma \\frac{1-\\mu_t}{1-\\prod_{i\\le t}\\mu_i}
              \\frac{g_t}{\\sqrt{\\hat v_t}+\\epsilon}
          - \\gamma \\frac{\\mu_{t+1}}{1-\\prod_{i\\le t+1}\\mu_i}
              \\frac{m_t}{\\sqrt{\\hat v_t}+\\epsilon}

    ``state['mu_product']`` holds :math:`\\prod_{i \\le t} \\mu_i` in the precision of its state
    tensor (float32, or the default dtype, as in torch.optim), updated as torch.optim updates it
    -- an in-place multiply in that precision whose result the step then uses -- so float64
    trajectories follow torch.optim.NAdam to rounding (1e-12 over 200 steps).

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts, as for
            every ``torch.optim`` optimizer.
        lr (float or Tensor, optional): the learning rate :math:`\\gamma` (default ``2e-3``); a
            tensor of shape ``[N]`` is one value per replica. ``torch.optim.NAdam(lr=...)``.
        betas (tuple[float, float], optional): :math:`(\\beta_1, \\beta_2)`, the decay rates of
            the moment averages (default ``(0.9, 0.999)``). ``torch.optim.NAdam(betas=...)``.
        eps (float, optional): :math:`\\epsilon` added to the denominator (default ``1e-8``).
            ``torch.optim.NAdam(eps=...)``.
        weight_decay (float, optional): L2 penalty, or decoupled decay with
            ``decoupled_weight_decay=True`` (default ``0``).
            ``torch.optim.NAdam(weight_decay=...)``.
        momentum_decay (float, optional): :math:`\\psi` of the momentum schedule :math:`\\mu_t`
            (default ``4e-3``; cannot be per-replica).
            ``torch.optim.NAdam(momentum_decay=...)``.
        decoupled_weight_decay (bool, optional): AdamW-style decay (NAdamW; default ``False``).
            ``torch.optim.NAdam(decoupled_weight_decay=...)``.
        foreach (bool or None, optional): force or forbid the multi-tensor (foreach) path;
            ``None`` (default) picks it when every parameter is on a GPU.
            ``torch.optim.NAdam(foreach=...)``.
        maximize (bool, optional): maximize the objective instead of minimizing it (default
            ``False``). ``torch.optim.NAdam(maximize=...)``.
        capturable (bool, optional): keep the step counter and tensor hyperparameters on the
            parameters' device so the step can be captured in a CUDA graph (default ``False``;
            accepted on CPU too, unlike torch.optim). ``torch.optim.NAdam(capturable=...)``.
        differentiable (bool, optional): run the step out of place so that autograd can
            differentiate through it (default ``False``).
            ``torch.optim.NAdam(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (C on CPU, Triton
            on CUDA; default ``None``: never chosen automatically). ``torch.optim.NAdam`` has no
            ``fused`` flag.
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
        "momentum_decay": V.non_negative(),
        "decoupled_weight_decay": V.boolean,
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
        momentum_decay: float = 4e-3,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
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
            "momentum_decay": momentum_decay,
            "decoupled_weight_decay": decoupled_weight_decay,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
        }
        if fused is not None:  # torch.optim.NAdam has no fused flag; add the key only if used
            defaults["fused"] = fused
        compact_state.add_options(defaults, state_dtype, state_block_size)
        super().__init__(params, defaults)

    def _state_spec(self, group: dict[str, Any]) -> list[StateSpec]:
        return [
            StateSpec("step", "scalar"),
            StateSpec("mu_product", "scalar", 1.0),
            StateSpec("exp_avg", "tensor"),
            StateSpec("exp_avg_sq", "tensor", non_negative=True),
        ]

    @staticmethod
    def _update(ops, param, grad, state, hp):
        beta1, beta2 = hp["betas"]
        lr, decay = hp["lr"], hp["momentum_decay"]
        step = state["step"] = state["step"] + 1
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (step * decay))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * decay))
        # torch.optim multiplies its mu_product state tensor in place and reads the product
        # back from it: within the step the product has the state's (float32) precision
        mu_product = state["mu_product"] = stored_mul(state["mu_product"], mu)
        exp_avg = state["exp_avg"] = ops.lerp_(state["exp_avg"], grad, 1 - beta1)
        exp_avg_sq = ops.addcmul_(ops.mul_(state["exp_avg_sq"], beta2), grad, grad, 1 - beta2)
        state["exp_avg_sq"] = exp_avg_sq
        # x / (sqrt(v / bc2) + eps) == sqrt(bc2) x / (sqrt(v) + eps sqrt(bc2)): the bias
        # correction rides on scalars instead of costing a pass over v
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        denom = ops.add_(ops.sqrt(exp_avg_sq), hp["eps"] * bias_correction2_sqrt)
        lr = lr * bias_correction2_sqrt
        param = ops.addcdiv_(param, grad, denom, -lr * (1.0 - mu) / (1.0 - mu_product))
        return ops.addcdiv_(param, exp_avg, denom, -lr * mu_next / (1.0 - mu_product * mu_next))
