"""``sweep --backend ray``: the sweep's runs as Ray Tune trials.

A grid search over units of work, each a trial with ``--threads`` CPUs (and a GPU with
``--device cuda``): one trial per vectorised group (it falls back to the group's runs one by
one, as the local backend does) and one per run that is not vectorised, so the same flags give
the same runs, the same numbers and the same tables as ``--backend local``. Each trial is a
normal run (or group) writing into ``--logdir``: ``--resume`` skips finished runs and continues
interrupted ones from their checkpoints, and a run that crashes is a failed row, as locally.
Ray's own trial folders go to a temporary directory, deleted at the end: everything kept is in
the run folders and the sweep's tables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runs.folder import run_id
from ..runtime.process import RunOptions, quiet_import_noise
from .execute import failed_row, plan_units, run_unit

#: what ``--backend ray`` says (exit 2) where Ray Tune is not installed
INSTALL_HINT = 'pip install -e ".[ray]"'


def require_ray() -> None:
    """Raise ValueError (the CLI's exit 2) naming the install command if Ray Tune is missing."""
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--backend ray: Ray Tune is not installed ({exc}); "
                         f"install it with {INSTALL_HINT}") from None


def _trial(config: dict[str, Any], units: Sequence[Sequence[dict[str, Any]]],
           opts: RunOptions) -> None:
    """One Ray trial: one unit of work, its rows reported as JSON (NaN-safe, lists kept)."""
    from ray import tune

    quiet_import_noise()
    rows = run_unit(units[config["unit"]], opts, log=print)
    tune.report({"rows": json.dumps(rows)})


def _trial_dirname(trial: Any) -> str:
    """``unitN``: a result names its unit by its folder (one that never reported has no
    config in its result)."""
    return f"unit{trial.config['unit']}"


def trial_rows(unit: Sequence[Mapping[str, Any]], metrics: dict[str, Any] | None,
               error: BaseException | None) -> list[dict[str, Any]] | None:
    """A trial's rows: as reported, else every run of the unit failed with the trial's error
    (its process died); None where it neither reported nor failed (the sweep was stopped)."""
    if metrics and "rows" in metrics:
        return json.loads(metrics["rows"])
    if error is None:
        return None
    return [failed_row(spec, error) for spec in unit]


def run_sweep_ray(specs: Sequence[Mapping[str, Any]], opts: RunOptions, vectorize: bool,
                  workers: int, address: str | None, log: Callable[[str], None],
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """:func:`.execute.run_sweep` on Ray Tune; returns (rows, timing) in its format.

    ``address`` (or ``RAY_ADDRESS``): an existing cluster, else a local instance of
    ``workers x threads`` CPUs started here and shut down at the end. An instance already
    initialised in this process (a caller's) is used and left running.
    """
    import ray
    from ray import tune

    t0 = time.perf_counter()
    groups, alone = plan_units(specs, vectorize, log)
    units = [*groups, *([s] for s in alone)]
    threads = opts.threads or 1
    # trials run in their own working directory, and on a cluster on other machines
    opts = dataclasses.replace(
        opts, threads=threads, logdir=os.path.abspath(opts.logdir),
        data_dir=os.path.abspath(opts.data_dir) if opts.data_dir else None)
    resources: dict[str, float] = {"cpu": threads}
    if str(opts.device).startswith("cuda"):
        resources["gpu"] = 1
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized()
    quiet = {"log_to_driver": not opts.quiet,
             "logging_level": logging.WARNING if opts.quiet else logging.INFO}
    if started and address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:  # before any trial: a bad address is bad input
            raise ValueError(f"--ray-address {address}: cannot connect ({exc}); a cluster "
                             "with token authentication needs RAY_AUTH_MODE=token here "
                             "too") from None
        log(f"sweep: Ray cluster at {address}: its CPUs decide how many trials run at once "
            "(--workers does not apply)")
    elif started:
        # "local": a new instance, even where `ray start` left a cluster on this machine
        ray.init(address="local", num_cpus=workers * threads, include_dashboard=False,
                 **quiet)
    log(f"sweep: {len(units)} Ray trials ({len(groups)} vectorised groups, {len(alone)} single "
        f"runs), {resources} each")
    rows: dict[str, dict[str, Any]] = {}

    class Progress(tune.Callback):  # one line per finished run (Tune's own tables: verbose=0)
        def on_trial_result(self, iteration: int, trials: list, trial: Any,
                            result: dict[str, Any], **info: Any) -> None:
            for row in json.loads(result.get("rows", "[]")):
                log(f"sweep: {row['run_id']}: {row['status']} {row['error']}".rstrip())

    # Tune prints its banner whatever its verbosity: to stderr (stdout lists the tables' paths)
    sink = io.StringIO() if opts.quiet else sys.stderr
    try:
        with tempfile.TemporaryDirectory(prefix="torchopt-ray-") as storage, \
                contextlib.redirect_stdout(sink):
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(_trial, units=units, opts=opts),
                                    resources),
                param_space={"unit": tune.grid_search(list(range(len(units))))},
                # a trial's process serves the next one: torch is imported once per worker
                tune_config=tune.TuneConfig(reuse_actors=True,
                                            trial_dirname_creator=_trial_dirname),
                run_config=tune.RunConfig(storage_path=storage, name="sweep", verbose=0,
                                          callbacks=[Progress()]),
            )
            for result in tuner.fit():
                unit = units[int(Path(result.path).name.removeprefix("unit"))]
                got = trial_rows(unit, result.metrics, result.error)
                rows.update({row["run_id"]: row for row in got or []})
    finally:
        if started:
            ray.shutdown()
    if len(rows) < len(specs):  # Tune stopped on Ctrl-C: exit as the local backend does
        raise KeyboardInterrupt
    return [rows[run_id(spec)] for spec in specs], {"wall_time_s": time.perf_counter() - t0,
                     "vectorized_programs": len(groups), "runs": len(specs),
                     "backend": "ray", "ray_trials": len(units)}

