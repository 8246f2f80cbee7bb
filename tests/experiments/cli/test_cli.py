"""The command line: overrides and ``--set``, bad input and flags a command does not take (exit
2, naming the argument, before anything is written), and help for every flag."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.experiments_cli import parse_cli

from torchopt_survey.experiments import cli


def test_cli_overrides_and_set() -> None:
    (cfg,) = cli.build_configs(
        parse_cli("mnist", "--optimizers", "adam", "sgd", "--epochs", "2", "--regimes", "minibatch",
              "--set", "hidden=32", "--set", "regimes.minibatch.batch_size=16")
    )  # fmt: skip
    assert list(cfg["regimes"]) == ["minibatch"]
    assert cfg["regimes"]["minibatch"] == {"batch_size": 16, "optimizers": ["adam", "sgd"]}
    assert cfg["epochs"] == 2 and cfg["hidden"] == 32
    cfgs = cli.build_configs(parse_cli("all", "--set", "karate.epochs=5", "--seeds", "3"))
    assert [c["experiment"] for c in cfgs] == ["mnist", "karate"]
    assert cfgs[1]["epochs"] == 5 and cfgs[0]["epochs"] == 10
    assert cfgs[0]["seeds"] == [3] == cfgs[1]["seeds"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["mnist", "--optimizers", "adamz"], "valid choices: all, sgd, momentum, nag"),
        (["karate", "--set", "bogus=1"], "valid keys:"),
        (["mnist", "--regimes", "tiny"], "valid choices: gd, sgd, minibatch"),
        (["karate", "--models", "mlp"], "valid choices: paper, gcn"),
        (["mnist", "--dataset", "cifar"], "fashionmnist"),  # argparse quoting varies
        (["mnist", "--device", "tpu"], "valid choices: auto, cpu, cuda"),
        (["mnist", "--set", "regimes.gd.batch_size=0"], "batch_size"),
        (["frobnicate"], "report"),
    ],
)
def test_cli_bad_input_exits_2_with_choices(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(cli.main([*argv, "--logdir", str(tmp_path / "runs")]))
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return capsys.readouterr().out


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    top = _help(capsys)
    for command in ("mnist", "karate", "all", "sweep", "report"):
        assert command in top
    common = "--config --optimizers --seeds --epochs --device --data-dir --logdir --resume --quiet"
    for command, own in (("mnist", "--dataset --regimes --lr"), ("karate", "--edge-list --lr"),
                         ("all", "--dataset --edge-list --lr"),
                         ("sweep", "--experiment --lr-grid --grid --backend --val-split")):
        text = _help(capsys, command)
        for flag in [*common.split(), *own.split(), "--set", "--workers"]:
            assert flag in text, (command, flag)
    assert "--out" in _help(capsys, "report")


@pytest.mark.parametrize(("argv", "flag"), [
    (["mnist", "--lr-grid", "1e-3:1e-1:3"], "--lr-grid"),
    (["mnist", "--edge-list", "g.txt"], "--edge-list"),
    (["karate", "--dataset", "mnist"], "--dataset"),
    (["sweep", "--experiment", "mnist", "--lr", "0.1"], "--lr"),
    (["report", "--workers", "2"], "--workers"),
])  # fmt: skip
def test_a_flag_the_command_does_not_take_exits_2_naming_both(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--logdir", str(tmp_path / "runs")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"the {argv[0]} command does not take flag {flag}" in err, err
    assert not (tmp_path / "runs").exists()
