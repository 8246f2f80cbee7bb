"""The built-in tasks by name: the one place that maps an experiment name to its code."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import karate, mnist, mnist_vectorized
from .protocol import SweepMetric

#: experiment name -> (task class, config expansion into run specs)
TASKS: dict[str, tuple[type[Any], Callable[[dict[str, Any]], list[dict[str, Any]]]]] = {
    "mnist": (mnist.MnistTask, mnist.expand),
    "karate": (karate.KarateTask, karate.expand),
}

#: experiment name -> (stacked program class, its replica group key, why a run is not one)
STACKED: dict[str, tuple[type[Any], Callable[[dict[str, Any]], tuple[Any, ...] | None],
                         Callable[[dict[str, Any]], str | None]]] = {
    "mnist": (mnist_vectorized.VectorMnist, mnist_vectorized.group_key,
              mnist_vectorized.why_not),
}
#: why a task without stacked replicas trains its runs one by one
NOT_STACKED = {"karate": "graph models: PyG message passing"}


def make_task(spec: dict[str, Any], device: torch.device, data_dir: str | None) -> Any:
    """The task object that trains the run of ``spec``."""
    return TASKS[spec["experiment"]][0](spec, device, data_dir)


def expand(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One run spec per run of a validated config."""
    return TASKS[cfg["experiment"]][1](cfg)


def replica_group(spec: dict[str, Any]) -> tuple[Any, ...] | None:
    """What runs must share to train as stacked replicas of one program (None: it trains
    alone)."""
    if spec["experiment"] not in STACKED:
        return None
    return STACKED[spec["experiment"]][1](spec)


def why_not_stacked(spec: dict[str, Any]) -> str:
    """Why the run of ``spec`` trains alone, for the sweep's message."""
    exp = spec["experiment"]
    if exp not in STACKED:
        return f"{exp} runs are not vectorised ({NOT_STACKED.get(exp, 'no stacked model')})"
    return STACKED[exp][2](spec) or "not vectorised"


def make_stacked(specs: list[dict[str, Any]], device: torch.device,
                 data_dir: str | None) -> Any:
    """The program that trains the runs of ``specs`` (one :func:`replica_group`) together."""
    return STACKED[specs[0]["experiment"]][0](specs, device, data_dir)


def expected_cost(spec: dict[str, Any]) -> float:
    """A run's rough relative cost (for scheduling the longest first)."""
    return TASKS[spec["experiment"]][0].expected_cost(spec)


def sweep_metric(experiment: str) -> SweepMetric:
    """The metric sweeps of ``experiment`` tune on and report."""
    return TASKS[experiment][0].sweep_metric


def check_data(cfg: dict[str, Any], data_dir: str | None) -> None:
    """Load what the runs of ``cfg`` read, once, so a missing or corrupt file stops the
    command before any run folder exists."""
    TASKS[cfg["experiment"]][0].check_data(cfg, data_dir)


def task_class(experiment: str) -> Any:
    """The task class of ``experiment`` (its metrics, claims and defaults)."""
    return TASKS[experiment][0]
