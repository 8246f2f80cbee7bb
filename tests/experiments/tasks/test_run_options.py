"""How a run computes: the compiled step (``compile``), subnormal flushing (``flush_denormal``),
the step inside backward and compact optimizer state -- each applied, recorded, and refused
where it cannot be."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from torchopt_survey.experiments import cli
from torchopt_survey.experiments.runs.single import execute_run
from torchopt_survey.experiments.runtime import process
from torchopt_survey.experiments.runtime.process import RunOptions, flushing_denormals
from torchopt_survey.experiments.tasks import karate, mnist
from torchopt_survey.experiments.tasks.config import default_config, merge, validate


@pytest.fixture
def synth(synthetic_mnist: Callable[[int, int], Path]) -> str:
    return str(synthetic_mnist(240, 60))


def _spec(optimizer: str = "sgd", batch_size: int | str = 16, **opts: Any) -> dict[str, Any]:
    cfg = merge(default_config("mnist"),
                {"regimes": {}, "optimizers": [optimizer], "epochs": 2, "hidden": 32})
    cfg["regimes"] = {"r": {"batch_size": batch_size}}
    return mnist.expand(validate(merge(cfg, opts)))[0]


def _run(spec: dict[str, Any], tmp: Path, data: str) -> dict[str, Any]:
    return execute_run(spec, RunOptions(logdir=str(tmp), data_dir=data, quiet=True))


def _step_losses(run: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(run["loss_curve"]["loss"], dtype=torch.float64)


# ----------------------------------------------------------------------------- compile


@pytest.mark.parametrize(("optimizer", "batch_size"), [("sgd", 1), ("adam", 16)])
def test_compiled_run_equals_eager_within_float32_tolerance(
    optimizer: str, batch_size: int, synth: str, tmp_path: Path
) -> None:
    kw: dict[str, Any] = {"train_subset": 48} if batch_size == 1 else {}
    eager = _run(_spec(optimizer, batch_size, compile=False, **kw), tmp_path / "e", synth)
    compiled = _run(_spec(optimizer, batch_size, compile="auto", **kw), tmp_path / "c", synth)
    assert eager["compile"]["compiled"] is False and eager["compile"]["why_not"] == "compile=false"
    assert compiled["compile"]["compiled"] is True and compiled["compile"]["why_not"] is None
    assert compiled["compile"]["programs"] >= 1
    a, b = _step_losses(eager), _step_losses(compiled)
    assert a.shape == b.shape
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(compiled["final"]["test/accuracy"], eager["final"]["test/accuracy"])
    assert compiled["spec"]["compile"] == "auto" and eager["spec"]["compile"] is False


def test_compiled_run_logs_the_same_grad_norms_and_histograms(synth: str, tmp_path: Path) -> None:
    eager = _run(_spec("momentum", 16, compile=False, log_grad_norms=True), tmp_path / "e", synth)
    comp = _run(_spec("momentum", 16, compile=True, log_grad_norms=True), tmp_path / "c", synth)
    assert comp["compile"]["compiled"] is True
    tags = [t for t in eager["history"] if t.startswith("grad_norm/")]
    assert tags and sorted(tags) == sorted(t for t in comp["history"] if t.startswith("grad_norm/"))
    for tag in tags:
        torch.testing.assert_close(comp["history"][tag], eager["history"][tag],
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("opts", "batch_size", "reason"),
    [
        ({}, "full", "full batch"),
        ({"l2": 1e-3}, 16, "l1/l2 penalty"),
        ({"clip_grad_value": 1.0}, 16, "gradient clipping"),
        ({"dropout": 0.1}, 16, "dropout"),
        ({"norm": "batch"}, 16, "buffers"),
        ({"scheduler": {"name": "OneCycleLR", "max_lr": 0.1, "total_steps": 40}}, 16,
         "cycles momentum"),
        ({"step_in_backward": True}, 16, "step_in_backward"),
        ({"compile": False}, 16, "compile=false"),
    ],
)
def test_eager_runs_say_why(opts: dict[str, Any], batch_size: Any, reason: str, synth: str) -> None:
    task = mnist.MnistTask(_spec("momentum", batch_size, **opts), torch.device("cpu"), synth)
    assert task.compiled is None
    assert task.compile_why_not is not None and reason in task.compile_why_not
    hp = task.hparams()
    assert hp["compiled"] is False and reason in hp["compile_why_not"]


def test_compile_true_forces_full_batch_and_auto_skips_the_vectorised_program(synth: str) -> None:
    task = mnist.MnistTask(_spec("sgd", "full", compile=True), torch.device("cpu"), synth)
    assert task.compiled is not None and task.hparams()["compiled"] is True
    from torchopt_survey.experiments.tasks import mnist_vectorized

    assert mnist_vectorized.why_not(_spec("sgd", 16)) is None  # auto: still vectorisable
    assert mnist_vectorized.why_not(_spec("sgd", 16, compile=True)) is not None


@pytest.mark.parametrize(
    ("setting", "key"),
    [("compile=maybe", "compile"), ("compile=1", "compile"), ("flush_denormal=2", "flush_denormal"),
     ("step_in_backward=2", "step_in_backward"), ("state_dtype=float16", "state_dtype")],
)
def test_bad_values_exit_2_naming_the_key(
    setting: str, key: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["mnist", "--set", setting, "--logdir", str(tmp_path / "runs")]) == 2
    assert f"error: {key}:" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("argv", "key", "cause"),
    [
        (["--set", "step_in_backward=true", "--set", "compile=true"], "compile",
         "step_in_backward"),
        (["--set", "step_in_backward=true", "--set", "clip_grad_norm=1"], "step_in_backward",
         "clip_grad_norm"),
        (["--set", "step_in_backward=true", "--optimizers", "newton"], "step_in_backward",
         "newton"),
        (["--set", "state_dtype=int8", "--optimizers", "cg"], "state_dtype", "cg"),
    ],
)
def test_impossible_combinations_are_refused(
    argv: list[str], key: str, cause: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["mnist", *argv, "--logdir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"error: {key}:" in err and cause in err, err


# ----------------------------------------------------------------------------- flush_denormal


def test_flush_denormal_is_applied_recorded_and_restored(
    synth: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    train_epoch = mnist.MnistTask.train_epoch

    def spy(self: mnist.MnistTask, *args: Any) -> dict[str, float]:
        seen.append(flushing_denormals())
        return train_epoch(self, *args)

    monkeypatch.setattr(mnist.MnistTask, "train_epoch", spy)
    before = flushing_denormals()
    on = _run(_spec(flush_denormal=True, compile=False), tmp_path / "on", synth)
    assert seen == [True, True] and flushing_denormals() == before
    assert on["spec"]["flush_denormal"] is True and on["run_id"].endswith("seed0")
    assert "flush_denormalTrue" in on["run_id"]
    seen.clear()
    torch.set_flush_denormal(True)  # a process that flushes: an off run turns it off
    try:
        off = _run(_spec(compile=False), tmp_path / "off", synth)
        assert seen == [False, False] and flushing_denormals()
    finally:
        torch.set_flush_denormal(before)
    assert "flush_denormal" not in off["spec"]  # off by default: paper specs unchanged
    saved = json.loads((tmp_path / "on" / on["run_id"] / "result.json").read_text())
    assert saved["spec"]["flush_denormal"] is True


def test_flushing_denormals_reads_the_setting() -> None:
    before = flushing_denormals()
    try:
        with process.flush_denormal(True):
            assert flushing_denormals()
        with process.flush_denormal(False):
            assert not flushing_denormals()
    finally:
        torch.set_flush_denormal(before)
    assert flushing_denormals() == before


# ----------------------------------------------------------------------------- memory options


def test_step_in_backward_run_equals_the_ordinary_run(synth: str, tmp_path: Path) -> None:
    spec = _spec("adam", 16, step_in_backward=True)
    task = mnist.MnistTask(spec, torch.device("cpu"), synth)
    assert task.in_backward is not None and task.compiled is None
    task.train_epoch(1, torch.zeros(task.steps_per_epoch), lambda *_: None)
    assert all(p.grad is None for p in task.model.parameters())  # each freed by its hook
    hooked = _run(spec, tmp_path / "h", synth)
    plain = _run(_spec("adam", 16, compile=False), tmp_path / "p", synth)
    assert hooked["spec"]["step_in_backward"] is True and "step_in_backward" in hooked["run_id"]
    # the same arithmetic as step(): bit for bit
    assert hooked["loss_curve"]["loss"] == plain["loss_curve"]["loss"]
    assert hooked["final"]["test/accuracy"] == plain["final"]["test/accuracy"]


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
def test_state_dtype_reaches_the_optimizer(state_dtype: str, synth: str, tmp_path: Path) -> None:
    spec = _spec("adam", 16, state_dtype=state_dtype)
    task = mnist.MnistTask(spec, torch.device("cpu"), synth)
    assert task.compiled is None and "state_dtype" in (task.compile_why_not or "")
    task.train_epoch(1, torch.zeros(task.steps_per_epoch), lambda *_: None)
    moments = [s["exp_avg"] for s in task.optimizer.state.values()]
    expected = (torch.bfloat16,) if state_dtype == "bfloat16" else (torch.int8, torch.uint8)
    assert moments and all(m.dtype in expected for m in moments)
    res = _run(spec, tmp_path, synth)
    assert res["spec"]["state_dtype"] == state_dtype
    assert res["final"]["test/accuracy"] > 0


def test_karate_takes_the_memory_options(tmp_path: Path) -> None:
    cfg = merge(default_config("karate"), {"models": ["gcn"], "optimizers": ["adamw"],
                                           "seeds": [0], "epochs": 3,
                                           "step_in_backward": True, "state_dtype": "bfloat16"})
    (spec,) = karate.expand(validate(cfg))
    task = karate.KarateTask(spec, torch.device("cpu"), None)
    assert task.in_backward is not None
    before = [p.detach().clone() for p in task.model.parameters()]
    task.train_epoch(1, torch.zeros(task.steps_per_epoch), lambda *_: None)
    assert any(not torch.equal(a, p) for a, p in zip(before, task.model.parameters(), strict=True))
    assert all(p.grad is None for p in task.model.parameters())  # freed by the hooks
    assert {s["exp_avg"].dtype for s in task.optimizer.state.values()} == {torch.bfloat16}


def test_a_hand_made_spec_with_clipping_in_backward_is_refused(synth: str) -> None:
    spec = {**_spec("sgd", 16, step_in_backward=True), "clip_grad_value": 1.0}  # not validated
    with pytest.raises(ValueError, match="step_in_backward: .*clipping"):
        mnist.MnistTask(spec, torch.device("cpu"), synth)
