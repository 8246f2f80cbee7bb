"""Many runs: one after another, or over worker processes, longest first."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from ..runtime.process import RunOptions, worker_init
from ..tasks.registry import expected_cost
from .folder import run_id
from .single import execute_run


def longest_first(specs: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of ``specs`` by expected cost, longest first (ties keep their order), so the
    longest run never starts last and leaves the other workers idle while it finishes."""
    return sorted(range(len(specs)), key=lambda i: -expected_cost(specs[i]))


def failure(spec: Mapping[str, Any], exc: BaseException) -> dict[str, Any]:
    """The record of a run that raised: its error's last line, for the sweep's tables."""
    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"status": "failed", "error": message.splitlines()[-1][:300], "run_id": run_id(spec),
            "spec": dict(spec)}


def run_guarded(spec: Mapping[str, Any], opts: RunOptions) -> dict[str, Any]:
    """:func:`execute_run` with its outcome as ``status``: a run that raises is recorded as
    failed and the others go on."""
    try:
        return {"status": "ok", **execute_run(spec, opts)}
    except Exception as exc:  # noqa: BLE001 -- recorded, the others go on
        return failure(spec, exc)


def run_many(
    specs: Sequence[Mapping[str, Any]],
    opts: RunOptions,
    workers: int = 1,
    progress_factory: Callable[[Mapping[str, Any], int], Any] | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    keep_going: bool = False,
) -> list[dict[str, Any]]:
    """Run all specs (longest first); with ``workers > 1`` in spawned processes with
    ``opts.threads`` threads each. Each finished run is on disk as soon as it ends. Results
    come back in the order of ``specs``. ``keep_going``: a run that raises (or whose worker
    dies) is a ``status: failed`` record instead of stopping the others."""
    order = longest_first(specs)
    results: list[dict[str, Any] | None] = [None] * len(specs)

    def finish(i: int, res: dict[str, Any]) -> None:
        results[i] = res
        if on_done:
            on_done(res)

    if workers <= 1:
        for i in order:
            bar = progress_factory(specs[i], 0) if progress_factory else None
            try:
                if keep_going:
                    res = run_guarded(specs[i], opts)
                else:
                    res = execute_run(specs[i], opts, bar.update_from if bar else None)
            finally:
                if bar is not None:
                    bar.close()
            finish(i, res)
        return [r for r in results if r is not None]
    job = run_guarded if keep_going else execute_run
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=worker_init, initargs=(opts.threads or 1,)) as pool:
        futures = {pool.submit(job, specs[i], opts): i for i in order}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:
                if not keep_going:
                    raise
                res = failure(specs[i], exc)  # a dead worker fails its run only
            finish(i, res)
    return [r for r in results if r is not None]
