"""End-to-end runs: CLI, TensorBoard events, report, checkpoint/resume after SIGKILL."""

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

from torchopt_survey.experiments.checkpoint import load_checkpoint
from torchopt_survey.experiments.data import write_synthetic_mnist

ROOT = Path(__file__).resolve().parents[1]
SHARED = os.environ.get("TORCHOPT_SURVEY_DATA")
HAVE_SHARED = bool(SHARED and (Path(SHARED) / "MNIST" / "raw").is_dir())


@pytest.fixture(scope="module")
def data_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for CLI subprocesses: the shared MNIST copy when present (subset), else a
    tiny synthetic IDX set; a private cache; one thread."""
    tmp = tmp_path_factory.mktemp("data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHOPT_SURVEY")}
    env["TORCHOPT_SURVEY_CACHE"] = str(tmp / "cache")
    env["TORCHOPT_SURVEY_DATA"] = (
        SHARED
        if HAVE_SHARED
        else str(write_synthetic_mnist(tmp / "synthetic", n_train=3000, n_test=500))
    )
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchopt_survey.experiments", *args]


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _hparams(run_dir: Path) -> dict[str, object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    raw = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(raw).session_start_info
    return {k: v.string_value or v.number_value for k, v in info.hparams.items()}


def test_end_to_end_all_then_report(tmp_path: Path, data_env: dict[str, str]) -> None:
    logdir, out = tmp_path / "runs", tmp_path / "report"
    common = [
        "--optimizers",
        "adam",
        "sgd",
        "--epochs",
        "1",
        "--seeds",
        "0",
        "--logdir",
        str(logdir),
    ]
    proc = subprocess.run(
        _cli("all", *common, "--train-subset", "2000", "--test-subset", "500",
             "--set", "karate.epochs=20", "--set", "karate.seeds=[0,1]", "--quiet"),
        env=data_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    runs = sorted(p.parent.relative_to(logdir).as_posix() for p in logdir.rglob("result.json"))
    # 3 MNIST regimes x 2 optimizers + 2 Karate models x 2 optimizers x 2 seeds
    assert len(runs) == 6 + 8
    assert "mnist/mnist-minibatch/adam/seed0" in runs and "karate/karate-gcn/sgd/seed1" in runs
    # TensorBoard: identical tags across optimizers, so one dashboard overlays them
    a = _scalars(logdir / "mnist/mnist-minibatch/adam/seed0")
    b = _scalars(logdir / "mnist/mnist-minibatch/sgd/seed0")
    assert set(a) == set(b) >= {"train/loss", "test/accuracy", "train/loss_epoch"}
    assert len(a["train/loss"]) == 32  # every step of ceil(2000 / 64)
    acc = a["test/accuracy"][-1][1]
    assert _hparams(logdir / "mnist/mnist-minibatch/adam/seed0")["optimizer"] == "adam"
    assert 0.3 < acc <= 1.0  # one Adam epoch learns far above chance (0.1)
    k = _scalars(logdir / "karate/karate-paper/adam/seed1")
    assert {"train/loss", "test/auc", "test/accuracy", "train/auc"} <= set(k)
    assert len(k["test/auc"]) == 20 and all(0.0 <= v <= 1.0 for _, v in k["test/auc"])
    assert any(
        p.name.startswith("events.out") for p in (logdir / "karate/karate-gcn/adam/seed0").iterdir()
    )

    proc = subprocess.run(
        _cli("report", "--logdir", str(logdir), "--out", str(out)),
        env=data_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for name in ("fig1_mnist_regimes.png", "fig2_mnist_optimizers.png", "fig3_karate_paper.png",
                 "fig4_karate_gcn.png"):  # fmt: skip
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    import csv

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 + 2 + 2 + 4  # gd/sgd/minibatch x 2 + karate 2 models x 2
    for r in rows:
        assert 0.0 <= float(r["final_test_accuracy_mean"]) <= 1.0
        assert float(r["wall_time_s_mean"]) > 0
    mb_adam = next(
        r for r in rows if r["variant"] == "mnist-minibatch" and r["optimizer"] == "adam"
    )
    assert float(mb_adam["final_test_accuracy_mean"]) == pytest.approx(acc, abs=1e-6)
    kar = [r for r in rows if r["experiment"] == "karate"]
    assert all(r["seeds"] == "2" and 0 <= float(r["final_test_auc_mean"]) <= 1 for r in kar)
    md = (out / "results.md").read_text()
    assert "| adam |" in md and "±" in md
    assert "adaptive methods win on link prediction" in (out / "claims.md").read_text()

    # --resume skips every finished run
    t0 = time.perf_counter()
    proc = subprocess.run(
        _cli("karate", *common, "--set", "epochs=20", "--set", "seeds=[0,1]", "--resume"),
        env=data_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("skipped (finished)") == 8, proc.stderr
    assert time.perf_counter() - t0 < 60


def _run_args(logdir: Path) -> list[str]:
    # batch 1 over 3000 images: ~1 s per epoch, long enough to kill mid-epoch
    return [
        "mnist", "--regimes", "sgd", "--optimizers", "momentum", "--epochs", "3",
        "--train-subset", "3000", "--test-subset", "500", "--set", "regimes.sgd.log_every=1",
        "--lr", "0.002", "--threads", "1", "--logdir", str(logdir), "--quiet",
    ]  # fmt: skip


def test_sigkill_mid_epoch_then_resume_is_bit_identical(
    tmp_path: Path, data_env: dict[str, str]
) -> None:
    run = "mnist/mnist-sgd/momentum/seed0"
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = subprocess.run(_cli(*_run_args(ref_dir)), env=data_env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen(_cli(*_run_args(cut_dir)), env=data_env, stderr=subprocess.PIPE)
    ckpt = cut_dir / run / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    first_epoch_s = load_checkpoint(ckpt)["elapsed"]
    time.sleep(first_epoch_s * 0.4)  # well inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (cut_dir / run / "result.json").exists()
    killed_at = load_checkpoint(ckpt)["epoch"]
    assert 1 <= killed_at < 3

    res = subprocess.run(
        _cli(*_run_args(cut_dir), "--resume"), env=data_env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    r_ref = json.loads((ref_dir / run / "result.json").read_text())
    r_cut = json.loads((cut_dir / run / "result.json").read_text())
    for tag, values in r_ref["history"].items():
        if not tag.startswith("time/"):
            assert r_cut["history"][tag] == values, tag  # exact float equality
    assert r_cut["loss_curve"] == r_ref["loss_curve"]
    c_ref, c_cut = load_checkpoint(ref_dir / run / "checkpoint.pt"), load_checkpoint(ckpt)
    assert c_cut["epoch"] == c_ref["epoch"] == 3
    assert bool(torch.isfinite(c_ref["step_losses"]).all())  # a diverged run would prove little
    assert torch.equal(c_cut["step_losses"], c_ref["step_losses"])
    for k, v in c_ref["task"]["model"].items():
        assert torch.equal(c_cut["task"]["model"][k], v), k
    bufs_ref = [s["momentum_buffer"] for s in c_ref["task"]["optimizer"]["state"].values()]
    bufs_cut = [s["momentum_buffer"] for s in c_cut["task"]["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(bufs_ref, bufs_cut, strict=True))
    # TensorBoard keeps one loss point per step: the killed attempt's extra events are purged
    steps = [s for s, _ in _scalars(cut_dir / run)["train/loss"]]
    assert sorted(set(steps)) == list(range(1, 9001))
