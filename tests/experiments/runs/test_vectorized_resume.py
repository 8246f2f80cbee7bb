"""A vectorised sweep killed with SIGKILL at random moments and resumed with ``--resume`` ends
as the same sweep never killed: the same tables, ``result.json`` numbers and event sequences,
and its results say that they resumed. Plus the group commit that makes it so."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.experiments_cli import cli, data_env, raw_scalars

from torchopt_survey.experiments.runs.folder import CHECKPOINT, PENDING
from torchopt_survey.experiments.runs.writer import settle_pending
from torchopt_survey.experiments.runtime.files import load_checkpoint, save_checkpoint

EPOCHS = 5
#: 2 optimizers x 2 lrs x 2 seeds: two vectorised programs of 4 replicas
SWEEP = ["sweep", "--experiment", "mnist", "--optimizers", "sgd", "adam",
         "--lr-grid", "1e-2:1e-1:2", "--seeds", "0", "1", "--epochs", str(EPOCHS),
         "--train-subset", "1800", "--test-subset", "300", "--threads", "1", "--quiet"]  # fmt: skip
#: the folder of the program that runs second (the sweep runs its groups in spec order)
SECOND = "mnist-minibatch-val_split0.166667/adam"
TABLES = ("sweep_best.md", "sweep_settings.csv", "sweep_runs.md", "sweep_claims.md")


def _sweep(logdir: Path, *extra: str) -> list[str]:
    return cli(*SWEEP, "--logdir", str(logdir), *extra)


def _checkpoint_epochs(logdir: Path) -> list[int]:
    epochs = []
    for path in [*logdir.rglob(CHECKPOINT), *logdir.rglob(PENDING)]:
        try:
            epochs.append(int(load_checkpoint(path)["epoch"]))
        except Exception:  # replaced or removed while read: not counted this time
            pass
    return epochs


def _kill_when(proc: subprocess.Popen[bytes], ready: object, jitter_s: float) -> bool:
    """SIGKILL ``proc`` a random moment (up to ``jitter_s``) after ``ready()`` holds; False
    if it finished first."""
    deadline = time.monotonic() + 240
    while not ready():  # type: ignore[operator]
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the sweep made no progress"
        time.sleep(0.01)
    time.sleep(jitter_s)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return True


def _results(logdir: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(logdir)): json.loads(p.read_text())
            for p in logdir.rglob("result.json")}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return data_env(tmp_path_factory.mktemp("data"))


# The CLI with save_checkpoint wrapped: SIGKILL in the middle of a vectorised program's group
# commit of epoch KILL_EPOCH, as the second replica's checkpoint is about to be written (the
# first replica's is written, the second's events are flushed): the commit must be undone and
# those events purged.
_KILL_MID_COMMIT = """
import os, signal, sys
from torchopt_survey.experiments import cli
from torchopt_survey.experiments.runs import writer
real, seen = writer.save_checkpoint, []
def save_or_die(path, state):
    if str(path).endswith(".pending") and state["epoch"] == int(os.environ["KILL_EPOCH"]):
        seen.append(path)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    real(path, state)
