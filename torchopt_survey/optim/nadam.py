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
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2, \\qquad
        \\hat v_t = v_t / (1-\\beta_2^t) \\\\
        \\theta_{t+1} = \\theta_t
          - \\gamma \\frac{1-\\mu_t}{1-\\prod_{i\\le t}\\mu_i}
              \\frac{g_t}{\\sqrt{\\hat v_t}+\\epsilon}
          - \\gamma \\frac{\\mu_{t+1}}{1-\\prod_{i\\le t+1}\\mu_i}
              \\frac{m_t}{\\sqrt{\\hat v_t}+\\epsilon}

    ``state['mu_product']`` holds :math:`\\prod_{i \\le t} \\mu_i` in the precision of its state
    tensor (float32, or the default dtype, as in torch.optim), updated as torch.optim updates it
    -- an in-place multiply in that precision whose result the step then uses -- so float64
    trajectories follow torch.optim.NAdam to rounding (1e-12 over 200 steps).
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
        if isinstance(betas, list):
            betas = tuple(betas)
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
