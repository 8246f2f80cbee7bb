"""Experiments under torchrun: DDP over 2 gloo CPU ranks against one process, rank 0 alone
writing, a killed rank reported by the launcher and ``--resume`` continuing from the checkpoint,
survivors that do not hang, ``--workers`` refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers.processes import ROOT, free_port

from torchopt_survey.experiments.runtime.distributed import DistContext
from torchopt_survey.experiments.runtime.files import load_checkpoint
from torchopt_survey.experiments.tasks.data import write_synthetic_mnist

TIMEOUT_S = 180  # per launch; every process is killed past it
#: float32 training; one process and two ranks differ only in summation order
TOL = 2e-6

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tiny synthetic MNIST, a private cache, one thread per process, this checkout first."""
    tmp = tmp_path_factory.mktemp("data")
    skip = ("TORCHOPT_SURVEY", "TORCHELASTIC")
    e = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    e["TORCHOPT_SURVEY_CACHE"] = str(tmp / "cache")
    e["TORCHOPT_SURVEY_DATA"] = str(write_synthetic_mnist(tmp / "syn", n_train=2000, n_test=300))
    e["OMP_NUM_THREADS"] = "1"
    # a broken run whose ranks disagree fails in a minute rather than at the default timeout
    e["TORCHOPT_SURVEY_DIST_TIMEOUT"] = "60"
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchopt_survey.experiments", *args]


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "--monitor-interval", "0.1", "-m", "torchopt_survey.experiments", *args,
    ]  # fmt: skip


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run to the end in its own session; on timeout kill the whole group (torchrun's ranks)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{cmd[2:6]} ran past {TIMEOUT_S}s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def _compare(one: Path, two: Path, run: str) -> None:
    """Same history (but wall times) and parameters as the one-process run, to float
    tolerance; the same number of optimizer steps and epochs."""
    r1 = json.loads((one / run / "result.json").read_text())
    r2 = json.loads((two / run / "result.json").read_text())
    assert r1["history"].keys() == r2["history"].keys()
    for tag, values in r1["history"].items():
        if not tag.startswith("time/"):
            assert r2["history"][tag] == pytest.approx(values, abs=TOL), (run, tag)
    assert r2.get("early_stopping") == r1.get("early_stopping")
    assert r2["loss_curve"]["step"] == r1["loss_curve"]["step"]
    assert r2["loss_curve"]["loss"] == pytest.approx(r1["loss_curve"]["loss"], abs=TOL)
    m1 = load_checkpoint(one / run / "checkpoint.pt")["task"]["model"]
    m2 = load_checkpoint(two / run / "checkpoint.pt")["task"]["model"]
    assert m1.keys() == m2.keys()
    for k, v in m1.items():
        assert torch.allclose(m2[k], v, rtol=0, atol=TOL), (run, k)


def test_shard_covers_a_batch_once_in_order() -> None:
    for n in (0, 1, 2, 7, 41, 64):
        for world in (1, 2, 3, 5):
            parts = [DistContext(r, world, r, "gloo").shard(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            sizes = [b - a for a, b in parts]
            assert max(sizes) - min(sizes) <= 1


# MNIST minibatch: 961 training images (1068 less a 10 % validation split) in batches of 64,
# so the last global batch is one image: rank 1's shard of it is empty. Early stopping and
# ReduceLROnPlateau read rank 0's validation loss on every rank; the L2 penalty must count once.
# Karate with both link models (the GCN's message passing runs whole on each rank).
ALL_ARGS = [
    "all", "--optimizers", "sgd", "--seeds", "0", "--regimes", "minibatch", "--epochs", "2",
    "--train-subset", "1068",
    "--set", "mnist.name=tech", "--set", "mnist.val_split=0.1", "--set", "mnist.early_stopping=1",
    "--set", "mnist.l2=0.001", "--set", "mnist.scheduler={name: ReduceLROnPlateau, patience: 0}",
    "--test-subset", "300", "--models", "paper", "gcn",
    "--set", "karate.epochs=5", "--threads", "1",
]  # fmt: skip
RUNS = (
    "mnist/mnist-minibatch-tech/sgd/seed0",
    "karate/karate-paper/sgd/seed0",
    "karate/karate-gcn/sgd/seed0",
)


def test_torchrun_matches_one_process_and_only_rank_0_writes(
    tmp_path: Path, env: dict[str, str]
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    # the one-process reference runs alongside the two ranks (2 cores: 3 processes)
    ref = subprocess.Popen(
        _cli(*ALL_ARGS, "--logdir", str(one), "--quiet"), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        res = _run(_torchrun(*ALL_ARGS, "--logdir", str(two)), env)
        ref_out, _ = ref.communicate(timeout=TIMEOUT_S)
    finally:
        if ref.poll() is None:
            ref.kill()
    assert ref.returncode == 0, ref_out[-3000:]
    assert res.returncode == 0, res.stdout[-3000:]
    for run in RUNS:
        _compare(one, two, run)
        r2 = json.loads((two / run / "result.json").read_text())
        assert r2["resumed_from_epoch"] is None
        # rank 0 alone wrote: one event file (a writer per rank would leave one each), the
        # checkpoint and the result, and no leftover temporary file
        files = sorted(p.name for p in (two / run).iterdir())
        assert len(files) == 3, files
        assert files[0] == "checkpoint.pt" and files[1].startswith("events.out.tfevents.")
        assert files[2] == "result.json"
    assert sorted(p.relative_to(two).as_posix() for p in two.rglob("result.json")) == sorted(
        f"{r}/result.json" for r in RUNS
    )
    # rank 0 alone printed (the launcher passes on both ranks' output)
    assert res.stdout.count("3 runs -> ") == 1, res.stdout[-3000:]
    assert res.stdout.count("torchrun: 2 ranks (gloo)") == 1
    assert res.stdout.count("test acc") == 3  # one summary line per run


# MNIST in batches of 7: 286 DDP steps per epoch (about 2 s here), long enough to kill a rank
# inside epoch 2 or 3; the last batch (5 images) splits 3/2, so the ranks' losses need scaling
# by the global batch size, not their own.
KILL_ARGS = [
    "mnist", "--optimizers", "sgd", "--seeds", "0", "--regimes", "minibatch", "--epochs", "3",
    "--train-subset", "2000", "--test-subset", "300", "--set", "regimes.minibatch.batch_size=7",
    "--threads", "1", "--quiet",
]  # fmt: skip
KILL_RUN = "mnist/mnist-minibatch/sgd/seed0"


def _rank_pid(launcher: int, local_rank: int) -> int | None:
    """The pid of the launcher's worker with ``LOCAL_RANK=local_rank`` (Linux /proc)."""
    try:
        children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"LOCAL_RANK={local_rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_killed_rank_is_reported_and_resume_continues_from_the_checkpoint(
    tmp_path: Path, env: dict[str, str]
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    ref = subprocess.Popen(
        _cli(*KILL_ARGS, "--logdir", str(one)), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    launcher = subprocess.Popen(
        _torchrun(*KILL_ARGS, "--logdir", str(two)), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    ckpt = two / KILL_RUN / "checkpoint.pt"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not ckpt.exists():  # epoch 1 is done; the ranks are in epoch 2
            assert launcher.poll() is None, launcher.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        victim = _rank_pid(launcher.pid, 1)
        assert victim is not None, "rank 1 not found among the launcher's children"
        os.kill(victim, signal.SIGKILL)
        out, _ = launcher.communicate(timeout=60)  # survivors must not hang
        ref_out, _ = ref.communicate(timeout=TIMEOUT_S)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        if ref.poll() is None:
            ref.kill()
    assert ref.returncode == 0, ref_out[-3000:]
    # the launcher reports the dead rank and fails
    assert launcher.returncode != 0, out[-3000:]
    assert "local_rank: 1" in out and "Signal 9 (SIGKILL)" in out, out[-3000:]
    assert not (two / KILL_RUN / "result.json").exists()
    killed_at = load_checkpoint(ckpt)["epoch"]
    assert 1 <= killed_at < 3

    res = _run(_torchrun(*KILL_ARGS, "--logdir", str(two), "--resume"), env)
    assert res.returncode == 0, res.stdout[-3000:]
    result = json.loads((two / KILL_RUN / "result.json").read_text())
    assert (result["resumed_from_epoch"], result["epochs_trained"]) == (killed_at, 3 - killed_at)
    # every rank resumed from the same epoch (else DDP's collectives would not pair up) and the
    # run ends as the uninterrupted one-process run does
    _compare(one, two, KILL_RUN)
    assert len(list((two / KILL_RUN).glob("events.out.tfevents.*"))) == 2  # one per attempt


def test_survivor_of_a_silent_rank_gives_up_after_the_timeout(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """No launcher to stop it: a rank whose peer stops answering (SIGSTOP) must fail after the
    process-group timeout with a one-line message, not wait forever."""
    logdir, port = tmp_path / "runs", free_port()
    procs = []
    for rank in (0, 1):
        e = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                 TORCHOPT_SURVEY_DIST_TIMEOUT="8")  # fmt: skip
        procs.append(subprocess.Popen(
            _cli(*KILL_ARGS, "--logdir", str(logdir)), env=e, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (logdir / KILL_RUN / "checkpoint.pt").exists():
            assert procs[0].poll() is None, procs[0].communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        out, _ = procs[0].communicate(timeout=90)
        waited = time.monotonic() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert procs[0].returncode == 1, out[-3000:]
    assert "error: rank 0: lost the other ranks" in out and "rerun with --resume" in out
    assert "Traceback" not in out, out[-3000:]
    assert 8 <= waited < 60
    assert load_checkpoint(logdir / KILL_RUN / "checkpoint.pt")["epoch"] >= 1


def test_workers_refused_under_torchrun(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchopt_survey.experiments import cli
    from torchopt_survey.experiments.runtime import distributed

    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(k, v)
    assert cli.main(["karate", "--workers", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--workers: under torchrun each run already uses every process" in err
    assert distributed.context() is None  # refused before joining any process group
