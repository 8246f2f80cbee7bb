"""Final accuracy with compact optimizer state: fp32, bf16 and int8 state on three tasks.

    python benchmarks/bench_memory_accuracy.py --json benchmarks/results/memory-accuracy.json

Each task runs through the experiments CLI (``--set state_dtype=...``), Adam, the same seeds
for every setting, one thread per run; the verdict per task and setting is Welch's t-test over
seeds of the final test accuracy against fp32 state, from the report layer's own statistics
(:func:`torchopt_survey.experiments.report.stats.mean_test`): "same as fp32" unless the
setting's accuracy is significantly lower (p < 0.05), then "worse".

Tasks (small epoch counts, so that the whole comparison takes minutes on a CPU):

* ``mnist``: the first survey's MNIST MLP (784-500-10, mini-batch regime, batch 64);
* ``mnist_deep``: the second survey's section V deep MLP (12 tanh layers of 32, 10,000-image
  subset) -- with Adam rather than its plain SGD, which keeps no state to compact;
* ``karate``: link prediction on Zachary's Karate Club (the paper's model).

Stepping inside backward is not run: it is bitwise the ordinary loop (tests/optim/
test_step_in_backward.py), so its accuracies are the fp32 column's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from torchopt_survey.experiments.report.stats import (  # noqa: E402
    ALPHA,
    TEST_NAME,
    mean_std,
    mean_test,
)

SETTINGS = {"fp32": None, "bf16": "bfloat16", "int8": "int8"}
#: task -> the experiments CLI's command and flags
#: (eager steps throughout: ``compile=false``, as compact state always runs eagerly)
TASKS: dict[str, list[str]] = {
    "mnist": ["mnist", "--regimes", "minibatch", "--optimizers", "adam", "--lr", "0.001",
              "--set", "compile=false"],
    "mnist_deep": ["mnist", "--config", "mnist_deep", "--optimizers", "adam", "--lr", "0.001",
                   "--set", "log_grad_norms=false", "--set", "compile=false"],
    "karate": ["karate", "--optimizers", "adam", "--set", "models=[paper]"],
}


def run_task(task: str, setting: str, seeds: list[int], epochs: int, logdir: Path,
             extra: list[str]) -> list[float]:
    """Final test accuracies (one per seed) of one task and setting."""
    folder = logdir / task / setting
    command = [sys.executable, "-m", "torchopt_survey.experiments", *TASKS[task],
               "--seeds", *map(str, seeds), "--epochs", str(epochs), "--threads", "1",
               "--logdir", str(folder), "--quiet", *extra]
    if SETTINGS[setting] is not None:
        command += ["--set", f"state_dtype={SETTINGS[setting]}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    found: dict[int, float] = {}
    for path in folder.rglob("result.json"):
        result = json.loads(path.read_text())
        found[int(result["spec"]["seed"])] = float(result["final"]["test/accuracy"])
    if sorted(found) != sorted(seeds):
        raise RuntimeError(f"{task}/{setting}: results for seeds {sorted(found)}, "
                           f"expected {seeds}")
    return [found[seed] for seed in seeds]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--epochs", nargs="+", default=["mnist=2", "mnist_deep=5",
                                                        "karate=100"],
                        metavar="TASK=N", help="epochs per task")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="MNIST training images (default: the task's)")
    parser.add_argument("--logdir", default="runs/memory-accuracy")
    parser.add_argument("--json", default=None, help="write the table here")
    args = parser.parse_args(argv)
    epochs = {key: int(value) for key, _, value in (e.partition("=") for e in args.epochs)}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for task in args.tasks:
        extra = []
        if args.train_subset and task.startswith("mnist"):
            extra = ["--set", f"train_subset={args.train_subset}"]
        accuracies = {setting: run_task(task, setting, args.seeds, epochs[task],
                                        Path(args.logdir), extra) for setting in SETTINGS}
        for setting, values in accuracies.items():
            mean, std = mean_std(values)
            row = {"task": task, "setting": setting, "epochs": epochs[task],
                   "accuracies": values, "mean": mean, "std": std}
            if setting != "fp32":
                outcome, p = mean_test(values, accuracies["fp32"])
                row["welch_p"] = p
                row["test"] = outcome
                row["verdict"] = "worse" if outcome == "lower" else (
                    "same as fp32" if outcome in ("within noise", "higher") else outcome)
            rows.append(row)
    print(f"{'task':<11} {'setting':<6} {'final test accuracy':>22} {'Welch p':>8}  verdict")
    for row in rows:
        p = row.get("welch_p")
        print(f"{row['task']:<11} {row['setting']:<6} "
              f"{100 * row['mean']:14.2f} ± {100 * row['std']:5.2f} "
              f"{'' if p is None else f'{p:8.3f}':>8}  {row.get('verdict', '(reference)')}")
    if args.json:
        folder = os.path.dirname(args.json)
        if folder:
            os.makedirs(folder, exist_ok=True)
        from bench_optim import environment

        with open(args.json, "w") as handle:
            json.dump({"mode": "memory-accuracy", "environment": environment(1, "cpu"),
                       "test": TEST_NAME, "alpha": ALPHA,
                       "optimizer": "adam", "seeds": args.seeds,
                       "train_subset": args.train_subset,
                       "wall_s": time.perf_counter() - started, "rows": rows}, handle,
                      indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
