"""GradNormTracker skips a step where some tracked parameter has no gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchopt_survey.experiments.tasks.techniques import GradNormTracker


def test_a_step_with_a_missing_gradient_is_not_counted() -> None:
    model = nn.Linear(2, 1)
    tracker = GradNormTracker(model)
    model.weight.grad = torch.tensor([[3.0, 4.0]])  # bias.grad stays None
    tracker.record()
    assert tracker.epoch_metrics() == {}  # the only step was skipped
    model.bias.grad = torch.tensor([1.0])
    tracker.record()
    model.weight.grad = torch.tensor([[6.0, 8.0]])
    model.bias.grad = None
    tracker.record()  # skipped: the mean below is over the one full step
    metrics = tracker.epoch_metrics()
    assert metrics == {"grad_norm/weight": pytest.approx(5.0), "grad_norm/bias": pytest.approx(1.0)}
