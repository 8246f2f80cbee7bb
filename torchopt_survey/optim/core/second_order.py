"""The base of the closure-based methods (Newton, NewtonCG, ConjugateGradient).

They do not fit :class:`~.base.SurveyOptimizer`'s per-tensor ``_update``: they need closures, one
flat view of all parameters and a line search. What they share is here: argument checks (one
table per class, the same checks on ``add_param_group``), the rule that every group carries the
same hyperparameters (the method solves *one* problem over all groups' parameters, so a group
cannot have its own line search or damping), the state (one dict of tensors, kept under the first
parameter like LBFGS, so ``state_dict`` round-trips exactly), the line-search step, the stop tests
and the Levenberg-Marquardt damping rule.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

from . import validation as V
from .curvature import Evaluation, check_flat_params, set_params
from .line_search import LineSearchResult, strong_wolfe

# Levenberg-Marquardt rule on rho = actual / predicted decrease (Martens 2010's constants)
RHO_LOW, RHO_HIGH = 0.25, 0.75
DAMPING_UP, DAMPING_DOWN = 1.5, 2.0 / 3.0
# what lambda becomes when it must rise from zero
DAMPING_FROM_ZERO = 1e-3

COMMON_HYPERPARAMETERS: dict[str, V.Check] = {
    "lr": V.positive,
    "max_iter": V.positive_int,
    "tolerance_grad": V.non_negative(),
    "tolerance_change": V.non_negative(),
    "line_search_fn": V.one_of("strong_wolfe", None),
    "c1": V.open_unit_interval,
    "c2": V.open_unit_interval,
    "max_ls": V.positive_int,
}


def adapt_damping(damping: float, rho: float) -> float:
    """Raise lambda (x 3/2, or to 1e-3 from 0) when rho < 1/4; lower it (x 2/3) when rho > 3/4.

    Args:
        damping (float): the current damping :math:`\\lambda`.
        rho (float): the reduction ratio, actual over predicted decrease (NaN raises it).

    Returns:
        float: the new damping.
    """
    if not rho >= RHO_LOW:  # also NaN
        return damping * DAMPING_UP if damping > 0.0 else DAMPING_FROM_ZERO
    if rho > RHO_HIGH:
        return damping * DAMPING_DOWN
    return damping


class ClosureOptimizer(Optimizer):
    """Base class; subclasses set ``_hyperparameters`` and implement ``_run``.

    Args:
        params (iterable): tensors or parameter-group dicts (all groups share the
            hyperparameters). As for ``torch.optim.Optimizer``.
        defaults (dict): the constructor's hyperparameters, checked against
            ``_hyperparameters``. As for ``torch.optim.Optimizer``.
    """

    _hyperparameters: ClassVar[dict[str, V.Check]] = {}

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        self._check_group(defaults, where="")
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or dicts, got a single Tensor")
        if isinstance(params, (set, frozenset)):
            raise TypeError("params must be an ordered collection (list, tuple), not a set")
        if params is None or isinstance(params, (str, bytes, dict)) or not hasattr(
            params, "__iter__"
        ):
            raise TypeError(
                f"params must be an iterable of Tensors or parameter-group dicts, got "
                f"{type(params).__name__}"
            )
        super().__init__(params, defaults)

    def step_in_backward(self, model_or_params: Any, *args: Any, **kwargs: Any) -> Any:
        """Refused: a second-order step needs closures and the whole gradient at once."""
        raise RuntimeError(
            f"{type(self).__name__} cannot step inside backward: a second-order step "
            "re-evaluates the loss through a closure and needs every parameter's gradient "
            "(and curvature) at once; call step(closure) after backward, or use a first-order "
            "optimizer with step_in_backward"
        )

    # ------------------------------------------------------------------ checks
    @property
    def _name(self) -> str:
        return type(self).__name__

    def _check_group(self, group: dict[str, Any], where: str) -> None:
        for name, check in self._hyperparameters.items():
            if name in group:
                check(where + name, group[name])
        if "c1" in group and "c2" in group and not group["c1"] < group["c2"]:
            raise ValueError(
                f"Invalid {where}c2: {group['c2']} (must be > c1 = {group['c1']}; "
                "0 < c1 < c2 < 1)"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group.get("params")
        params_list = [params] if isinstance(params, Tensor) else list(params or [])
        for index, param in enumerate(params_list):
            if not isinstance(param, Tensor):
                raise TypeError(f"params[{index}]: expected a Tensor, got {type(param).__name__}")
        V.check_params_dtype(params_list)
        index = len(self.param_groups)
        where = f"param_groups[{index}]."
        merged = {**self.defaults, **param_group}
        self._check_group(merged, where=where)
        if self.param_groups:
            first = self.param_groups[0]
            for key in self._hyperparameters:
                if key in merged and merged[key] != first[key]:
                    raise ValueError(
                        f"{self._name}: {where}{key} = {merged[key]!r} differs from "
                        f"param_groups[0].{key} = {first[key]!r}; all groups must share the "
                        "hyperparameters, because the method solves one problem over all groups' "
                        "parameters together"
                    )
        super().add_param_group(param_group)
        if len(self.param_groups[-1]["params"]) == 0:
            raise ValueError(f"{where}params: a parameter group must hold at least one tensor")
        check_flat_params(self._params, self._name)

    @property
    def _params(self) -> list[Tensor]:
        """The flat problem's variables: every parameter that requires grad (frozen ones are
        left out, so they add no zero rows to the curvature)."""
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        if not params:
            raise ValueError(f"{self._name}: no parameter requires grad; nothing to optimize")
        return params

    @property
    def _hp(self) -> dict[str, Any]:
        return self.param_groups[0]

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Tensor]:
        """The one state dict (under the first parameter): scalars as 0-d tensors, vectors flat.

        Float scalars are stored in the parameters' dtype (``load_state_dict`` casts them to
        it anyway) and always read back from the tensor, so a reloaded optimizer continues
        bit-identically."""
        state = self.state[self._params[0]]
        if not state:
            p = self._params[0]
            for key in ("func_evals", "hvp_evals", "n_iter", "ls_evals"):
                state[key] = torch.zeros((), dtype=torch.int64)
            state["ls_success"] = torch.tensor(True)
            state["ls_step"] = torch.zeros((), dtype=p.dtype, device=p.device)
            self._init_state(state, p)
        return state

    def _init_state(self, state: dict[str, Tensor], p: Tensor) -> None:
        """Method-specific entries (override)."""

    @staticmethod
    def _scalar(state: dict[str, Tensor], key: str) -> float:
        return float(state[key])

    @staticmethod
    def _set(state: dict[str, Tensor], key: str, value: float | int | bool) -> None:
        state[key].fill_(value)

    def _count(self, state: dict[str, Tensor], key: str, n: int = 1) -> None:
        state[key] += n

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Run up to ``max_iter`` outer iterations, as ``torch.optim.LBFGS.step``.

        Args:
            closure (callable): clears the gradients, re-evaluates the model, calls
                ``loss.backward()`` and returns the loss. Required (``TypeError`` without it).

        Returns:
            The loss at the start of the step, as LBFGS returns it.
        """
        if closure is None or not callable(closure):
            raise TypeError(
                f"{self._name}.step() needs a closure that re-evaluates the model and returns the "
                "loss, e.g. def closure(): opt.zero_grad(); loss = f(model(x)); loss.backward(); "
                f"return loss -- then opt.step(closure); got {closure!r}"
            )
        return self._run(closure)

    def _run(self, closure: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def _first_evaluation(self, ev: Evaluation) -> None:
        if not math.isfinite(ev.loss):
            raise ValueError(
                f"{self._name}: the closure returned a non-finite loss ({ev.loss}) at the current "
                "parameters"
            )

    def _search(
        self,
        evaluate_at: Callable[[], Evaluation],
        x0: Tensor,
        ev0: Evaluation,
        payload0: Any,
        direction: Tensor,
        step: float,
        state: dict[str, Tensor],
    ) -> LineSearchResult:
        """Move the parameters from x0 along ``direction``: by the strong-Wolfe search started at
        ``step``, or (``line_search_fn=None``) by exactly ``step``. Records the outcome in the
        state; warns when the search failed (the parameters then sit at its best point)."""
        params, hp = self._params, self._hp

        last_t: list[float] = []

        def phi(t: float) -> tuple[float, Tensor, Any]:
            last_t.append(t)
            set_params(params, x0 + t * direction)
            ev = evaluate_at()
            self._count(state, "func_evals")
            return ev.loss, ev.grad, ev

        if hp["line_search_fn"] is None:
            f, g, ev = phi(step)
            if not math.isfinite(f):
                raise ValueError(
                    f"{self._name}: non-finite loss ({f}) after a fixed step of {step:g}; lower "
                    "lr or use line_search_fn='strong_wolfe'"
                )
            result = LineSearchResult(step, f, g, ev, 1, True, "fixed step", first_step=step,
                                      first_loss=f)
        else:
            result = strong_wolfe(
                phi, ev0.loss, ev0.grad, payload0, direction, step,
                c1=hp["c1"], c2=hp["c2"], max_evals=hp["max_ls"],
                tolerance_change=hp["tolerance_change"],
            )
            # A failed search may return an earlier point than its last trial. Writing the
            # parameters only then keeps the returned evaluation's autograd graph valid (an
            # in-place write bumps the version the graph saved); callers that need the graph
            # re-evaluate when ``moved`` is set.
            if result.step != last_t[-1]:
                set_params(params, x0 + result.step * direction)
                result.moved = True
            if not result.success:
                warnings.warn(
                    f"{self._name}: line search failed ({result.message}); parameters left at "
                    f"the best point found (step {result.step:g}, loss {result.loss:g})",
                    RuntimeWarning,
                    stacklevel=6,  # the caller of step()
                )
        self._set(state, "ls_evals", result.evals)
        self._set(state, "ls_success", result.success)
        self._set(state, "ls_step", result.step)
        return result

    def _stop_after(self, loss_old: float, res: LineSearchResult, direction: Tensor) -> bool:
        """tolerance_change: stop when the loss or the parameters changed by less."""
        tol = self._hp["tolerance_change"]
        if abs(res.loss - loss_old) < tol:
            return True
        return float((res.step * direction).abs().max()) <= tol

    def _grad_small(self, grad: Tensor) -> bool:
        """tolerance_grad: stop when max |g_i| <= tolerance_grad."""
        return float(grad.abs().max()) <= self._hp["tolerance_grad"]
