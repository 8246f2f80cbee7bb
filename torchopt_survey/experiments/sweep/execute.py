"""Running a sweep's runs: vectorised groups where runs stack, the rest through the pool."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..runs.folder import run_id
from ..runs.pool import failure, run_guarded, run_many
from ..runs.vectorized import execute_vectorized, plan_groups
from ..runtime.process import RunOptions
from ..tasks.registry import replica_group, sweep_metric, why_not_stacked
from ..tasks.spec import SweepPoint


def plan_units(specs: Sequence[Mapping[str, Any]], vectorize: bool, log: Callable[[str], None],
               ) -> tuple[list[list[Mapping[str, Any]]], list[Mapping[str, Any]]]:
    """(vectorised groups, runs one by one); says why runs are not vectorised."""
    if not vectorize:
        log("sweep: --no-vectorize: every run separately")
        return [], list(specs)
    groups, alone = plan_groups(specs)
    for reason in sorted({why_not_stacked(s) for s in alone if replica_group(s) is None}):
        log(f"sweep: not vectorised, run one by one: {reason}")
    return groups, alone


def run_group(group: Sequence[Mapping[str, Any]], opts: RunOptions, log: Callable[[str], None],
              results: dict[str, dict[str, Any]]) -> list[Mapping[str, Any]]:
    """One vectorised program into ``results``; returns the runs left to do one by one."""
    log(f"sweep: {len(group)} runs of {group[0]['optimizer']} as one vectorised program")
    try:
        for res in execute_vectorized(group, opts):
            results[res["run_id"]] = {"status": "ok", **res}
    except Exception as exc:  # noqa: BLE001 -- the group's runs are retried one by one
        log(f"sweep: vectorised program failed ({type(exc).__name__}: {exc}); "
            "its runs go one by one")
        return [s for s in group if run_id(s) not in results]
    return []


def run_unit(unit: Sequence[dict[str, Any]], opts: RunOptions, log: Callable[[str], None],
             ) -> list[dict[str, Any]]:
    """Rows of one unit of work, as :func:`run_sweep` does it: a vectorised group (falling
    back to its runs one by one) or a single run. What one Ray trial does."""
    results: dict[str, dict[str, Any]] = {}
    rest = run_group(unit, opts, log, results) if len(unit) > 1 else list(unit)
    for spec in rest:
        results[run_id(spec)] = run_guarded(spec, opts)
    return [row(spec, results[run_id(spec)]) for spec in unit]


def run_sweep(specs: Sequence[Mapping[str, Any]], opts: RunOptions, vectorize: bool, workers: int,
              log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every spec (vectorised groups first, then the rest through the pool, longest
    first); returns (rows, timing)."""
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    groups, alone = plan_units(specs, vectorize, log)
    for group in groups:
        alone.extend(run_group(group, opts, log, results))
    for res in run_many(alone, opts, workers=min(workers, max(1, len(alone))),
                        keep_going=True):
        results[res["run_id"]] = res
    wall = time.perf_counter() - t0
    rows = [row(spec, results[run_id(spec)]) for spec in specs]
    return rows, {"wall_time_s": wall, "vectorized_programs": len(groups),
                  "runs": len(specs)}


def failed_row(spec: Mapping[str, Any], exc: BaseException) -> dict[str, Any]:
    """The row of a run that never reported (its process died with ``exc``)."""
    return row(spec, failure(spec, exc))


def _steps_to_target(res: dict[str, Any], tag: str, target: float) -> tuple[Any, Any]:
    """(steps, seconds) until the validation metric first reached ``target`` (None: never)."""
    history = res.get("history", {})
    values = history.get(tag, [])
    spe = res.get("loss_curve", {}).get("steps_per_epoch", 1)
    times = history.get("time/epoch_seconds", [])
    for epoch, value in enumerate(values, 1):
        if value >= target:
            return epoch * spe, sum(times[:epoch])
    return None, None


def row(spec: Mapping[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    """One run's row of the sweep's tables (``res``: its result with a ``status``)."""
    point = SweepPoint.of(spec["sweep"])  # (a result's stored spec, maybe a failed run's)
    exp = spec["experiment"]
    metric = sweep_metric(exp)
    val_tag, test_tag = metric.val_tag, metric.test_tag
    final = res.get("final", {})
    steps, seconds = _steps_to_target(res, val_tag, metric.target) \
        if res["status"] == "ok" else (None, None)
    return {
        "experiment": exp, "base": point.base, "optimizer": spec["optimizer"],
        "setting": point.label, "lr": point.setting["lr"],
        "seed": spec["seed"], "status": res["status"], "val": final.get(val_tag),
        "test": final.get(test_tag), "wall_time_s": res.get("wall_time_s"),
        "vectorized": res.get("vectorized", 1), "steps_to_target": steps,
        "seconds_to_target": seconds, "error": res.get("error", ""),
        "val_curve": res.get("history", {}).get(val_tag, []), "run_id": res["run_id"],
    }
