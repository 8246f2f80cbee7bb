"""``report``: finished runs -> figures, results tables and claim verdicts.

Layers inside: :mod:`.stats` (seed statistics, the one Welch test, the claim rule) and
:mod:`.plotting` at the bottom; the section writers above them (:mod:`.results`,
:mod:`.techniques`, :mod:`.second_order`, :mod:`.sweep`); :mod:`.rawdata` (the per-run
``runs.json`` a report writes and can start from) above them; this module alone puts a report
together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..runs.folder import RESULT
from ..runtime.files import save_text
from ..tasks.protocol import Claim
from ..tasks.registry import entry
from . import rawdata, techniques
from .results import (
    claims_markdown,
    group_runs,
    load_results,
    summarize,
    table_csv,
    table_markdown,
    write_figures,
)
from .second_order import conditioning_sweep, has_second_order, write_second_order
from .sweep import write_sweep_report

__all__ = ["write_report", "write_sweep_report"]


def write_report(logdir: str | os.PathLike[str] | None, out: str | os.PathLike[str],
                 claims: Sequence[Claim] = (),
                 runs: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write figures, ``results.md``, ``results.csv``, ``claims.md`` and the runs' raw data
    (``runs.json``, :mod:`.rawdata`) into ``out``; for a sweep under ``logdir`` also its
    sensitivity figures, two-protocol claims and targets. ``runs``: start from a
    ``runs.json`` instead of ``logdir`` (the committed results regenerate from theirs).
    ``claims``: the user's own comparisons, tested beside each task's claims."""
    outp = Path(out)
    conditioning = None
    if runs is not None:
        every, conditioning = rawdata.load(runs)
    elif logdir is not None:
        every = load_results(logdir)
    else:
        raise ValueError("report: give a log folder or a runs.json")
    # One order whatever the source (a log folder's paths, runs.json's ids): seed means are
    # float sums, and their last digit must not depend on the order they were read in.
    every = sorted(every, key=lambda r: r["run_id"])
    for r in every:  # tasks defined outside the package: loaded from the path runs record
        entry(r["spec"]["experiment"], r["spec"].get("task"))
    sweep_paths: list[Path] = []
    sweep_json = Path(logdir) / "sweep" / "sweep.json" if logdir is not None else None
    if sweep_json is not None and sweep_json.is_file():
        sweep_paths = write_sweep_report(sweep_json, outp, claims)
    # (a sweep's runs are summarised by the sweep's own tables, not one row per setting)
    results = [r for r in every if "sweep" not in r["spec"]]
    if not results:
        if sweep_paths:
            return sweep_paths
        raise ValueError(f"--runs: {runs} holds no runs" if runs is not None else
                         f"--logdir: no finished runs (no {RESULT}) under {logdir}")
    # Runs with §V technique options get their own figures and claim tables.
    tech_paths, tech_claims = techniques.write(results, outp)
    groups = group_runs(r for r in results if not techniques.is_technique_run(r))
    rows = summarize(groups)
    paths = sweep_paths + write_figures(groups, outp)
    texts = [("claims.md", (claims_markdown(rows, claims) if rows else "") + tech_claims)]
    if rows:
        texts = [("results.csv", table_csv(rows)), ("results.md", table_markdown(rows)), *texts]
    for name, text in texts:
        save_text(outp / name, text)
        paths.append(outp / name)
    # Cost to a target loss and the claims about Newton and CG.
    if has_second_order(groups) and conditioning is None:
        conditioning = conditioning_sweep()
    paths += write_second_order(groups, outp, conditioning)
    # The raw data of all of it, to regenerate the report from (report --runs).
    paths.append(rawdata.save(outp / rawdata.RUNS_FILE, results,
                              conditioning if has_second_order(groups) else None))
    return paths + tech_paths
