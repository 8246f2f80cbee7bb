"""A task defined outside the package: regression of a smooth function on generated data.

Every feature of the built-in tasks applies to it::

    PYTHONPATH=examples python -m torchopt_survey.experiments run \
        --task regression_task:Regression --logdir runs/regression
    PYTHONPATH=examples python -m torchopt_survey.experiments sweep \
        --task regression_task:Regression --lr-grid 1e-3:1e-1:3 --logdir runs/regression-sweep
    python -m torchopt_survey.experiments report --logdir runs/regression --claim 'adam>sgd'

See ``docs/experiments-tasks.md``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from torchopt_survey.experiments.tasks.protocol import Capabilities, Defaults, Metric, TaskData


def r2(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination (1: perfect; 0: no better than the targets' mean)."""
    residual = (outputs.squeeze(-1) - targets).pow(2).sum()
    return 1 - residual / (targets - targets.mean()).pow(2).sum()


class Regression:
    """y = sin(w . x) + noise, x in R^8: a one-hidden-layer tanh network fits it."""

    name = "regression"
    metrics = (Metric("r2", r2),)
    select = "r2"
    #: validation R² for the sweep's steps/time-to-target columns
    target = 0.8
    defaults = Defaults(epochs=8, batch_size=32, seeds=(0, 1, 2), optimizers=("sgd", "adam"))
    capabilities = Capabilities()

    def data(self, device: torch.device) -> TaskData:
        gen = torch.Generator().manual_seed(1234)  # the same data for every run
        x = torch.randn(768, 8, generator=gen)
        w = torch.randn(8, generator=gen) / 2
        y = torch.sin(x @ w) + 0.1 * torch.randn(768, generator=gen)
        x, y = x.to(device), y.to(device)
        return TaskData(x[:512], y[:512], x[512:640], y[512:640], x[640:], y[640:])

    def model(self, seed: int) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.squeeze(-1), targets)
