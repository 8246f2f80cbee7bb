"""Configs, presets and the optimizer registry of the experiments."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.experiments_cli import parse_cli

from torchopt_survey.experiments import cli
from torchopt_survey.experiments.tasks.config import (
    PRESETS,
    default_config,
    load_config_file,
    merge,
    validate,
)
from torchopt_survey.experiments.tasks.optimizers import (
    OPTIMIZER_NAMES,
    OPTIMIZERS,
    build_optimizer,
    resolve_optimizer_names,
)


def test_registry_names_and_paper_defaults() -> None:
    assert OPTIMIZER_NAMES == (
        "sgd", "momentum", "nag", "adagrad", "adadelta", "rmsprop",
        "adam", "adamw", "amsgrad", "nadam", "adamax",
    )  # fmt: skip
    import torchopt_survey

    for name, (cls, kwargs) in OPTIMIZERS.items():
        assert cls.__module__.startswith("torchopt_survey"), name
        assert issubclass(cls, torch.optim.Optimizer)
        assert kwargs["lr"] == 0.01
    assert OPTIMIZERS["adam"][0] is torchopt_survey.Adam
    assert OPTIMIZERS["momentum"][1]["momentum"] == 0.9
    assert OPTIMIZERS["nag"][1]["nesterov"] is True


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_builds_and_steps(name: str) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer(name, [p])
    assert opt.param_groups[0]["lr"] == 0.01
    (p**2).sum().backward()
    opt.step()
    assert not torch.equal(p.detach(), torch.ones(3))


def test_resolve_optimizer_names() -> None:
    assert resolve_optimizer_names(["Adam", "sgd", "adam"]) == ["adam", "sgd"]
    assert resolve_optimizer_names("all") == list(OPTIMIZER_NAMES)
    with pytest.raises(ValueError, match="valid choices: all, sgd, momentum"):
        resolve_optimizer_names(["adamz"])


def test_paper_configs_match_builtin_defaults() -> None:
    for exp in ("mnist", "karate"):
        data = load_config_file(PRESETS / f"{exp}_paper.yaml")
        base = default_config(exp)
        if "regimes" in data:
            base["regimes"] = {}
        assert validate(merge(base, data)) == validate(default_config(exp))
    mnist = validate(default_config("mnist"))
    assert mnist["activation"] == "linear" and mnist["hidden"] == 500 and mnist["epochs"] == 10
    assert mnist["regimes"]["minibatch"]["batch_size"] == 64
    assert mnist["regimes"]["sgd"]["batch_size"] == 1
    assert mnist["regimes"]["gd"]["batch_size"] == "full"
    assert len(validate(default_config("karate"))["seeds"]) >= 10


def test_presets_ship_in_the_package_and_load_by_name_or_path(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            ) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository: only the package's copy can answer
    deep = load_config_file(PRESETS / "mnist_deep.yaml")
    assert PRESETS.parent.name == "experiments" and deep["experiment"] == "mnist"
    for spelling in ("mnist_deep", "mnist_deep.yaml", "configs/mnist_deep.yaml"):
        assert load_config_file(spelling) == deep, spelling
    (cfg,) = cli.build_configs(parse_cli("mnist", "--config", "mnist_deep"))
    assert cfg["hidden"] == deep["hidden"]
    mine = tmp_path / "mnist_deep.yaml"  # a file of the user's wins over the preset
    mine.write_text("experiment: mnist\nhidden: 7\n")
    assert load_config_file("mnist_deep.yaml")["hidden"] == 7
    with pytest.raises(ValueError, match="packaged presets: karate_paper, .*mnist_deep"):
        load_config_file("no_such_preset")


def test_config_file_of_wrong_experiment_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'karate' config"):
        cli.build_configs(parse_cli("mnist", "--config", str(PRESETS / "karate_paper.yaml")))
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: mnist\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown key 'learning_rate'"):
        cli.build_configs(parse_cli("mnist", "--config", str(bad)))


def test_fused_flag_reaches_optimizer_kwargs_and_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchopt_survey.experiments.runs.single import execute_run
    from torchopt_survey.experiments.runtime.process import RunOptions
    from torchopt_survey.experiments.tasks import karate
    from torchopt_survey.optim.core import fused

    argv = ("karate", "--fused", "--optimizers", "adam", "--seeds", "0")
    (cfg,) = cli.build_configs(parse_cli(*argv))
    specs = karate.expand(cfg)
    assert all(s["optimizer_kwargs"]["fused"] is True for s in specs)
    spec = {**specs[0], "epochs": 3}
    # the fused kernels did the updates: count the calls of the fused step and the tensors
    # each updated (a path that ignored fused=True would train just as well)
    real_step, calls = fused.fused_step, []

    def counting_step(optimizer, group, spec, params, *args, **kwargs):
        calls.append((type(optimizer).__name__, group["fused"], len(params)))
        return real_step(optimizer, group, spec, params, *args, **kwargs)

    monkeypatch.setattr(fused, "fused_step", counting_step)
    res = execute_run(spec, RunOptions(logdir=str(tmp_path), deterministic=False))
    steps = 3 * res["loss_curve"]["steps_per_epoch"]
    assert len(calls) >= steps and all(c[:2] == ("Adam", True) and c[2] > 0 for c in calls)
    assert len(res["history"]["test/auc"]) == 3
    assert res["history"]["train/loss_epoch"][-1] < res["history"]["train/loss_epoch"][0]
    (plain,) = cli.build_configs(parse_cli("karate"))
    assert "fused" not in karate.expand(plain)[0]["optimizer_kwargs"]
