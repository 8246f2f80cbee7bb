"""The experiments' critical path: ``compile=auto`` (the compiled step) against ``compile=false``.

The main job's longest run is single-sample SGD on the MNIST perceptron. This runs it through
the experiments' CLI -- a fresh process per run, as a user starts it: imports, data, model,
compilation (Inductor's on-disk cache warm after the first round), training, evaluation --
for ``--train-subset`` steps, alternating ``compile=auto`` and ``compile=false`` over
``--rounds`` rounds (the order flips each round). Reported per round: the process's wall time,
the run's own ``wall_time_s`` and, for the compiled run, ``compile.compile_seconds`` from its
``result.json``; the ratios are medians of the per-round ratios.

Usage::

    python benchmarks/bench_experiments_compile.py [--train-subset 20000] [--rounds 3]
        [--data-dir DIR] [--out benchmarks/results/experiments-compile-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_once(mode: str, subset: int, data_dir: str | None, logdir: Path) -> dict[str, float]:
    argv = [sys.executable, "-m", "torchopt_survey.experiments", "mnist", "--regimes", "sgd",
            "--optimizers", "sgd", "--epochs", "1", "--train-subset", str(subset),
            "--threads", "1", "--quiet", "--logdir", str(logdir), "--set", f"compile={mode}"]
    if data_dir:
        argv += ["--data-dir", data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, env=env)
    process = time.perf_counter() - t0
    (result,) = logdir.glob("mnist/*/sgd/seed0/result.json")
    res = json.loads(result.read_text())
    return {"process_s": process, "run_s": res["wall_time_s"],
            "compiled": res["compile"]["compiled"], "why_not": res["compile"]["why_not"],
            "compile_s": res["compile"]["compile_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data-dir", default=os.environ.get("TORCHOPT_SURVEY_DATA"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/experiments-compile-cpu.json"))
    args = ap.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ("auto", "false") if r % 2 == 0 else ("false", "auto")
            row = {}
            for mode in order:
                row[mode] = run_once(mode, args.train_subset, args.data_dir,
                                     Path(tmp) / f"r{r}-{mode}")
            row["ratio_process"] = row["auto"]["process_s"] / row["false"]["process_s"]
            row["ratio_run"] = row["auto"]["run_s"] / row["false"]["run_s"]
            rounds.append(row)
            print(f"round {r}: auto {row['auto']['process_s']:.1f} s "
                  f"(run {row['auto']['run_s']:.1f} s, compile {row['auto']['compile_s']:.1f} s,"
                  f" compiled={row['auto']['compiled']}), false {row['false']['process_s']:.1f} s"
                  f" (run {row['false']['run_s']:.1f} s): ratio {row['ratio_process']:.2f}",
                  flush=True)
    out = {
        "benchmark": "experiments mnist --regimes sgd --optimizers sgd --epochs 1, "
                     "compile=auto vs compile=false, one process per run",
        "train_subset": args.train_subset, "steps": args.train_subset, "threads": 1,
        "rounds": rounds,
        "median_ratio_process": statistics.median(r["ratio_process"] for r in rounds),
        "median_ratio_run": statistics.median(r["ratio_run"] for r in rounds),
        "compile_seconds": [r["auto"]["compile_s"] for r in rounds],
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
    }
    print(f"median ratio auto/false: process {out['median_ratio_process']:.2f}, "
          f"run {out['median_ratio_run']:.2f}")
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
