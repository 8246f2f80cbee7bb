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
        m_t &= \\beta_1 m_{t-1} + (1-\\beta_1) g_t, \\qquad
        v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g_t^2 \\\\
        \\hat m_t &= \\frac{m_t}{1-\\beta_1^t}, \\qquad \\hat v_t = \\frac{v_t}{1-\\beta_2^t}
        \\\\ \\theta_{t+1} &= \\theta_t - \\frac{\\alpha\\, \\hat m_t}{\\sqrt{\\hat v_t}+\\epsilon}

    ``amsgrad=True`` divides by :math:`\\sqrt{\\hat v^{max}_t}` with
    :math:`v^{max}_t = \\max(v^{max}_{t-1}, v_t)` (see :class:`AMSGrad`).
    ``decoupled_weight_decay=True`` is :class:`AdamW`.
    ``bias_correction=False`` drops both bias corrections (survey 1's AMSGrad form).

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts, as for
            every ``torch.optim`` optimizer.
        lr (float or Tensor, optional): the step size :math:`\\alpha` (default ``1e-3``). A
            0-d tensor works with a scheduler; a tensor of shape ``[N]`` sets one value per
            replica (see *Per-replica hyperparameters*). ``torch.optim.Adam(lr=...)``.
        betas (tuple[float | Tensor, float | Tensor], optional): :math:`(\\beta_1, \\beta_2)`, the
            decay rates of the first and second moment averages (default ``(0.9, 0.999)``).
            ``torch.optim.Adam(betas=...)``.
        eps (float, optional): :math:`\\epsilon` added to the denominator (default ``1e-8``).
            ``torch.optim.Adam(eps=...)``.
        weight_decay (float, optional): L2 penalty :math:`\\lambda`, added to the gradient as
            :math:`\\lambda\\theta`, or decoupled with ``decoupled_weight_decay=True``
            (default ``0``). ``torch.optim.Adam(weight_decay=...)``.
        amsgrad (bool, optional): keep the running maximum of :math:`v_t` and divide by it
            (default ``False``). ``torch.optim.Adam(amsgrad=...)``.
        foreach (bool or None, optional): use the multi-tensor (foreach) path; ``None``
            (default) picks it when every parameter is on a GPU, the per-tensor loop
            otherwise. ``torch.optim.Adam(foreach=...)``.
        maximize (bool, optional): maximize the objective instead of minimizing it (default
            ``False``). ``torch.optim.Adam(maximize=...)``.
        capturable (bool, optional): keep the step counter and tensor hyperparameters on the
            parameters' device so the step can be captured in a CUDA graph (default
            ``False``); unlike torch.optim it is accepted on CPU too.
            ``torch.optim.Adam(capturable=...)``.
        differentiable (bool, optional): run the step out of place so that autograd can
            differentiate through it (default ``False``).
            ``torch.optim.Adam(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (C on CPU,
            Triton on CUDA; default ``None``: never chosen automatically).
            ``torch.optim.Adam(fused=...)``.
        state_dtype (str or None, optional): store every tensor state in compact form:
            ``"bfloat16"`` (written back with seeded stochastic rounding) or ``"int8"``
            (blockwise 8-bit code, one float32 scale per block; non-negative states on an
            unsigned code). Default ``None``: the parameters' dtype, as torch.optim. See
            :doc:`/memory`. No torch.optim counterpart.
        state_block_size (int or None, optional): elements per ``"int8"`` block, a multiple
            of 32 (default ``None``: 256). Only with ``state_dtype="int8"``. No torch.optim
            counterpart.
        decoupled_weight_decay (bool, optional): shrink the parameters by
            :math:`\\alpha\\lambda\\theta` instead of adding :math:`\\lambda\\theta` to the
            gradient, which is AdamW (default ``False``).
            ``torch.optim.Adam(decoupled_weight_decay=...)``.
        bias_correction (bool, optional): survey switch; ``False`` drops the bias corrections
            :math:`1-\\beta_1^t` and :math:`1-\\beta_2^t` (default ``True``, torch.optim's
            form; torch.optim has no counterpart).
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
        if isinstance(betas, list):  # accepted, as by torch.optim; stored as a tuple
            betas = tuple(betas)  # pyright: ignore[reportAssignmentType]
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

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts.
        lr (float or Tensor, optional): step size :math:`\\alpha` (default ``1e-3``; a tensor
            of shape ``[N]`` is per replica). ``torch.optim.AdamW(lr=...)``.
        betas (tuple[float | Tensor, float | Tensor], optional): :math:`(\\beta_1, \\beta_2)`
            (default ``(0.9, 0.999)``). ``torch.optim.AdamW(betas=...)``.
        eps (float, optional): :math:`\\epsilon` in the denominator (default ``1e-8``).
            ``torch.optim.AdamW(eps=...)``.
        weight_decay (float, optional): decoupled decay :math:`\\lambda` (default ``1e-2``).
            ``torch.optim.AdamW(weight_decay=...)``.
        amsgrad (bool, optional): use the running maximum of :math:`v_t` (default ``False``).
            ``torch.optim.AdamW(amsgrad=...)``.
        maximize (bool, optional): maximize instead of minimize (default ``False``).
            ``torch.optim.AdamW(maximize=...)``.
        foreach (bool or None, optional): force or forbid the foreach path; ``None`` (default)
            picks it when every parameter is on a GPU. ``torch.optim.AdamW(foreach=...)``.
        capturable (bool, optional): device-side step counters, CUDA-graph safe (default
            ``False``; accepted on CPU too). ``torch.optim.AdamW(capturable=...)``.
        differentiable (bool, optional): out-of-place step that autograd can differentiate
            (default ``False``). ``torch.optim.AdamW(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (default
            ``None``). ``torch.optim.AdamW(fused=...)``.
        state_dtype (str or None, optional): store every tensor state in compact form:
            ``"bfloat16"`` (written back with seeded stochastic rounding) or ``"int8"``
            (blockwise 8-bit code, one float32 scale per block; non-negative states on an
            unsigned code). Default ``None``: the parameters' dtype, as torch.optim. See
            :doc:`/memory`. No torch.optim counterpart.
        state_block_size (int or None, optional): elements per ``"int8"`` block, a multiple
            of 32 (default ``None``: 256). Only with ``state_dtype="int8"``. No torch.optim
            counterpart.
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

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts.
        lr (float or Tensor, optional): step size :math:`\\alpha` / :math:`\\eta` (default
            ``1e-3``; a tensor of shape ``[N]`` is per replica).
            ``torch.optim.Adam(lr=..., amsgrad=True)``.
        betas (tuple[float | Tensor, float | Tensor], optional): :math:`(\\beta_1, \\beta_2)`
            (default ``(0.9, 0.999)``). ``torch.optim.Adam(betas=...)``.
        eps (float, optional): :math:`\\epsilon` in the denominator (default ``1e-8``).
            ``torch.optim.Adam(eps=...)``.
        weight_decay (float, optional): L2 penalty (or decoupled decay with
            ``decoupled_weight_decay=True``; default ``0``).
            ``torch.optim.Adam(weight_decay=...)``.
        amsgrad (bool, optional): must stay ``True`` (the default); ``False`` raises
            ``ValueError`` -- use :class:`Adam` for plain Adam.
        foreach (bool or None, optional): force or forbid the foreach path; ``None`` (default)
            picks it when every parameter is on a GPU. ``torch.optim.Adam(foreach=...)``.
        maximize (bool, optional): maximize instead of minimize (default ``False``).
            ``torch.optim.Adam(maximize=...)``.
        capturable (bool, optional): device-side step counters, CUDA-graph safe (default
            ``False``; accepted on CPU too). ``torch.optim.Adam(capturable=...)``.
        differentiable (bool, optional): out-of-place step that autograd can differentiate
            (default ``False``). ``torch.optim.Adam(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (default
            ``None``). ``torch.optim.Adam(fused=...)``.
        state_dtype (str or None, optional): store every tensor state in compact form:
            ``"bfloat16"`` (written back with seeded stochastic rounding) or ``"int8"``
            (blockwise 8-bit code, one float32 scale per block; non-negative states on an
            unsigned code). Default ``None``: the parameters' dtype, as torch.optim. See
            :doc:`/memory`. No torch.optim counterpart.
        state_block_size (int or None, optional): elements per ``"int8"`` block, a multiple
            of 32 (default ``None``: 256). Only with ``state_dtype="int8"``. No torch.optim
            counterpart.
        decoupled_weight_decay (bool, optional): AdamW-style decay (default ``False``).
            ``torch.optim.Adam(decoupled_weight_decay=...)``.
        bias_correction (bool, optional): survey switch; ``False`` is survey 1's AMSGrad
            without bias corrections (default ``True``; no torch.optim counterpart).
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
