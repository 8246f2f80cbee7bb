"""AdaGrad (Duchi, Hazan & Singer, 2011)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .core import compact_state
from .core import validation as V
from .core.base import StateSpec, SurveyOptimizer


class Adagrad(SurveyOptimizer):
    """AdaGrad -- a drop-in ``torch.optim.Adagrad``; survey 1 eq. (7), survey 2 §II-B.

    .. math::
        G_t = G_{t-1} + g_t^2, \\qquad
        \\eta_t = \\frac{\\eta}{1 + (t-1)\\,\\text{lr\\_decay}}, \\qquad
        \\theta_{t+1} = \\theta_t - \\eta_t \\frac{g_t}{\\sqrt{G_t} + \\epsilon}

    (:math:`G_0` = ``initial_accumulator_value``). ``eps_inside_sqrt=True`` uses survey 2's
    form :math:`g_t / \\sqrt{G_t + \\epsilon}` instead of survey 1's / torch.optim's
    :math:`g_t / (\\sqrt{G_t} + \\epsilon)`.

    Sparse gradients (``nn.Embedding(sparse=True)``) are supported: only the rows present in
    the gradient are updated, exactly as torch.optim.Adagrad does. As in torch.optim, the state
    is created in the constructor.

    Args:
        params (iterable): tensors, ``(name, tensor)`` pairs or parameter-group dicts, as for
            every ``torch.optim`` optimizer.
        lr (float or Tensor, optional): the learning rate :math:`\\eta` (default ``1e-2``); a
            tensor of shape ``[N]`` is one value per replica. ``torch.optim.Adagrad(lr=...)``.
        lr_decay (float, optional): learning-rate decay, :math:`\\eta_t = \\eta / (1 +
            (t-1)\\,\\text{lr\\_decay})` (default ``0``). ``torch.optim.Adagrad(lr_decay=...)``.
        weight_decay (float, optional): L2 penalty added to the gradient (default ``0``).
            ``torch.optim.Adagrad(weight_decay=...)``.
        initial_accumulator_value (float, optional): :math:`G_0`, the starting value of the sum
            of squared gradients (default ``0``; cannot be per-replica).
            ``torch.optim.Adagrad(initial_accumulator_value=...)``.
        eps (float, optional): :math:`\\epsilon` added to the denominator (default ``1e-10``).
            ``torch.optim.Adagrad(eps=...)``.
        foreach (bool or None, optional): force or forbid the multi-tensor (foreach) path;
            ``None`` (default) picks it when every parameter is on a GPU.
            ``torch.optim.Adagrad(foreach=...)``.
        maximize (bool, optional): maximize the objective instead of minimizing it (default
            ``False``). ``torch.optim.Adagrad(maximize=...)``.
        differentiable (bool, optional): run the step out of place so that autograd can
            differentiate through it (default ``False``).
            ``torch.optim.Adagrad(differentiable=...)``.
        fused (bool or None, optional): run the generated single-pass kernel (C on CPU, Triton
            on CUDA; default ``None``: never chosen automatically).
            ``torch.optim.Adagrad(fused=...)``.
        state_dtype (str or None, optional): store every tensor state in compact form:
            ``"bfloat16"`` (written back with seeded stochastic rounding) or ``"int8"``
            (blockwise 8-bit code, one float32 scale per block; non-negative states on an
            unsigned code). Default ``None``: the parameters' dtype, as torch.optim. See
            :doc:`/memory`. No torch.optim counterpart.
        state_block_size (int or None, optional): elements per ``"int8"`` block, a multiple
            of 32 (default ``None``: 256). Only with ``state_dtype="int8"``. No torch.optim
            counterpart.
        eps_inside_sqrt (bool, optional): survey switch; ``True`` divides by :math:`\\sqrt{G_t +
            \\epsilon}` (survey 2's form; default ``False``). No torch.optim counterpart.
    """

    _hyperparameters = {
        "lr": V.non_negative(allow_tensor=True),
        "lr_decay": V.non_negative(),
        "eps": V.non_negative(),
        "weight_decay": V.non_negative(),
        "initial_accumulator_value": V.non_negative(),
        **V.COMMON_FLAGS,
        "eps_inside_sqrt": V.boolean,
    }
    _not_per_replica = ("initial_accumulator_value",)
    _switches = ("eps_inside_sqrt",)
    _supports_sparse = True

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        lr_decay: float = 0,
        weight_decay: float = 0,
        initial_accumulator_value: float = 0,
        eps: float = 1e-10,
        foreach: bool | None = None,
        *,
        maximize: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        state_dtype: str | None = None,
        state_block_size: int | None = None,
        eps_inside_sqrt: bool = False,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "lr_decay": lr_decay,
            "eps": eps,
            "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
            "fused": fused,
        }
        if eps_inside_sqrt is not False:
            defaults["eps_inside_sqrt"] = eps_inside_sqrt
        compact_state.add_options(defaults, state_dtype, state_block_size)
        super().__init__(params, defaults)
        # torch.optim.Adagrad creates its state up front; so does this class (same state_dict)
        for group in self.param_groups:
            for param in group["params"]:
                self.state[param].update(self._new_state(group, param))

    def _state_spec(self, group: dict[str, Any]) -> list[StateSpec]:
        return [
            StateSpec("step", "scalar"),
            StateSpec("sum", "tensor", float(group["initial_accumulator_value"]),
                      non_negative=True),
        ]

    @staticmethod
    def _update(ops, param, grad, state, hp):
        step = state["step"] = state["step"] + 1
        clr = hp["lr"] / (1 + (step - 1) * hp["lr_decay"])
        accumulated = state["sum"] = ops.addcmul_(state["sum"], grad, grad, 1)
        if hp.get("eps_inside_sqrt", False):
            std = ops.sqrt_(ops.add(accumulated, hp["eps"]))
        else:
            std = ops.add_(ops.sqrt(accumulated), hp["eps"])
        return ops.addcdiv_(param, grad, std, -clr)
