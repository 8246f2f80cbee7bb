"""The one pool: runs start longest first (estimated cost), so no worker idles at the end
while the longest run, started last, finishes."""

from __future__ import annotations

from typing import Any

import pytest

from torchopt_survey.experiments import cli
from torchopt_survey.experiments.runs import pool
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.tasks.registry import expand, expected_cost


def _main_job_specs() -> list[dict[str, Any]]:
    """The README's main job: ``all --seeds 0``."""
    args = cli.build_parser().parse_args(["all", "--seeds", "0"])
    return [s for cfg in cli.build_configs(args) for s in expand(cfg)]


def test_the_longest_run_starts_first() -> None:
    specs = _main_job_specs()
    order = pool.longest_first(specs)
    assert sorted(order) == list(range(len(specs)))
    first = specs[order[0]]
    # single-sample SGD: 60,000 steps an epoch, 600,000 in all
    assert (first["experiment"], first["regime"], first["batch_size"]) == ("mnist", "sgd", 1)
    costs = [expected_cost(specs[i]) for i in order]
    assert costs == sorted(costs, reverse=True)
    # the spec order puts that run after the GD regime: the ordering is what moved it
    assert specs.index(first) > 0


def test_run_many_executes_in_that_order(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = _main_job_specs()[:6]
    started: list[str] = []

    def fake_run(spec: dict[str, Any], opts: RunOptions, progress: Any = None) -> dict:
        started.append(f"{spec['variant']}/{spec['optimizer']}")
        return {"run_id": spec["variant"]}

    monkeypatch.setattr(pool, "execute_run", fake_run)
    results = pool.run_many(specs, RunOptions(), workers=1)
    want = [f"{specs[i]['variant']}/{specs[i]['optimizer']}" for i in pool.longest_first(specs)]
    assert started == want and started[0].endswith("-sgd/sgd")
    assert [r["run_id"] for r in results] == [s["variant"] for s in specs]  # spec order back
