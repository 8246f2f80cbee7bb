"""Vectorised training and the ``sweep`` command.

* every replica of a vectorised MNIST program ends where its run done alone ends (weights,
  optimizer state, metrics), for several optimizers, in the batch-1 regime and mini-batch,
  with each seed's own data order and per-replica learning rates;
* ``sweep``: bad input exits 2 naming it before anything runs; a crashing run is marked failed
  while the others finish; the tables and the tuned choice (on validation) are written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from torchopt_survey.experiments.runs.folder import run_id
from torchopt_survey.experiments.runs.single import execute_run
from torchopt_survey.experiments.runs.vectorized import execute_vectorized, plan_groups
from torchopt_survey.experiments.runtime.files import load_checkpoint
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.tasks import config as C
from torchopt_survey.experiments.tasks import mnist

#: float32: the batched (vmap) matmuls sum in another order than the separate runs' ones
TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture
def data_dir(synthetic_mnist: Callable[[int, int], Path]) -> str:
    return str(synthetic_mnist(64, 40))


def _specs(optimizer: str, batch: Any, lrs: list[float], seeds: list[int],
           epochs: int = 2, val_split: float | None = None) -> list[dict[str, Any]]:
    out = []
    for lr in lrs:
        cfg = C.merge(C.default_config("mnist"), {
            "val_split": val_split,
            "seeds": seeds, "epochs": epochs, "hidden": 8, "train_subset": 24,
            "test_subset": 40, "regimes": {"r": {"batch_size": batch, "optimizers": [optimizer],
                                                 "lr": lr}}})
        cfg["regimes"] = {"r": cfg["regimes"]["r"]}
        specs = mnist.expand(C.validate(cfg))
        for s in specs:
            s["variant"] = f"{s['variant']}-lr{lr}"
        out += specs
    return out


@pytest.mark.parametrize("optimizer,batch,val", [
    ("sgd", 1, None), ("adam", 4, None), ("momentum", 1, None), ("nag", 1, None),
    ("rmsprop", 8, None), ("adagrad", "full", None),
    ("adam", 4, 0.25), ("sgd", "full", 0.25),  # each seed its own train/validation split
])
def test_vectorised_replicas_equal_separate_runs(tmp_path: Path, data_dir: str,
                                                 optimizer: str, batch: Any,
                                                 val: float | None) -> None:
    # (stable learning rates: at lr 0.05 heavy-ball SGD on single samples grows the weights
    # eightfold in 48 steps, and float32 rounding differences grow with them)
    specs = _specs(optimizer, batch, [0.01, 0.005], [0, 1], val_split=val)
    groups, alone = plan_groups(specs)
    assert len(groups) == 1 and not alone and len(groups[0]) == 4
    vec = RunOptions(logdir=str(tmp_path / "vec"), device="cpu", data_dir=data_dir, quiet=True)
    sep = RunOptions(logdir=str(tmp_path / "sep"), device="cpu", data_dir=data_dir, quiet=True)
    results = execute_vectorized(groups[0], vec)
    assert all(r.get("vectorized") == 4 for r in results)
    for spec in specs:
        alone_res = execute_run(spec, sep)
        mine = json.loads((tmp_path / "vec" / run_id(spec) / "result.json").read_text())
        keys = ["test/accuracy", "test/loss", "train/loss_epoch"]
        if val is not None:
            keys += ["val/accuracy", "val/loss"]
        for key in keys:
            assert mine["final"][key] == pytest.approx(alone_res["final"][key], rel=1e-4,
                                                       abs=1e-5), key
        a = load_checkpoint(tmp_path / "vec" / run_id(spec) / "checkpoint.pt")["task"]
        b = load_checkpoint(tmp_path / "sep" / run_id(spec) / "checkpoint.pt")["task"]
        for k, v in b["model"].items():
            torch.testing.assert_close(a["model"][k], v, **TOL)
        for i, entries in b["optimizer"]["state"].items():
            for k, v in entries.items():
                torch.testing.assert_close(a["optimizer"]["state"][i][k], v, **TOL)
        assert a["optimizer"]["param_groups"][0]["lr"] == spec["optimizer_kwargs"]["lr"]


def test_vectorised_resume_continues_each_run(tmp_path: Path, data_dir: str) -> None:
    """A vectorised program stopped after epoch 1 and resumed ends where an uninterrupted one
    does (checkpoints are ordinary per-run ones)."""
    specs = _specs("adam", 4, [0.05, 0.01], [0], epochs=2)
    opts = RunOptions(logdir=str(tmp_path / "a"), device="cpu", data_dir=data_dir, quiet=True)
    full = execute_vectorized(specs, opts)
    short = [{**s, "epochs": 1} for s in specs]
    o2 = RunOptions(logdir=str(tmp_path / "b"), device="cpu", data_dir=data_dir, quiet=True)
    execute_vectorized(short, o2)
    for s in specs:  # turn the finished 1-epoch runs into interrupted 2-epoch runs
        d = tmp_path / "b" / run_id(s)
        (d / "result.json").unlink()
        ck = load_checkpoint(d / "checkpoint.pt")
        ck["spec"] = json.loads(json.dumps(s, sort_keys=True))
        losses = ck["step_losses"]  # (an interrupted 2-epoch run has room for both epochs)
        ck["step_losses"] = torch.cat([losses, torch.full_like(losses, float("nan"))])
        torch.save(ck, d / "checkpoint.pt")
    o3 = RunOptions(logdir=str(tmp_path / "b"), device="cpu", data_dir=data_dir, quiet=True,
                    resume=True)
    resumed = execute_vectorized(specs, o3)
    by_id = {r["run_id"]: r for r in full}
    for r in resumed:
        assert r["final"]["test/loss"] == pytest.approx(by_id[r["run_id"]]["final"]["test/loss"],
                                                        rel=1e-6)


def test_not_vectorisable_runs_fall_back() -> None:
    karate = {"experiment": "karate", "seed": 0, "optimizer_kwargs": {}}
    groups, alone = plan_groups([karate, dict(karate, seed=1)])
    assert not groups and len(alone) == 2
    newton = _specs("sgd", "full", [0.01], [0, 1])
    newton = [dict(s, optimizer="newton") for s in newton]
    groups, alone = plan_groups(newton)  # closure-based second-order steps
    assert not groups and len(alone) == 2
# ------------------------------------------------------------------------------------------
# the sweep command
# ------------------------------------------------------------------------------------------
def _sweep(tmp: Path, data_dir: str, *extra: str) -> int:
    from torchopt_survey.experiments import cli

    return cli.main(["sweep", "--logdir", str(tmp / "runs"), "--quiet", "--device", "cpu",
                     "--data-dir", data_dir, *extra])


@pytest.mark.parametrize("args,needle", [
    (["--lr-grid", "1e-3:1e-1"], "--lr-grid"),
    (["--lr-grid", "1e-3:1e-1:0"], "--lr-grid"),
    (["--lr-grid", "1e-3:1e-1:3,"], "empty part"),
    (["--lr-grid", "1e-5,1e-3:1e-1:3,fast"], "'fast'"),
    (["--lr-grid", "1e-3:1e-1:3,0"], "must be > 0"),
    (["--lr-grid", "1e-3:1e-1:3", "--grid", "momentum=0.5,x"], "momentum"),
    (["--lr-grid", "1e-3:1e-1:3", "--grid", "momentum=0.9"], "momentum"),  # adam takes none
    (["--lr-grid", "1e-3:1e-1:3", "--grid", "momentum="], "empty"),
])
def test_sweep_bad_input_exits_2(tmp_path: Path, data_dir: str, args: list[str], needle: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = _sweep(tmp_path, data_dir, "--experiment", "mnist", "--optimizers", "adam",
                  "--seeds", "0", *args)
    assert code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_sweep_tunes_on_validation_and_marks_failures(tmp_path: Path, data_dir: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, Adam's runs crash (a patched optimizer factory): they are marked failed
    with their error, SGD's runs finish, and the tuned choice comes from validation."""
    from torchopt_survey.experiments import cli
    from torchopt_survey.experiments.tasks import optimizers as registry
    from torchopt_survey.experiments.tasks import stacking as vectorized

    real = registry.build_optimizer

    def build(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "adam":
            raise RuntimeError("boom for the test")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(mnist, "build_optimizer", build)
    monkeypatch.setattr(vectorized, "build_optimizer", build)
    monkeypatch.setenv("TORCHOPT_SURVEY_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    code = cli.main(["sweep", "--experiment", "mnist", "--optimizers", "sgd", "adam",
                     "--lr-grid", "1e-2:1e-1:2", "--seeds", "0", "1", "--epochs", "1",
                     "--set", "hidden=8", "--set", "regimes.minibatch.batch_size=8",
                     "--train-subset", "48", "--test-subset", "40", "--val-split", "0.25",
                     "--logdir", str(tmp_path / "runs"), "--data-dir", data_dir,
                     "--device", "cpu", "--quiet"])
    assert code == 0
    out = tmp_path / "runs" / "sweep"
    table = (out / "sweep_runs.csv").read_text().splitlines()
    assert len(table) == 1 + 2 * 2 * 2
    failed = [line for line in table[1:] if ",failed," in line]
    assert len(failed) == 4 and all(",adam," in line for line in failed)
    assert "boom for the test" in failed[0]
    report = json.loads((out / "sweep.json").read_text())
    sgd = [b for b in report["best"] if b["optimizer"] == "sgd"][0]
    settings = [r for r in report["rows"] if r["optimizer"] == "sgd"]
    by_setting: dict[str, list[float]] = {}
    for r in settings:
        by_setting.setdefault(r["setting"], []).append(r["val"])
    chosen = max(by_setting, key=lambda k: sum(by_setting[k]) / len(by_setting[k]))
    assert sgd["best_setting"] == chosen  # on validation, not test
    assert [b for b in report["best"] if b["optimizer"] == "adam"][0]["seeds"] == 0
    assert "sgd" in (out / "sweep_best.md").read_text()
    assert report["timing"]["vectorized_programs"] >= 1
    (figure,) = out.glob("sensitivity_mnist_mnist-minibatch*.png")
    assert figure.stat().st_size > 0
    claims = (out / "sweep_claims.md").read_text()
    assert "paper (lr 0.01)" not in claims or "tuned on validation" in claims
    assert "| sgd |" in (out / "sweep_targets.md").read_text()
    # the HParams dashboard (the log folder's overview): optimizer, lr, seed, regime first,
    # their domains declared
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(tmp_path / "runs"))
    acc.Reload()
    raw = acc.PluginTagToContent("hparams")["_hparams_/experiment"]
    infos = plugin_data_pb2.HParamsPluginData.FromString(raw).experiment.hparam_infos
    assert [i.name for i in infos][:4] == ["optimizer", "lr", "seed", "regime"]
    by_name = {i.name: i for i in infos}
    lr = by_name["lr"].domain_interval
    assert (lr.min_value, lr.max_value) == pytest.approx((0.01, 0.1))
    assert [v.string_value for v in by_name["optimizer"].domain_discrete.values] == \
        ["adam", "sgd"]
    # `report` on the sweep's logdir: the sweep's figures and tables, no per-setting rows
    assert cli.main(["report", "--logdir", str(tmp_path / "runs"), "--out",
                     str(tmp_path / "rep"), "--quiet"]) == 0
    assert (tmp_path / "rep" / "sweep_claims.md").is_file()
    assert not (tmp_path / "rep" / "results.md").exists()
