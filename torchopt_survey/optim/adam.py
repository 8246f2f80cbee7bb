"""Adam (Kingma & Ba, 2015), AdamW (Loshchilov & Hutter, 2019) and AMSGrad (Reddi et al., 2018)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .core import compact_state
from .core import validation as V
from .core.base import StateSpec, SurveyOptimizer


class Adam(SurveyOptimizer):
    """Adam -- a drop-in ``torch.optim.Adam``; survey 1 §III-G, survey 2 §IV.

    .. math::
        m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2 \\\\
        \\hat m_t = \\frac{m_t}{1-\\beta_1^t}, \\qquad \\hat v_t = \\frac{v_t}{1-\\beta_2^t}
        \\\\ \\theta_{t+1} = \\theta_t - \\frac{\\alpha\\, \\hat m_t}{\\sqrt{\\hat v_t}+\\epsilon}

    ``amsgrad=True`` divides by :math:`\\sqrt{\\hat v^{max}_t}` with
    :math:`v^{max}_t = \\max(v^{max}_{t-1}, v_t)` (see :class:`AMSGrad`).
    ``decoupled_weight_decay=True`` is :class:`AdamW`.
    ``bias_correction=False`` drops both bias corrections (survey 1's AMSGrad form).
    """

    _hyperparameters = {
        "lr": V.non_negative(allow_tensor=True),
        "betas": V.betas(allow_tensor=True),
        "eps": V.non_negative(),
        "weight_decay": V.non_negative(),
        "amsgrad": V.boolean,
        "capturable": V.boolean,
        "decoupled_weight_decay": V.boolean,
        **V.COMMON_FLAGS,
        "bias_correction": V.boolean,
    }
    _switches = ("bias_correction",)

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
        decoupled_weight_decay: bool = False,
        bias_correction: bool = True,
    ) -> None:
        if isinstance(betas, list):
            betas = tuple(betas)
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        if bias_correction is not True:
            defaults["bias_correction"] = bias_correction
        compact_state.add_options(defaults, state_dtype, state_block_size)
        super().__init__(params, defaults)

    def _state_spec(self, group: dict[str, Any]) -> list[StateSpec]:
        spec = [
            StateSpec("step", "scalar"),
            StateSpec("exp_avg", "tensor"),
            StateSpec("exp_avg_sq", "tensor", non_negative=True),
        ]
        if group["amsgrad"]:
            spec.append(StateSpec("max_exp_avg_sq", "tensor", non_negative=True))
        return spec

    @staticmethod
    def _update(ops, param, grad, state, hp):
        beta1, beta2 = hp["betas"]
        step = state["step"] = state["step"] + 1
        exp_avg = state["exp_avg"] = ops.lerp_(state["exp_avg"], grad, 1 - beta1)
        second = ops.addcmul_(ops.mul_(state["exp_avg_sq"], beta2), grad, grad, 1 - beta2)
        state["exp_avg_sq"] = second
        if hp["amsgrad"]:
            second = state["max_exp_avg_sq"] = ops.maximum_(state["max_exp_avg_sq"], second)
        step_size, eps = hp["lr"], hp["eps"]
        if hp.get("bias_correction", True):
            # Kingma & Ba §2's efficient form: m_hat / (sqrt(v_hat) + eps) equals
            # (sqrt(1-b2^t) / (1-b1^t)) m / (sqrt(v) + eps sqrt(1-b2^t)) -- the corrections
            # ride on scalars, saving a full pass over v per step.
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            step_size = step_size * bias_correction2_sqrt / (1 - beta1**step)
            eps = eps * bias_correction2_sqrt
        denom = ops.add_(ops.sqrt(second), eps)
        return ops.addcdiv_(param, exp_avg, denom, -step_size)


class AdamW(Adam):
    """AdamW -- a drop-in ``torch.optim.AdamW``: Adam with decoupled weight decay.

    .. math:: \\theta_t \\leftarrow \\theta_{t-1}(1 - \\alpha\\lambda), \\text{ then the Adam step}

    (``weight_decay`` :math:`\\lambda` defaults to 1e-2).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            state_dtype=state_dtype, state_block_size=state_block_size,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


class AMSGrad(Adam):
    """AMSGrad -- Adam with a running maximum of the second moment (``Adam(amsgrad=True)``).

    Default (``bias_correction=True``), identical to ``torch.optim.Adam(amsgrad=True)``:

    .. math::
        v^{max}_t = \\max(v^{max}_{t-1}, v_t), \\qquad
        \\theta_{t+1} = \\theta_t - \\frac{\\alpha}{1-\\beta_1^t}
            \\frac{m_t}{\\sqrt{v^{max}_t / (1-\\beta_2^t)} + \\epsilon}

    ``bias_correction=False`` is survey 1 §III-H as written (Reddi et al.'s algorithm):

    .. math::
        \\hat v_t = \\max(\\hat v_{t-1}, v_t), \\qquad
        \\theta_{t+1} = \\theta_t - \\frac{\\eta}{\\sqrt{\\hat v_t} + \\epsilon} m_t

    (the survey prints :math:`\\max(v_{t-1}, v_t)`; the maximum is over all past
    :math:`v`, as its own text and Reddi et al. say.)
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = True,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
        decoupled_weight_decay: bool = False,
        bias_correction: bool = True,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
            capturable=capturable, differentiable=differentiable, fused=fused,
            state_dtype=state_dtype, state_block_size=state_block_size,
            decoupled_weight_decay=decoupled_weight_decay, bias_correction=bias_correction,
        )

    def _check_consistency(self, group: dict[str, Any], where: str) -> None:
        super()._check_consistency(group, where)
        if group.get("amsgrad") is not True:
            raise ValueError(
                f"Invalid {where}amsgrad: {group.get('amsgrad')!r} (AMSGrad requires "
                "amsgrad=True; use Adam for plain Adam)"
            )
