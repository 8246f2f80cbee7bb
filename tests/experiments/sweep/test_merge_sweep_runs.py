"""``experiments/merge_sweep_runs.py``: the step that put the widened grids' runs into the
committed sweeps' ``sweep_runs.csv`` (their log folders are not committed) is reproducible."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from helpers.processes import ROOT

SCRIPT = ROOT / "experiments" / "merge_sweep_runs.py"
KARATE = ROOT / "experiments" / "results" / "sweep" / "karate" / "sweep_runs.csv"
NEW_LRS = {"lr=4.64159e-06", "lr=2.15443e-05", "lr=4.64159", "lr=21.5443"}


def _split(tmp_path: Path) -> tuple[Path, Path]:
    """The committed Karate runs without the widened grid's points, and those points alone (in
    the order their own sweep wrote them: by optimizer, seed, lr)."""
    with KARATE.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    old = [r for r in rows if r["setting"] not in NEW_LRS]
    new = [r for r in rows if r["setting"] in NEW_LRS]
    assert old and new
    paths = []
    for name, part in (("committed.csv", old), ("new.csv", new)):
        path = tmp_path / name
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(part)
        paths.append(path)
    return paths[0], paths[1]


def _merge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, timeout=60)


def test_merging_the_widened_points_back_gives_the_committed_file(tmp_path: Path) -> None:
    committed, new = _split(tmp_path)
    assert _merge(committed, new).returncode == 0
    assert committed.read_bytes() == KARATE.read_bytes()


def test_a_run_already_there_is_refused(tmp_path: Path) -> None:
    committed, new = _split(tmp_path)
    before = committed.read_bytes()
    assert _merge(committed, new).returncode == 0
    again = _merge(committed, new)
    assert again.returncode == 2 and "already has the run" in again.stderr
    assert _merge(tmp_path / "missing.csv", new).returncode == 2
    assert before != committed.read_bytes()
