"""The tasks by name: the one place that maps an experiment name to its code.

The built-in tasks are registered here; a task of the public :class:`.protocol.Task` protocol
defined outside the package is registered when it is loaded (:func:`load`), from its module
path (``package.module:Class``), which run specs and results record so that a later process
(``report``, ``--resume``, a worker) finds it again.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import config as builtin_config
from . import custom, karate, mnist, mnist_vectorized
from .protocol import Claim, Figures, ReportMetric, SweepMetric

Spec = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    """What the harness needs of a task, by experiment name."""

    #: the object that trains one run: ``make(spec, device, data_dir)``
    make: Callable[[Spec, torch.device, str | None], Any]
    #: a validated config -> its run specs
    expand: Callable[[dict[str, Any]], list[Spec]]
    #: read the data of a config once (a missing file stops the command before any run)
    check_data: Callable[[dict[str, Any], str | None], None]
    #: a run's rough relative cost (the pool starts the longest first)
    expected_cost: Callable[[Spec], float]
    sweep_metric: SweepMetric
    report_metrics: tuple[ReportMetric, ...]
    claims: tuple[Claim, ...]
    figures: Figures
    #: the stacked program of several runs: ``stacked(specs, device, data_dir)``, or None
    stacked: Callable[[list[Spec], torch.device, str | None], Any] | None = None
    #: what runs must share to be one stacked program (None: the run trains alone)
    group_key: Callable[[Spec], tuple[Any, ...] | None] | None = None
    #: why a run trains alone
    why_not: Callable[[Spec], str | None] = lambda spec: None
    #: the task's config defaults and their validation (None: the built-in config schema)
    config: custom.CustomConfig | None = None
    #: the task's own flags on its commands, and how they enter its config
    add_flags: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    apply_flags: Callable[[argparse.Namespace, dict[str, Any], dict[str, Any]],
                          dict[str, Any]] = lambda args, cfg, upd: cfg
    #: a sweep's defaults for the task's flags, and its config turned into a sweep's
    #: (``prepare_sweep(cfg, --val-split)``)
    sweep_flags: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    prepare_sweep: Callable[[dict[str, Any], float | None], dict[str, Any]] = \
        lambda cfg, val_split: cfg
    #: what the task's command does (its --help)
    help: str = ""
    #: every optimizer a validated config runs
    optimizers_of: Callable[[dict[str, Any]], list[str]] = lambda cfg: list(cfg["optimizers"])


def _builtin(cls: Any, expand: Callable[[dict[str, Any]], list[Spec]], **more: Any) -> Entry:
    return Entry(make=cls, expand=expand, check_data=cls.check_data,
                 expected_cost=cls.expected_cost, sweep_metric=cls.sweep_metric,
                 report_metrics=cls.report_metrics, claims=cls.claims, figures=cls.figures,
                 **more)


TASKS: dict[str, Entry] = {
    "mnist": _builtin(mnist.MnistTask, mnist.expand, stacked=mnist_vectorized.VectorMnist,
                      group_key=mnist_vectorized.group_key, why_not=mnist_vectorized.why_not,
                      add_flags=mnist.add_flags, apply_flags=mnist.apply_flags,
                      sweep_flags=mnist.sweep_flags, prepare_sweep=mnist.prepare_sweep,
                      optimizers_of=mnist.optimizers_of, help=mnist.HELP),
    "karate": _builtin(karate.KarateTask, karate.expand,
                       why_not=lambda spec: "karate runs are not vectorised (graph models: PyG "
                       "message passing)",
                       add_flags=karate.add_flags, apply_flags=karate.apply_flags,
                       help=karate.HELP),
}


def load(path: str) -> str:
    """Load the task at ``package.module:Class`` (checked against the protocol; ValueError
    naming the task and the problem) and register it; returns its experiment name."""
    task = custom.load_task(path)
    entry = TASKS.get(task.name)
    if entry is not None and (entry.config is None or entry.config.path != path):
        raise ValueError(f"--task {path}: its name {task.name!r} is already taken by another "
                         "task; give it another name")
    config = custom.CustomConfig(task, path)
    TASKS[task.name] = Entry(
        make=config.make_run, expand=config.expand, check_data=config.check_data,
        expected_cost=config.expected_cost, sweep_metric=config.sweep_metric(),
        report_metrics=config.report_metrics(), claims=tuple(getattr(task, "claims", ())),
        figures=config.figures(),
        stacked=config.make_stacked, group_key=config.group_key, why_not=config.why_not,
        config=config)
    return task.name


def entry(experiment: str, task_path: str | None = None) -> Entry:
    """The registered task of ``experiment`` (loading ``task_path`` if not yet loaded)."""
    if experiment not in TASKS and task_path:
        load(task_path)
    if experiment not in TASKS:
        raise ValueError(f"experiment {experiment!r}: no such task; built-in tasks: "
                         f"{', '.join(BUILTIN)}; or give a task's module path (--task)")
    return TASKS[experiment]


BUILTIN = tuple(TASKS)


def of(spec: Spec) -> Entry:
    """The task of a run spec (or a config)."""
    return entry(spec["experiment"], spec.get("task"))


def make_task(spec: Spec, device: torch.device, data_dir: str | None) -> Any:
    """The object that trains the run of ``spec``."""
    return of(spec).make(spec, device, data_dir)


def expand(cfg: dict[str, Any]) -> list[Spec]:
    """One run spec per run of a validated config."""
    return of(cfg).expand(cfg)


def check_data(cfg: dict[str, Any], data_dir: str | None) -> None:
    of(cfg).check_data(cfg, data_dir)


def expected_cost(spec: Spec) -> float:
    return of(spec).expected_cost(spec)


def replica_group(spec: Spec) -> tuple[Any, ...] | None:
    """What runs must share to train as stacked replicas of one program (None: it trains
    alone)."""
    e = of(spec)
    return None if e.group_key is None or e.stacked is None else e.group_key(spec)


def why_not_stacked(spec: Spec) -> str:
    """Why the run of ``spec`` trains alone, for the sweep's message."""
    return of(spec).why_not(spec) or "not vectorised"


def make_stacked(specs: list[Spec], device: torch.device, data_dir: str | None) -> Any:
    """The program that trains the runs of ``specs`` (one :func:`replica_group`) together."""
    stacked = of(specs[0]).stacked
    assert stacked is not None
    return stacked(specs, device, data_dir)


def sweep_metric(experiment: str) -> SweepMetric:
    """The metric sweeps of ``experiment`` tune on and report."""
    return entry(experiment).sweep_metric


def default_config(experiment: str) -> dict[str, Any]:
    """A fresh copy of the default configuration of ``experiment``."""
    config = entry(experiment).config
    return builtin_config.default_config(experiment) if config is None else \
        config.default_config()


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every value of a config (ValueError naming the key); returns a normalised copy."""
    config = of(cfg).config
    return builtin_config.validate(cfg) if config is None else config.validate(cfg)
