"""Invalid input: every case must fail early with the right exception and a message that names
the offending argument (and, for parameter groups, the group index), and a failed
``load_state_dict`` must leave the optimizer exactly as it was.

torch.optim's own validation is the floor: whatever its counterpart rejects, ours rejects too.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import torch
from torch import Tensor

import torchopt_survey as ts

NAN = math.nan
INF = math.inf


def _p(*shape: int) -> Tensor:
    return torch.zeros(shape or (3,), requires_grad=True)


def bad(cls: type, args: dict[str, Any] | Callable[[], Any], exc: Any, match: str, *,
        id: str, marks: Any = ()) -> Any:
    """One row: ``cls([param], **args)`` -- or ``args()`` when it is a callable -- raises
    ``exc`` with a message matching ``match`` (which names the argument)."""
    return pytest.param(cls, args, exc, match, id=id, marks=marks)


def _add_group(cls: type, group: dict[str, Any], **kwargs: Any) -> Callable[[], Any]:
    """A callable that builds ``cls([p], **kwargs)`` and adds ``group`` as param_groups[1]."""

    def go() -> None:
        opt = cls([_p()], **kwargs)
        opt.add_param_group(group)

    return go


def _shared_param_add() -> None:
    shared = _p()
    ts.Adam([shared]).add_param_group({"params": [shared]})


def _duplicate_across_groups() -> None:
    shared = _p()
    ts.SGD([{"params": [shared]}, {"params": [shared, _p()]}], lr=0.1)


CONSTRUCTOR_CASES = [
    # --- negative / NaN / infinite numbers
    bad(ts.SGD, {"lr": -0.1}, ValueError, r"\blr\b", id="SGD-lr-negative"),
    bad(ts.Adam, {"lr": -1e-3}, ValueError, r"\blr\b", id="Adam-lr-negative"),
    bad(ts.Adam, {"lr": NAN}, ValueError, r"\blr\b", id="Adam-lr-nan"),
    bad(ts.RMSprop, {"lr": INF}, ValueError, r"\blr\b", id="RMSprop-lr-inf"),
    bad(ts.Adam, {"eps": -1e-8}, ValueError, r"\beps\b", id="Adam-eps-negative"),
    bad(ts.Adagrad, {"eps": NAN}, ValueError, r"\beps\b", id="Adagrad-eps-nan"),
    bad(ts.RMSprop, {"eps": -1.0}, ValueError, r"\beps\b", id="RMSprop-eps-negative"),
    bad(ts.SGD, {"weight_decay": -0.1}, ValueError, r"weight_decay", id="SGD-wd-negative"),
    bad(ts.AdamW, {"weight_decay": -1.0}, ValueError, r"weight_decay", id="AdamW-wd-negative"),
    bad(ts.Adadelta, {"weight_decay": NAN}, ValueError, r"weight_decay", id="Adadelta-wd-nan"),
    bad(ts.Adam, {"weight_decay": INF}, ValueError, r"weight_decay", id="Adam-wd-inf"),
    bad(ts.SGD, {"momentum": -0.5}, ValueError, r"\bmomentum\b", id="SGD-momentum-negative"),
    bad(ts.RMSprop, {"momentum": -0.1}, ValueError, r"\bmomentum\b",
        id="RMSprop-momentum-negative"),
    bad(ts.Momentum, {"momentum": 0}, ValueError, r"\bmomentum\b", id="Momentum-momentum-zero"),
    bad(ts.SGD, {"dampening": -0.1}, ValueError, r"dampening", id="SGD-dampening-negative"),
    bad(ts.Adagrad, {"lr_decay": -0.1}, ValueError, r"lr_decay", id="Adagrad-lr_decay-negative"),
    bad(ts.Adagrad, {"initial_accumulator_value": -1.0}, ValueError,
        r"initial_accumulator_value", id="Adagrad-init_acc-negative"),
    bad(ts.NAdam, {"momentum_decay": -4e-3}, ValueError, r"momentum_decay",
        id="NAdam-momentum_decay-negative"),
    bad(ts.NAdam, {"momentum_decay": NAN}, ValueError, r"momentum_decay",
        id="NAdam-momentum_decay-nan"),
    # --- betas
    bad(ts.Adam, {"betas": (1.0, 0.999)}, ValueError, r"betas\[0\]", id="Adam-beta1-one"),
    bad(ts.Adam, {"betas": (0.9, 1.0)}, ValueError, r"betas\[1\]", id="Adam-beta2-one"),
    bad(ts.Adamax, {"betas": (-0.1, 0.999)}, ValueError, r"betas\[0\]", id="Adamax-beta1-neg"),
    bad(ts.NAdam, {"betas": (0.9, NAN)}, ValueError, r"betas\[1\]", id="NAdam-beta2-nan"),
    bad(ts.AMSGrad, {"betas": (0.9,)}, ValueError, r"betas", id="AMSGrad-betas-len1"),
    bad(ts.Adam, {"betas": (0.9, 0.99, 0.999)}, ValueError, r"betas", id="Adam-betas-len3"),
    bad(ts.Adam, {"betas": 0.9}, TypeError, r"betas", id="Adam-betas-float"),
    bad(ts.AdamW, {"betas": "ab"}, TypeError, r"betas", id="AdamW-betas-str"),
    bad(ts.Adam, {"betas": (torch.tensor(0.9), 0.99)}, ValueError, r"betas",
        id="Adam-betas-tensor-float-mix"),
    bad(ts.Adamax, {"betas": (torch.tensor(0.9), torch.tensor(0.99))}, TypeError, r"betas",
        id="Adamax-betas-tensors"),
    # --- rho / alpha outside [0, 1]
    bad(ts.RMSprop, {"alpha": 1.5}, ValueError, r"\balpha\b", id="RMSprop-alpha-gt1"),
    bad(ts.RMSprop, {"alpha": -0.01}, ValueError, r"\balpha\b", id="RMSprop-alpha-neg"),
    bad(ts.Adadelta, {"rho": 1.01}, ValueError, r"\brho\b", id="Adadelta-rho-gt1"),
    bad(ts.Adadelta, {"rho": -0.1}, ValueError, r"\brho\b", id="Adadelta-rho-neg"),
    # --- wrong types: strings, None, bools where numbers go, non-bools where flags go
    bad(ts.SGD, {"lr": "0.1"}, TypeError, r"\blr\b", id="SGD-lr-str"),
    bad(ts.Adam, {"lr": True}, TypeError, r"\blr\b", id="Adam-lr-bool"),
    bad(ts.Adam, {"lr": torch.tensor([0.1, 0.2])}, ValueError, r"\blr\b",
        id="Adam-lr-tensor-2elem"),
    bad(ts.Adam, {"eps": True}, TypeError, r"\beps\b", id="Adam-eps-bool"),
    bad(ts.SGD, {"momentum": True}, TypeError, r"\bmomentum\b", id="SGD-momentum-bool"),
    bad(ts.SGD, {"momentum": None}, TypeError, r"\bmomentum\b", id="SGD-momentum-none"),
    bad(ts.Adagrad, {"lr_decay": False}, TypeError, r"lr_decay", id="Adagrad-lr_decay-bool"),
    bad(ts.RMSprop, {"centered": "true"}, TypeError, r"centered", id="RMSprop-centered-str"),
    bad(ts.SGD, {"nesterov": 1}, TypeError, r"nesterov", id="SGD-nesterov-int"),
    bad(ts.Adam, {"amsgrad": None}, TypeError, r"amsgrad", id="Adam-amsgrad-none"),
    bad(ts.Adam, {"maximize": "false"}, TypeError, r"maximize", id="Adam-maximize-str"),
    bad(ts.SGD, {"differentiable": None}, TypeError, r"differentiable",
        id="SGD-differentiable-none"),
    bad(ts.Adam, {"foreach": "yes"}, TypeError, r"foreach", id="Adam-foreach-str"),
    # --- inconsistent combinations
    bad(ts.SGD, {"nesterov": True}, ValueError, r"nesterov", id="SGD-nesterov-no-momentum"),
    bad(ts.SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError,
        r"nesterov", id="SGD-nesterov-dampening"),
    bad(ts.NAG, {"nesterov": False}, ValueError, r"nesterov", id="NAG-nesterov-false"),
    bad(ts.NAG, {"dampening": 0.5}, ValueError, r"dampening", id="NAG-dampening"),
    bad(ts.AMSGrad, {"amsgrad": False}, ValueError, r"amsgrad", id="AMSGrad-amsgrad-false"),
    bad(ts.Adam, {"fused": True, "foreach": True}, ValueError, r"fused.*foreach",
        id="Adam-fused-and-foreach"),
    bad(ts.Adam, {"fused": True, "differentiable": True}, ValueError, r"fused.*differentiable",
        id="Adam-fused-and-differentiable"),
    bad(ts.NAG, {"lookahead": True, "fused": True}, ValueError, r"lookahead",
        id="NAG-lookahead-fused"),
    bad(ts.NAG, lambda: ts.NAG([_p()], lookahead=True).step(), ValueError, r"closure",
        id="NAG-lookahead-step-without-closure"),
    # --- survey switches
    bad(ts.Momentum, {"momentum_form": "bogus"}, ValueError, r"momentum_form",
        id="Momentum-form-bogus"),
    bad(ts.SGD, {"momentum_form": "Survey"}, ValueError, r"momentum_form",
        id="SGD-form-wrong-case"),
    bad(ts.NAG, {"lookahead": "yes"}, TypeError, r"lookahead", id="NAG-lookahead-str"),
    bad(ts.RMSprop, {"eps_inside_sqrt": 1}, TypeError, r"eps_inside_sqrt",
        id="RMSprop-eps_inside-int"),
    bad(ts.Adagrad, {"eps_inside_sqrt": None}, TypeError, r"eps_inside_sqrt",
        id="Adagrad-eps_inside-none"),
    bad(ts.Adam, {"bias_correction": "no"}, TypeError, r"bias_correction",
        id="Adam-bias_correction-str"),
    bad(ts.AMSGrad, {"bias_correction": 0}, TypeError, r"bias_correction",
        id="AMSGrad-bias_correction-int"),
    # --- the params argument
    bad(ts.Adam, lambda: ts.Adam([]), ValueError, r"param", id="params-empty-list"),
    bad(ts.Adam, lambda: ts.Adam([{"params": []}]), ValueError, r"params",
        id="params-empty-group"),
    bad(ts.SGD, _duplicate_across_groups, ValueError, r"more than one parameter group",
        id="params-duplicate-across-groups"),
    bad(ts.Adam, lambda: ts.Adam([_p() * 2]), ValueError, r"non-leaf", id="params-non-leaf"),
    bad(ts.Adam, lambda: ts.Adam([torch.zeros(3, dtype=torch.long)]), TypeError,
        r"params\[0\].*dtype", id="params-int64"),
    bad(ts.SGD, lambda: ts.SGD([_p(), torch.zeros(2, dtype=torch.int32)], lr=0.1), TypeError,
        r"params\[1\].*dtype", id="params-int32-second"),
    bad(ts.Adam, lambda: ts.Adam({_p()}), TypeError, r"\bset|order",
        id="params-set"),
    bad(ts.Adam, lambda: ts.Adam([{"params": {_p()}}]), TypeError, r"\bset|order",
        id="params-group-set"),
    bad(ts.Adam, lambda: ts.Adam(_p()), TypeError, r"params", id="params-single-tensor"),
    bad(ts.Adam, lambda: ts.Adam([1.0, 2.0]), TypeError, r"params\[0\]", id="params-floats"),
    bad(ts.Adam, lambda: ts.Adam(None), TypeError, r"params", id="params-none"),
    bad(ts.Adam, lambda: ts.Adam([{"lr": 0.1}]), (KeyError, ValueError), r"params",
        id="params-group-without-params"),
    # --- named parameters: (str, Tensor) pairs, all of a group's or none
    bad(ts.Adam, lambda: ts.Adam([("w", _p()), _p()]), ValueError,
        r"names are missing \(params\[1\]", id="params-named-and-unnamed"),
    bad(ts.Adam, lambda: ts.Adam([("w", _p(), "extra")]), TypeError,
        r"params\[0\].*\(str, Tensor\)", id="params-named-triple"),
    bad(ts.SGD, lambda: ts.SGD([("w", _p()), (1, _p())], lr=0.1), TypeError,
        r"params\[1\].*\(str, Tensor\)", id="params-named-non-str-name"),
    bad(ts.Adam, lambda: ts.Adam([("w", 1.0)]), TypeError, r"params\[0\].*\(str, Tensor\)",
        id="params-named-non-tensor"),
    bad(ts.Adam, lambda: ts.Adam([{"params": [_p()]}, {"params": [("w", _p())]}]), ValueError,
        r"param groups should be with/without names", id="params-groups-named-and-unnamed"),
]

# ids "apg-*": bad values that arrive through add_param_group, as param_groups[1]
ADD_GROUP_CASES = [
    bad(ts.Adam, _add_group(ts.Adam, {"params": [_p()], "lr": -1.0}), ValueError,
        r"param_groups\[1\]\.lr", id="apg-Adam-lr"),
    bad(ts.Adam, _add_group(ts.Adam, {"params": [_p()], "betas": (0.9,)}), ValueError,
        r"param_groups\[1\]\.betas", id="apg-Adam-betas-len1"),
    bad(ts.Adam, _add_group(ts.Adam, {"params": [_p()], "amsgrad": "x"}), TypeError,
        r"param_groups\[1\]\.amsgrad", id="apg-Adam-amsgrad-str"),
    bad(ts.Adagrad, _add_group(ts.Adagrad, {"params": [_p()], "lr_decay": -1.0}), ValueError,
        r"param_groups\[1\]\.lr_decay", id="apg-Adagrad-lr_decay"),
    bad(ts.RMSprop, _add_group(ts.RMSprop, {"params": [_p()], "eps_inside_sqrt": "y"}),
        TypeError, r"param_groups\[1\]\.eps_inside_sqrt", id="apg-RMSprop-eps_inside_sqrt"),
    bad(ts.Momentum, _add_group(ts.Momentum, {"params": [_p()], "momentum_form": "x"}),
        ValueError, r"param_groups\[1\]\.momentum_form", id="apg-Momentum-momentum_form"),
    bad(ts.Momentum, _add_group(ts.Momentum, {"params": [_p()], "momentum": 0.0}), ValueError,
        r"param_groups\[1\]\.momentum", id="apg-Momentum-momentum-zero"),
    bad(ts.SGD, _add_group(ts.SGD, {"params": [_p()], "nesterov": True}), ValueError,
        r"param_groups\[1\]\.nesterov", id="apg-SGD-nesterov-no-momentum"),
    bad(ts.NAG, _add_group(ts.NAG, {"params": [_p()], "nesterov": False}), ValueError,
        r"param_groups\[1\]\.nesterov", id="apg-NAG-nesterov-false"),
    bad(ts.AMSGrad, _add_group(ts.AMSGrad, {"params": [_p()], "amsgrad": False}), ValueError,
        r"param_groups\[1\]\.amsgrad", id="apg-AMSGrad-amsgrad-false"),
    bad(ts.Adam, _add_group(ts.Adam, {"params": [_p()], "fused": True, "foreach": True}),
        ValueError, r"param_groups\[1\]\.(fused|foreach)", id="apg-Adam-fused-and-foreach"),
    bad(ts.Adam, _add_group(ts.Adam, {"params": []}), ValueError, r"param_groups\[1\]\.params",
        id="apg-Adam-empty-params"),
    bad(ts.Adam, _add_group(ts.Adam, {"params": [torch.zeros(2, dtype=torch.int32)]}),
        TypeError, r"params\[0\].*dtype", id="apg-Adam-int-param"),
    bad(ts.Adam, _add_group(ts.Adam, [_p()]), TypeError, r"param_group", id="apg-Adam-not-a-dict"),
    bad(ts.Adam, _shared_param_add, ValueError, r"more than one parameter group",
        id="apg-Adam-duplicate-param"),
    bad(ts.Adam, _add_group(ts.Adam, {"params": [("w", _p())]}), ValueError,
        r"cannot add param group with names", id="apg-Adam-named-into-unnamed"),
]


@pytest.mark.parametrize(("cls", "args", "exc", "match"),
                         CONSTRUCTOR_CASES + ADD_GROUP_CASES)
def test_invalid_input_raises_naming_the_argument(cls: type, args: Any, exc: Any,
                                                 match: str) -> None:
    with pytest.raises(exc, match=match):
        if callable(args):
            args()
        else:
            cls([_p()], **args)


def test_table_size() -> None:
    assert len(CONSTRUCTOR_CASES) + len(ADD_GROUP_CASES) + len(LOAD_CASES) >= 50


# ------------------------------------------------------------------------------------------
# load_state_dict: rejected before anything is changed
# ------------------------------------------------------------------------------------------
def _stepped(cls: type, n_params: int = 2, n_groups: int = 1, **kwargs: Any) -> Any:
    """An optimizer over (3, 2) parameters that has taken one step (so it has state)."""
    gen = torch.Generator().manual_seed(n_params * 10 + n_groups)
    params = [torch.randn(3, 2, generator=gen).requires_grad_(True) for _ in range(n_params)]
    groups = [{"params": params}] if n_groups == 1 else [{"params": params[:1]},
                                                         {"params": params[1:]}]
    opt = cls(groups, **kwargs)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    return opt


def _edited(cls: type, edit: Callable[[dict[str, Any]], Any], **kwargs: Any
            ) -> Callable[[], Any]:
    """A state dict of ``cls(**kwargs)`` after one step, changed in place by ``edit``."""

    def make() -> Any:
        sd = copy.deepcopy(_stepped(cls, **kwargs).state_dict())
        edit(sd)
        return sd

    return make


def _set_state(index: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda sd: sd["state"][index].__setitem__(key, value)


def _set_group(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda sd: sd["param_groups"][0].__setitem__(key, value)


def _step_str_and_more(sd: dict[str, Any]) -> None:
    sd["param_groups"][0]["lr"] = 0.5  # valid changes that must not leak on failure
    sd["state"][0]["exp_avg"] = torch.full((3, 2), 7.0)
    sd["state"][1]["step"] = "x"


def load(target: type, source: Callable[[], Any], match: str, *, id: str,
         target_kwargs: dict[str, Any] | None = None, marks: Any = ()) -> Any:
    return pytest.param(target, target_kwargs or {}, source, match, id=id, marks=marks)


LOAD_CASES = [
    load(ts.Adam, lambda: _stepped(ts.Adam, n_groups=2).state_dict(), r"2 parameter groups",
         id="wrong-group-count"),
    load(ts.Adam, lambda: _stepped(ts.Adam, n_params=3).state_dict(), r"3 parameters",
         id="wrong-param-count"),
    load(ts.Adam, lambda: _stepped(ts.SGD, momentum=0.9).state_dict(), r"different optimizer",
         id="SGD-into-Adam"),
    load(ts.SGD, lambda: _stepped(ts.Adam).state_dict(), r"different optimizer",
         id="Adam-into-SGD", target_kwargs={"momentum": 0.9}),
    load(ts.Adadelta, lambda: _stepped(ts.RMSprop).state_dict(), r"different optimizer",
         id="RMSprop-into-Adadelta"),
    load(ts.NAdam, lambda: _stepped(ts.Adam).state_dict(), r"momentum_decay",
         id="Adam-into-NAdam"),
    load(ts.Adam, _edited(ts.Adam, _set_state(0, "exp_avg", torch.zeros(5))), r"exp_avg.*shape",
         id="wrong-tensor-shape"),
    load(ts.Adam, _edited(ts.Adam, _set_state(1, "exp_avg_sq", [1.0, 2.0])), r"exp_avg_sq",
         id="state-entry-not-tensor"),
    load(ts.Adam, lambda: [1, 2], r"state_dict", id="not-a-dict"),
    load(ts.Adam, _edited(ts.Adam, lambda sd: sd.pop("state")), r"'state'", id="no-state-key"),
    load(ts.Adam, _edited(ts.Adam, lambda sd: sd.__setitem__("param_groups", 3)),
         r"param_groups", id="groups-not-list"),
    load(ts.Adam, _edited(ts.Adam, lambda sd: sd["param_groups"].__setitem__(0, 3)),
         r"param_groups'\]\[0\]", id="group-not-dict"),
    load(ts.Adam, _edited(ts.Adam, lambda sd: sd["state"].__setitem__(0, 3)), r"state'\]\[0\]",
         id="state-not-dict"),
    load(ts.Adam, _edited(ts.Adam, lambda sd: sd["state"].__setitem__(7, {})),
         r"unknown parameter 7", id="unknown-param-id"),
    load(ts.Adam, _edited(ts.Adam, _set_group("lr", -1.0)), r"\[0\](\['lr'\]|\.lr)",
         id="group-lr-negative"),
    load(ts.Adam, _edited(ts.Adam, _set_group("betas", (0.9,))),
         r"\[0\](\['betas'\]|\.betas)", id="group-betas-len1"),
    load(ts.Adam, _edited(ts.Adam, lambda sd: sd["param_groups"][0].pop("eps")), r"eps",
         id="group-missing-eps"),
    load(ts.Momentum, _edited(ts.Momentum, _set_group("momentum_form", "bogus")),
         r"momentum_form", id="group-momentum_form-bogus"),
    load(ts.Adam, _edited(ts.Adam, _set_group("amsgrad", True)), r"max_exp_avg_sq",
         id="amsgrad-without-max-state"),
    load(ts.Adam, _edited(ts.Adam, _step_str_and_more), r"step", id="step-not-a-number"),
    load(ts.Adam, _edited(ts.Adam, _set_state(1, "exp_avg", None)), r"exp_avg",
         id="state-tensor-none"),
    load(ts.NAG, _edited(ts.NAG, _set_group("nesterov", False)), r"nesterov",
         id="NAG-nesterov-false"),
    load(ts.AMSGrad, lambda: _stepped(ts.Adam).state_dict(), r"amsgrad",
         id="Adam-into-AMSGrad"),
]


def _same(a: Any, b: Any) -> bool:
    """Deep equality for state dicts (tensors compared by value, dtype and shape)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


