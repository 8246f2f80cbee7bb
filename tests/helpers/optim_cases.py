"""One table describing every optimizer for the parametrised conformance suite.

In the spirit of PyTorch's ``OptimizerInfo``: each entry names our class, its torch.optim
counterpart (with the keyword arguments that make the two the same method), and the flag
combinations torch supports for it. Tests iterate over this table instead of repeating
per-optimizer code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

import torchopt_survey as ours


@dataclass(frozen=True)
class OptimInfo:
    name: str
    cls: type[torch.optim.Optimizer]
    torch_cls: type[torch.optim.Optimizer]
    #: added to both constructors (makes the torch class the same method, e.g. amsgrad=True)
    base: dict[str, Any]
    #: flag combinations to test, each applied to both classes
    configs: list[dict[str, Any]]
    capturable: bool = True
    #: whether torch's counterpart accepts a "fused" keyword at all
    torch_fused: bool = False
    #: relative tolerance of the float64 trajectory against torch.optim (0-ish: same ops)
    parity_rtol: float = 1e-12

    def ids(self) -> list[str]:
        return [self.name + "-" + ("-".join(f"{k}={v}" for k, v in c.items()) or "default")
                for c in self.configs]


_ADAM_LIKE = [
    {},
    {"weight_decay": 0.1},
    {"maximize": True},
    {"amsgrad": True},
    {"weight_decay": 0.1, "decoupled_weight_decay": True, "amsgrad": True},
]

OPTIMS: list[OptimInfo] = [
    OptimInfo("SGD", ours.SGD, torch.optim.SGD, {"lr": 0.05}, [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1},
        {"momentum": 0.9, "nesterov": True, "maximize": True},
        {"weight_decay": 0.1},
    ], capturable=False, torch_fused=True),
    OptimInfo("Momentum", ours.Momentum, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}, [
        {},
        {"weight_decay": 0.1, "dampening": 0.1},
        {"nesterov": True},
    ], capturable=False, torch_fused=True),
    OptimInfo("NAG", ours.NAG, torch.optim.SGD,
              {"lr": 0.05, "momentum": 0.9, "nesterov": True}, [
        {},
        {"weight_decay": 0.1, "maximize": True},
    ], capturable=False, torch_fused=True),
    OptimInfo("Adagrad", ours.Adagrad, torch.optim.Adagrad, {"lr": 0.1}, [
        {},
        {"lr_decay": 0.01, "weight_decay": 0.1},
        {"initial_accumulator_value": 0.5, "maximize": True, "eps": 1e-6},
    ], capturable=False, torch_fused=True),
    OptimInfo("Adadelta", ours.Adadelta, torch.optim.Adadelta, {"lr": 1.0}, [
        {},
        {"rho": 0.5, "weight_decay": 0.1},
        {"maximize": True, "eps": 1e-4},
    ]),
    OptimInfo("RMSprop", ours.RMSprop, torch.optim.RMSprop, {"lr": 0.01}, [
        {},
        {"centered": True},
        {"momentum": 0.9, "weight_decay": 0.1},
        {"momentum": 0.5, "centered": True, "maximize": True, "alpha": 0.9},
    ]),
    OptimInfo("Adam", ours.Adam, torch.optim.Adam, {"lr": 0.01}, _ADAM_LIKE, torch_fused=True),
    OptimInfo("AdamW", ours.AdamW, torch.optim.AdamW, {"lr": 0.01}, [
        {},
        {"weight_decay": 0.5, "amsgrad": True},
        {"maximize": True},
    ], torch_fused=True),
    OptimInfo("AMSGrad", ours.AMSGrad, torch.optim.Adam, {"lr": 0.01, "amsgrad": True}, [
        {},
        {"weight_decay": 0.1},
        {"betas": (0.8, 0.99), "maximize": True},
    ], torch_fused=True),
    OptimInfo("NAdam", ours.NAdam, torch.optim.NAdam, {"lr": 0.01}, [
        {},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True, "momentum_decay": 0.01},
        {"maximize": True},
    ]),
    OptimInfo("Adamax", ours.Adamax, torch.optim.Adamax, {"lr": 0.01}, [
        {},
        {"weight_decay": 0.1},
        {"maximize": True, "betas": (0.5, 0.9)},
    ]),
]

BY_NAME = {info.name: info for info in OPTIMS}

# (info, config) pairs for parametrize, with readable ids
CASES = [(info, config) for info in OPTIMS for config in info.configs]
CASE_IDS = [case_id for info in OPTIMS for case_id in info.ids()]

