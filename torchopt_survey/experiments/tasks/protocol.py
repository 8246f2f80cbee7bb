"""Checkpointable state of a task that owns a model and an optimizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


class ModelOptimizerState:
    """``state_dict``/``load_state_dict`` of a task that owns ``model`` and ``optimizer``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass(frozen=True)
class SweepMetric:
    """The metric a sweep tunes on (its validation value) and reports (its test value)."""

    #: tag suffix: ``val/<name>`` selects, ``test/<name>`` is reported
    name: str
    #: how tables and figures name it
    label: str
    #: validation value for the steps/time-to-target columns (AlgoPerf style)
    target: float

    @property
    def val_tag(self) -> str:
        return f"val/{self.name}"

    @property
    def test_tag(self) -> str:
        return f"test/{self.name}"


@dataclass(frozen=True)
class Claim:
    """A claim a report tests: every optimizer of ``winners`` beats every one of ``losers``
    (Welch's t-test over seeds per pair, see :func:`..report.stats.claim_verdict`)."""

    #: how the runs' claims table names it
    text: str
    winners: tuple[str, ...]
    losers: tuple[str, ...]
    #: (summary key, label) of each metric it is tested on, e.g.
    #: ``("test_accuracy", "final test accuracy")``
    metrics: tuple[tuple[str, str], ...]
    #: the claim is about the runs whose variant ends so ("": every variant)
    variant_suffix: str = ""
    #: how a sweep's claims table names it (tested there on the sweep's metric)
    sweep_text: str = ""


@dataclass(frozen=True)
class ReportMetric:
    """A metric the results table shows per optimizer (final and best epoch, mean ± std)."""

    #: key of the summary columns, e.g. ``test_accuracy``
    key: str
    #: TensorBoard tag it is read from, e.g. ``test/accuracy``
    tag: str
    #: column label, e.g. ``test acc``
    label: str
