"""MNIST training throughput with 1 vs N processes under torchrun (DDP), and scaling efficiency.

Runs the experiments CLI itself (``python -m torchopt_survey.experiments mnist``): once as one
plain process and once under ``torchrun --nproc-per-node N`` (DDP, each rank its shard of
every global batch), at the same global batch sizes, and reads the training time of each epoch
from the runs' ``result.json`` (``time/train_seconds``: training steps only, no evaluation, no
checkpoint). Throughput is training images per second of the fastest epoch after the first
(the first pays for warm-up); efficiency = throughput(N) / (N x throughput(1)).

On CPU each process gets ``--threads`` threads (default 1: N processes use N cores against
one core for one process); a row for one process with N threads shows the other way of
spending the same cores. On CUDA (``--device cuda``, needs N GPUs) each rank takes one GPU.

Usage::

    python benchmarks/bench_scaling.py [--device cpu] [--nproc 2] [--batch-sizes 64 1024]
        [--train-subset 20000] [--epochs 3] [--data-dir DIR]
        [--out benchmarks/results/scaling-cpu.json]

MNIST comes from ``--data-dir``/``$TORCHOPT_SURVEY_DATA`` when set (else a synthetic MNIST-format
set is written to a temporary folder: same shapes, so the same throughput).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RUN = "mnist/mnist-minibatch/sgd/seed0"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(
    nproc: int, threads: int, batch: int, args: argparse.Namespace, env: dict[str, str]
) -> dict[str, Any]:
    """One run of the CLI (plain for ``nproc == 1``, torchrun otherwise); its throughput."""
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as logdir:
        cli = [
            "-m", "torchopt_survey.experiments", "mnist", "--regimes", "minibatch",
            "--optimizers", "sgd", "--seeds", "0", "--epochs", str(args.epochs),
            "--train-subset", str(args.train_subset), "--test-subset", "1000",
            "--set", f"regimes.minibatch.batch_size={batch}", "--set", "log_grad_norms=false",
            "--device", args.device, "--threads", str(threads), "--logdir", logdir, "--quiet",
        ]  # fmt: skip
        if nproc > 1:
            port = str(_free_port())
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--master-addr", "127.0.0.1", "--master-port", port, *cli]  # fmt: skip
        else:
            cmd = [sys.executable, *cli]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        result = json.loads((Path(logdir) / RUN / "result.json").read_text())
    train_s = result["history"]["time/train_seconds"]
    best = min(train_s[1:] or train_s)
    return {
        "processes": nproc,
        "threads_per_process": threads,
        "global_batch": batch,
        "train_images": args.train_subset,
        "epoch_train_seconds": train_s,
        "samples_per_s": args.train_subset / best,
        "final_test_accuracy": result["final"]["test/accuracy"],
        "command_wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--nproc", type=int, default=2, help="processes of the scaled run (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads per process on CPU")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--train-subset", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/"
                   "scaling-<device>.json)")  # fmt: skip
    args = p.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < args.nproc:
        found = torch.cuda.device_count()
        raise SystemExit(f"--device cuda needs {args.nproc} GPUs; found {found}")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    tmp = None
    if args.data_dir:
        env["TORCHOPT_SURVEY_DATA"] = args.data_dir
    elif not os.environ.get("TORCHOPT_SURVEY_DATA"):
        from torchopt_survey.experiments.tasks.data import write_synthetic_mnist

        tmp = tempfile.TemporaryDirectory(prefix="bench-scaling-data-")
        env["TORCHOPT_SURVEY_DATA"] = str(
            write_synthetic_mnist(Path(tmp.name), n_train=args.train_subset, n_test=1000)
        )
    rows = []
    for batch in args.batch_sizes:
        configs = [(1, args.threads), (args.nproc, args.threads)]
        if args.device == "cpu":
            configs.append((1, args.threads * args.nproc))  # the same cores, as threads
        base = None
        for nproc, threads in configs:
            row = measure(nproc, threads, batch, args, env)
            if base is None:
                base = row["samples_per_s"]
            # resources against the baseline's: cores on CPU, GPUs on CUDA
            scale = nproc * threads / args.threads if args.device == "cpu" else nproc
            row["speedup"] = row["samples_per_s"] / base
            row["efficiency"] = row["speedup"] / scale
            rows.append(row)
            print(
                f"batch {batch:>5}  {nproc} proc x {threads} thr  "
                f"{row['samples_per_s']:>9.0f} img/s  speedup {row['speedup']:.2f}  "
                f"efficiency {row['efficiency']:.2f}  acc {row['final_test_accuracy']:.4f}",
                flush=True,
            )
    if tmp is not None:
        tmp.cleanup()
    print()
    print("| global batch | processes x threads | images/s | speedup | scaling efficiency |")
    print("|---:|:---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['global_batch']} | {r['processes']} x {r['threads_per_process']} | "
            f"{r['samples_per_s']:.0f} | {r['speedup']:.2f} | {r['efficiency']:.2f} |"
        )
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"scaling-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    env_info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "backend": "nccl" if args.device == "cuda" else "gloo",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "data": "synthetic" if tmp is not None else "mnist",
        "epochs": args.epochs,
    }
    out.write_text(json.dumps({"environment": env_info, "rows": rows}, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