@pytest.mark.parametrize(("target", "target_kwargs", "source", "match"), LOAD_CASES)
def test_bad_state_dict_is_rejected_and_nothing_changes(
        target: type, target_kwargs: dict[str, Any], source: Callable[[], Any],
        match: str) -> None:
    opt = _stepped(target, **target_kwargs)
    before = copy.deepcopy(opt.state_dict())
    params_before = [list(g["params"]) for g in opt.param_groups]
    state_tensors_before = {id(p): dict(s) for p, s in opt.state.items()}
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(source())
    # a failed load must not be half applied: same values, same parameter objects,
    # and the very same state tensors (not copies of them)
    assert _same(opt.state_dict(), before)
    assert [list(g["params"]) for g in opt.param_groups] == params_before
    assert {id(p): dict(s) for p, s in opt.state.items()}.keys() == state_tensors_before.keys()
    for p, s in opt.state.items():
        assert all(s[k] is v for k, v in state_tensors_before[id(p)].items())


def test_good_state_dict_still_loads() -> None:
    # the control for the table above: a dict from the same class and layout loads fine
    source = _stepped(ts.Adam)
    target = _stepped(ts.Adam)
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    assert _same(target.state_dict(), source.state_dict())


# ------------------------------------------------------------------------------------------
# torch.optim's validation is the floor
# ------------------------------------------------------------------------------------------
COUNTERPARTS: list[tuple[type, Callable[..., torch.optim.Optimizer]]] = [
    (ts.SGD, torch.optim.SGD),
    (ts.Momentum, partial(torch.optim.SGD, momentum=0.9)),
    (ts.NAG, partial(torch.optim.SGD, momentum=0.9, nesterov=True)),
    (ts.Adagrad, torch.optim.Adagrad),
    (ts.Adadelta, torch.optim.Adadelta),
    (ts.RMSprop, torch.optim.RMSprop),
    (ts.Adam, torch.optim.Adam),
    (ts.AdamW, torch.optim.AdamW),
    (ts.AMSGrad, partial(torch.optim.Adam, amsgrad=True)),
    (ts.NAdam, torch.optim.NAdam),
    (ts.Adamax, torch.optim.Adamax),
]

