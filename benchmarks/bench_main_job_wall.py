"""The README's main job end to end: its wall time at this checkout against a baseline commit.

    python benchmarks/bench_main_job_wall.py --base 1d9c773 [--rounds 2] \\
        [--out benchmarks/results/main-job-wall.json]

Runs ``python -m torchopt_survey.experiments all --seeds 0 --workers 2`` (35 runs: every
optimizer on MNIST at batch 64, GD and batch-1 SGD, and both Karate models) from this checkout
and from ``--base`` (checked out into a temporary git worktree), alternately (this, base, this,
base, ...), each into a fresh log folder, with the same interpreter, MNIST copy
(``TORCHOPT_SURVEY_DATA``) and data cache. Nothing else should run meanwhile: the job uses two
worker processes of one thread each. Prints the wall times and their ratios; the first run of
this checkout after a change of the compiled step meets Inductor's caches cold for it, the
next ones warm (both are reported, in the order they ran).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = ["all", "--seeds", "0", "--workers", "2", "--quiet"]


def run_job(tree: Path, logdir: Path, cache: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), TORCHOPT_SURVEY_CACHE=str(cache))
    shutil.rmtree(logdir, ignore_errors=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "torchopt_survey.experiments", *JOB,
                             "--logdir", str(logdir)], cwd=tree, env=env,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{tree}: the main job failed:\n{result.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the baseline commit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the times as JSON here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        print(f"--rounds must be >= 1, got {args.rounds}", file=sys.stderr)
        return 2
    if "TORCHOPT_SURVEY_DATA" not in os.environ:
        print("set TORCHOPT_SURVEY_DATA to a folder with MNIST/raw (no download here)",
              file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="main-job-"))
    base_tree = work / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree),
                    args.base], check=True, capture_output=True)
    times: dict[str, list[float]] = {"this": [], "base": []}
    try:
        for round_index in range(args.rounds):
            for name, tree in (("this", ROOT), ("base", base_tree)):
                seconds = run_job(tree, work / f"runs-{name}", work / "cache")
                times[name].append(seconds)
                print(f"round {round_index + 1}: {name:<4} {seconds:7.1f} s", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                        str(base_tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    ratios = [t / b for t, b in zip(times["this"], times["base"])]
    print("ratios this / base, per round:", " ".join(f"{r:.3f}" for r in ratios))
    if args.out:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "job": "python -m torchopt_survey.experiments " + " ".join(JOB),
            "this": commit, "base": args.base, "seconds": times, "ratios": ratios,
            "order": "this, base per round", "cpus": os.cpu_count()}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
