"""End-to-end runs: CLI, TensorBoard events, report, checkpoint/resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.experiments_cli import cli as _cli
from helpers.experiments_cli import data_env as make_data_env
from helpers.experiments_cli import raw_scalars as _raw_scalars

from torchopt_survey.experiments.runtime.files import load_checkpoint


@pytest.fixture(scope="module")
def data_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_data_env(tmp_path_factory.mktemp("data"))


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


RUN = "mnist/mnist-sgd/momentum/seed0"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, data_env: dict[str, str]) -> Path:
    """The uninterrupted run that killed-and-resumed attempts must reproduce."""
    ref_dir = tmp_path_factory.mktemp("ref")
    ref = subprocess.run(_cli(*_run_args(ref_dir)), env=data_env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    return ref_dir


def test_sigkill_mid_epoch_then_resume_is_bit_identical(
    tmp_path: Path, data_env: dict[str, str], reference_run: Path
) -> None:
    run = RUN
    ref_dir, cut_dir = reference_run, tmp_path / "cut"

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
    # a resume, not a restart (which would reproduce the same numbers: training is
    # deterministic): the second attempt started from the epoch the first one reached
    assert (r_ref["resumed_from_epoch"], r_ref["epochs_trained"]) == (None, 3)
    assert (r_cut["resumed_from_epoch"], r_cut["epochs_trained"]) == (killed_at, 3 - killed_at)
    assert r_cut["discarded_checkpoints"] == []
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
    # on disk, in the order written: one loss point per step, as in the reference run
    raw = _raw_scalars(cut_dir / run)
    assert [(s, v) for t, s, v in raw if t == "train/loss"] == [
        (s, v) for t, s, v in _raw_scalars(ref_dir / run) if t == "train/loss"
    ]
    assert [s for t, s, _ in raw if t == "train/loss"] == list(range(1, 9001))


# Runs the CLI with save_checkpoint replaced: SIGKILL as the checkpoint of epoch 2 is about to be
# written, i.e. after that epoch's TensorBoard events were flushed to disk.
_KILL_BEFORE_CHECKPOINT_2 = """
import os, signal, sys
from torchopt_survey.experiments import cli
from torchopt_survey.experiments.runs import writer as runner
real = runner.save_checkpoint
def save_or_die(path, state):
    if state["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, state)
runner.save_checkpoint = save_or_die
sys.exit(cli.main(sys.argv[1:]))
"""


def test_events_a_killed_attempt_wrote_past_its_checkpoint_are_purged(
    tmp_path: Path, data_env: dict[str, str], reference_run: Path
) -> None:
    cut_dir = tmp_path / "cut"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_BEFORE_CHECKPOINT_2, *_run_args(cut_dir)],
        env=data_env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(cut_dir / RUN / "checkpoint.pt")["epoch"] == 1
    # the scenario is real: epoch 2's events are on disk, past the epoch-1 checkpoint
    killed = _raw_scalars(cut_dir / RUN)
    assert [s for t, s, _ in killed if t == "train/loss"] == list(range(1, 6001))
    assert [s for t, s, _ in killed if t == "test/accuracy"] == [1, 2]

    res = subprocess.run(
        _cli(*_run_args(cut_dir), "--resume"), env=data_env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    result = json.loads((cut_dir / RUN / "result.json").read_text())
    assert (result["resumed_from_epoch"], result["epochs_trained"]) == (1, 2)
    raw, ref = _raw_scalars(cut_dir / RUN), _raw_scalars(reference_run / RUN)
    # the raw sequence on disk: every tag once per step, in order, with the reference's values
    assert [(t, s) for t, s, _ in raw] == [(t, s) for t, s, _ in ref]
    assert [x for x in raw if not x[0].startswith("time/")] == [
        x for x in ref if not x[0].startswith("time/")
    ]


def test_unreadable_checkpoint_is_kept_aside_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from torchopt_survey.experiments import cli
    from torchopt_survey.experiments.runs.folder import run_id
    from torchopt_survey.experiments.runs.single import execute_run
    from torchopt_survey.experiments.runtime.process import RunOptions
    from torchopt_survey.experiments.tasks import karate

    (cfg,) = cli.build_configs(cli.build_parser().parse_args(
        ["karate", "--optimizers", "adam", "--seeds", "0", "--logdir", str(tmp_path)]
    ))  # fmt: skip
    spec = {**karate.expand(cfg)[0], "epochs": 3}
    opts = RunOptions(logdir=str(tmp_path), resume=True, deterministic=False)
    first = execute_run(spec, opts)
    run_dir = tmp_path / run_id(spec)
    (run_dir / "result.json").unlink()  # as if killed before the end
    garbage = b"not a checkpoint"
    (run_dir / "checkpoint.pt").write_bytes(garbage)

    with caplog.at_level("WARNING", logger="torchopt_survey.experiments.runs.writer"):
        second = execute_run(spec, opts)
    assert "corrupt checkpoint" in caplog.text and "training from epoch 1" in caplog.text
    (aside,) = run_dir.glob("checkpoint.pt.corrupt-*")
    assert aside.read_bytes() == garbage  # kept, not deleted
    assert (second["resumed_from_epoch"], second["epochs_trained"]) == (None, 3)
    (entry,) = second["discarded_checkpoints"]
    assert entry["file"] == aside.name and entry["reason"].startswith("unreadable")
    assert json.loads((run_dir / "result.json").read_text())["discarded_checkpoints"] == [entry]
    assert second["history"]["train/loss_epoch"] == first["history"]["train/loss_epoch"]
