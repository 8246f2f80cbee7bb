"""Helpers shared by the experiments' tests: the CLI (parsed, or as a subprocess), its data, its
events."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from torchopt_survey.experiments.tasks.data import write_synthetic_mnist

ROOT = Path(__file__).resolve().parents[2]
SHARED = os.environ.get("TORCHOPT_SURVEY_DATA")
HAVE_SHARED = bool(SHARED and (Path(SHARED) / "MNIST" / "raw").is_dir())


def data_env(tmp: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: the shared MNIST copy when present (subset), else a
    tiny synthetic IDX set; a private cache under ``tmp``; one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHOPT_SURVEY")}
    env["TORCHOPT_SURVEY_CACHE"] = str(tmp / "cache")
    env["TORCHOPT_SURVEY_DATA"] = (
        SHARED
        if HAVE_SHARED and SHARED
        else str(write_synthetic_mnist(tmp / "synthetic", n_train=3000, n_test=500))
    )
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def parse_cli(*argv: str) -> argparse.Namespace:
    """The parsed arguments of ``python -m torchopt_survey.experiments ARGV`` (no run)."""
    from torchopt_survey.experiments import cli as experiments_cli

    return experiments_cli.build_parser().parse_args(list(argv))


def cli(*args: str) -> list[str]:
    """The command line of ``python -m torchopt_survey.experiments ARGS``."""
    return [sys.executable, "-m", "torchopt_survey.experiments", *args]


def raw_scalars(run_dir: Path) -> list[tuple[str, int, float]]:
    """Every scalar event on disk, file by file in the order written: no de-duplication and no
    purge logic of a reader (TensorBoard's EventAccumulator would hide leftovers)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    files = []
    for path in run_dir.glob("events.out.tfevents.*"):
        events = [event_pb2.Event.FromString(r) for r in RawEventFileLoader(str(path)).Load()]
        files.append(events)
    out = []
    for events in sorted(files, key=lambda evs: evs[0].wall_time):
        for event in events:
            for v in event.summary.value:
                if v.WhichOneof("value") == "simple_value":
                    out.append((v.tag, event.step, v.simple_value))
    return out