_NUMBER_BAD: list[Any] = [-1.0, -1e-12, NAN, INF, -INF, 1.5, 2, "0.1", None, [0.1], (),
                          torch.tensor([0.1, 0.2])]
_BETAS_BAD: list[Any] = [(1.0, 0.9), (0.9, 1.0), (-0.1, 0.9), (0.9, -1e-9), (NAN, 0.9),
                         (0.9,), (0.9, 0.99, 0.999), 0.9, "ab", None, ("0.9", 0.99)]
_FLAG_BAD: list[Any] = ["yes", None, 1, 0.0]


def _bad_values(name: str) -> list[Any]:
    if name == "betas":
        return _BETAS_BAD
    if name in {"nesterov", "amsgrad", "centered", "maximize", "decoupled_weight_decay"}:
        return _FLAG_BAD
    if name in {"foreach", "fused", "capturable", "differentiable", "params"}:
        return []  # device/backend flags: checked by the table above, not here
    return _NUMBER_BAD


def _raises(make: Callable[[list[Tensor]], torch.optim.Optimizer]) -> BaseException | None:
    """Build the optimizer and take one step; return what it raised, if anything."""
    params = [torch.ones(3, requires_grad=True)]
    try:
        opt = make(params)
        params[0].grad = torch.ones(3)
        opt.step()
    except Exception as error:  # any failure of torch's counts as a rejection
        return error
    return None


