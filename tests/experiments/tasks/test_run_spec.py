"""The typed run spec: each value stored once, the on-disk form and run ids unchanged, and
a checkpoint saved before ``compile=auto`` (0.1: no ``compile`` key, or false) resumed eager."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from torchopt_survey.experiments.runs.folder import CHECKPOINT, RESULT
from torchopt_survey.experiments.runs.single import execute_run
from torchopt_survey.experiments.runtime.files import load_checkpoint, load_json, save_checkpoint
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.sweep.grid import expand_sweep
from torchopt_survey.experiments.tasks.config import default_config, merge, validate
from torchopt_survey.experiments.tasks.data import write_synthetic_mnist
from torchopt_survey.experiments.tasks.registry import expand
from torchopt_survey.experiments.tasks.spec import RunSpec


def _mnist(**more: Any) -> list[RunSpec]:
    cfg = merge(default_config("mnist"), {
        "regimes": {"minibatch": {"batch_size": 16, "optimizers": ["momentum"]}},
        "epochs": 2, "train_subset": 64, "test_subset": 32, **more})
    cfg["regimes"] = {"minibatch": cfg["regimes"]["minibatch"]}
    return expand(validate(cfg))


def _old_id(d: dict[str, Any]) -> str:  # the run id as runs have always spelt it
    return f"{d['experiment']}/{d['variant']}/{d['optimizer']}/seed{d['seed']}"


def test_a_sweep_spec_stores_its_setting_once_and_keeps_its_on_disk_form() -> None:
    (base,) = _mnist()
    assert base.optimizer_kwargs == {"lr": 0.01, "momentum": 0.9}  # paper defaults, merged
    (run,) = expand_sweep([base], [0.001], {"momentum": [0.5]})
    # stored once: the setting; the variant and the optimizer's arguments derive from it
    assert "lr" not in run.base_kwargs and "momentum" not in run.base_kwargs
    assert run.sweep is not None and dict(run.sweep.setting) == {"lr": 0.001, "momentum": 0.5}
    assert run.lr == 0.001 and run.optimizer_kwargs == {"lr": 0.001, "momentum": 0.5}
    stored = run.to_dict()
    assert stored["variant"] == "mnist-minibatch-sweep~lr=0.001,momentum=0.5"
    assert stored["sweep"] == {"base": "mnist-minibatch",
                               "setting": {"lr": 0.001, "momentum": 0.5}}
    assert stored["optimizer_kwargs"] == {"lr": 0.001, "momentum": 0.5}
    assert run.run_id == _old_id(stored) == "mnist/mnist-minibatch-sweep~lr=0.001,momentum=0.5" \
        "/momentum/seed0"
    # the stored dict reads back as the same spec, and compares equal to it
    again = RunSpec.of(stored)
    assert again == run == stored and again.normalised() == run
    assert again.base_variant == "mnist-minibatch" and again.settings["batch_size"] == 16
    # a stored spec whose variant does not spell its setting is not a run spec
    with pytest.raises(ValueError, match="disagree"):
        RunSpec.of({**stored, "variant": "mnist-minibatch-sweep~lr=0.1,momentum=0.5"})


def test_a_spec_is_read_only() -> None:
    (spec,) = _mnist()
    spec["optimizer_kwargs"]["lr"] = 1.0  # a copy: the spec is not changed
    assert spec.lr == 0.01
    with pytest.raises(AttributeError):
        spec.seed = 3  # type: ignore[misc]


class Killed(Exception):
    pass


def _killed_after_epoch_one(spec: RunSpec, opts: RunOptions) -> None:
    def stop(info: dict[str, Any]) -> None:
        if info["epoch"] == 2:
            raise Killed  # (the run's checkpoint of epoch 1 is on disk)

    with pytest.raises(Killed):
        execute_run(spec, opts, stop)


@pytest.mark.parametrize("old_key", ["absent", "false"])
def test_a_checkpoint_saved_before_compile_auto_resumes_eager(
        tmp_path: Any, caplog: pytest.LogCaptureFixture, old_key: str) -> None:
    data = str(write_synthetic_mnist(tmp_path / "data", n_train=64, n_test=32))
    opts = RunOptions(logdir=str(tmp_path / "runs"), data_dir=data, resume=True, quiet=True,
                      deterministic=False)
    (spec,) = _mnist()  # today's: compile=auto
    assert spec["compile"] == "auto"
    eager = spec.with_settings(compile=False)
    _killed_after_epoch_one(eager, opts)
    # the checkpoint as 0.1 wrote it: its spec without the compile key (or compile=false)
    ckpt = tmp_path / "runs" / spec.run_id / CHECKPOINT
    state = load_checkpoint(ckpt)
    if old_key == "absent":
        del state["spec"]["compile"]
    save_checkpoint(ckpt, state)
    with caplog.at_level(logging.WARNING):
        res = execute_run(spec, opts)
    assert res["resumed_from_epoch"] == 1 and res["epochs_trained"] == 1  # not set aside
    assert res["discarded_checkpoints"] == []
    assert not list(ckpt.parent.glob(f"{CHECKPOINT}.other-spec-*"))
    assert f"saved with compile {old_key}" in res["resume_note"]  # recorded ...
    assert "resumed eager" in caplog.text  # ... and said
    assert res["spec"]["compile"] is False and res["compile"]["compiled"] is False
    assert res["compile"]["why_not"] == "compile=false"  # it trained as it ran
    assert load_json(ckpt.parent / RESULT)["resume_note"] == res["resume_note"]
    # a later --resume finds the run finished (not retrained under today's compile=auto)
    assert execute_run(spec, opts)["skipped"] is True


def test_a_checkpoint_without_compile_is_set_aside_when_compile_is_asked_for(
        tmp_path: Any) -> None:
    data = str(write_synthetic_mnist(tmp_path / "data", n_train=64, n_test=32))
    opts = RunOptions(logdir=str(tmp_path / "runs"), data_dir=data, resume=True, quiet=True,
                      deterministic=False)
    (spec,) = _mnist(compile=True, dropout=0.1)  # (dropout: trained eager, quickly)
    _killed_after_epoch_one(spec.with_settings(compile=False), opts)
    ckpt = tmp_path / "runs" / spec.run_id / CHECKPOINT
    state = load_checkpoint(ckpt)
    del state["spec"]["compile"]
    save_checkpoint(ckpt, state)
    res = execute_run(spec.with_settings(compile=True), opts)
    assert res["resumed_from_epoch"] is None and res["resume_note"] == ""
    assert len(list(ckpt.parent.glob(f"{CHECKPOINT}.other-spec-*"))) == 1