writer.save_checkpoint = save_or_die
sys.exit(cli.main(sys.argv[1:]))
"""


def test_vectorised_sweep_killed_three_times_resumes_to_the_same_sweep(
    tmp_path: Path, env: dict[str, str]
) -> None:
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = subprocess.run(_sweep(ref_dir), env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    # 1: a random moment just after the first checkpoint exists
    proc = subprocess.Popen(_sweep(cut_dir), env=env, stderr=subprocess.DEVNULL)
    killed = [_kill_when(proc, lambda: bool(_checkpoint_epochs(cut_dir)), rng.uniform(0, 0.3))]
    # 2: inside the first program's commit of its next-to-last epoch
    mid = subprocess.run([sys.executable, "-c", _KILL_MID_COMMIT, *SWEEP, "--logdir",
                          str(cut_dir), "--resume"], env={**env, "KILL_EPOCH": str(EPOCHS - 1)},
                         capture_output=True, text=True)
    killed.append(mid.returncode == -signal.SIGKILL)
    # 3: a random moment in the second program, once it has checkpoints
    proc = subprocess.Popen(_sweep(cut_dir, "--resume"), env=env, stderr=subprocess.DEVNULL)
    killed.append(_kill_when(
        proc, lambda: bool(_checkpoint_epochs(cut_dir / "mnist" / SECOND)), rng.uniform(0, 0.3)))
    assert killed[:2] == [True, True], f"KILL_SEED={seed}: killed={killed} {mid.stderr}"
    done = subprocess.run(_sweep(cut_dir, "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    where = f"KILL_SEED={seed}, killed={killed}"

    for name in TABLES:
        assert (cut_dir / "sweep" / name).read_text() == (ref_dir / "sweep" / name).read_text(), \
            f"{where}: {name}"
    ref_res, cut_res = _results(ref_dir), _results(cut_dir)
    assert len(ref_res) == 8 and set(cut_res) == set(ref_res)
    resumed = 0
    for run, r_ref in ref_res.items():
        r_cut = cut_res[run]
        assert r_ref["vectorized"] == r_cut["vectorized"] == 4, run
        assert (r_ref["resumed_from_epoch"], r_ref["epochs_trained"]) == (None, EPOCHS)
        start = r_cut["resumed_from_epoch"] or 0
        assert r_cut["epochs_trained"] == EPOCHS - start, (where, run)
        resumed += r_cut["resumed_from_epoch"] is not None
        for tag, values in r_ref["history"].items():
            if not tag.startswith("time/"):
                assert r_cut["history"][tag] == values, (where, run, tag)  # exact
        assert r_cut["loss_curve"] == r_ref["loss_curve"], (where, run)
        # on disk, in the order written (a killed attempt's events past its checkpoint purged)
        seq_ref = [e for e in raw_scalars(ref_dir / run) if not e[0].startswith("time/")]
        seq_cut = [e for e in raw_scalars(cut_dir / run) if not e[0].startswith("time/")]
        assert seq_cut == seq_ref, (where, run)
    # the first program was killed twice, the second once if killed[2]
    assert resumed == (8 if killed[2] else 4), where


def _replica_dirs(tmp_path: Path, epochs: list[int], pending: list[int | None]) -> list[Path]:
    """Run folders with a committed checkpoint at ``epochs[r]`` and, where given, a pending
    one at ``pending[r]``."""
    dirs = []
    for r, (epoch, pend) in enumerate(zip(epochs, pending, strict=True)):
        d = tmp_path / f"run{r}"
        save_checkpoint(d / CHECKPOINT, {"epoch": epoch, "w": torch.tensor([float(epoch)])})
        if pend is not None:
            save_checkpoint(d / PENDING, {"epoch": pend, "w": torch.tensor([float(pend)])})
        dirs.append(d)
    return dirs


def test_group_commit_killed_while_writing_rolls_back(tmp_path: Path) -> None:
    # replicas 0-1 wrote epoch 3, replica 2 had not when the program died
    dirs = _replica_dirs(tmp_path, [2, 2, 2], [3, 3, None])
    settle_pending(dirs)
    assert [int(load_checkpoint(d / CHECKPOINT)["epoch"]) for d in dirs] == [2, 2, 2]
    assert not any((d / PENDING).exists() for d in dirs)


def test_group_commit_killed_while_renaming_rolls_forward(tmp_path: Path) -> None:
    # every replica wrote epoch 3; replica 0's was already renamed over its checkpoint
    dirs = _replica_dirs(tmp_path, [3, 2, 2], [None, 3, 3])
    settle_pending(dirs)
    assert [int(load_checkpoint(d / CHECKPOINT)["epoch"]) for d in dirs] == [3, 3, 3]
    assert not any((d / PENDING).exists() for d in dirs)