@pytest.mark.parametrize(("ours", "theirs"), COUNTERPARTS,
                         ids=[cls.__name__ for cls, _ in COUNTERPARTS])
def test_torch_validation_is_the_floor(ours: type, theirs: Callable[..., Any]) -> None:
    torch_cls = theirs.func if isinstance(theirs, partial) else theirs
    shared = (set(inspect.signature(torch_cls).parameters)
              & set(inspect.signature(ours).parameters))
    checked, misses = 0, []
    for name in sorted(shared):
        for value in _bad_values(name):
            if _raises(lambda ps, n=name, v=value: theirs(ps, **{n: v})) is None:
                continue  # torch accepts it: no floor to hold ours to
            checked += 1
            error = _raises(lambda ps, n=name, v=value: ours(ps, **{n: v}))
            if not isinstance(error, (ValueError, TypeError)):
                misses.append(f"{name}={value!r}: {error!r}")
    assert checked >= 10, "torch rejected suspiciously few values; is the table stale?"
    assert not misses, f"torch.optim rejects these but {ours.__name__} does not: {misses}"


# the counterparts whose torch.optim class has a fused flag at all
_FUSED_COUNTERPARTS = [
    (ours, theirs) for ours, theirs in COUNTERPARTS
    if "fused" in inspect.signature(getattr(theirs, "func", theirs)).parameters
]


@pytest.mark.parametrize("flags", [{"fused": True, "foreach": True},
                                   {"fused": True, "differentiable": True}],
                         ids=["fused-foreach", "fused-differentiable"])
@pytest.mark.parametrize(("ours", "theirs"), _FUSED_COUNTERPARTS,
                         ids=[cls.__name__ for cls, _ in _FUSED_COUNTERPARTS])
def test_flag_conflicts_raise_torchs_error_type_too(ours, theirs, flags) -> None:
    """Our ValueError for conflicting flags is also the RuntimeError torch.optim raises."""
    torch_error = _raises(lambda ps: theirs(ps, **flags))
    assert torch_error is not None
    with pytest.raises(ValueError, match="fused") as error:
        ours([_p()], **flags)
    assert isinstance(error.value, type(torch_error)), (type(error.value), type(torch_error))
