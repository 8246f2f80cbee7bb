"""§V training techniques as experiment options: each option is checked for what it does."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.processes import ROOT
from torch import nn
from torch.nn import functional as F

from torchopt_survey.experiments import cli
from torchopt_survey.experiments.runs.single import execute_run
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.tasks import karate, mnist
from torchopt_survey.experiments.tasks.config import PRESETS, default_config, merge, validate
from torchopt_survey.experiments.tasks.data import write_synthetic_mnist
from torchopt_survey.experiments.tasks.models import build_mlp
from torchopt_survey.experiments.tasks.techniques import (
    EarlyStopping,
    GradNormTracker,
    Techniques,
    clip_gradients,
    init_weights,
    val_split_indices,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny synthetic MNIST (never the shared copy: these tests must not depend on it)."""
    return str(write_synthetic_mnist(tmp_path_factory.mktemp("synth"), n_train=400, n_test=100))


def _mnist_spec(**opts: Any) -> dict[str, Any]:
    cfg = merge(
        default_config("mnist"),
        {"regimes": {}, "optimizers": ["sgd"], "epochs": 2, "hidden": [16, 16]},
    )
    cfg["regimes"] = {"minibatch": {"batch_size": opts.pop("batch_size", 50)}}
    cfg = validate(merge(cfg, opts))
    return mnist.expand(cfg)[0]


# ----------------------------------------------------------------------------- init


@pytest.mark.parametrize(
    ("init", "activation"),
    [
        ("xavier_uniform", "tanh"),
        ("xavier_normal", "sigmoid"),
        ("kaiming_uniform", "relu"),
        ("kaiming_normal", "tanh"),
    ],
)
def test_init_has_the_theoretical_variance(init: str, activation: str) -> None:
    torch.manual_seed(0)
    fan_in, fan_out = 1000, 600
    model = nn.Sequential(nn.Linear(fan_in, fan_out))
    init_weights(model, init, activation)
    gain = nn.init.calculate_gain(activation)
    if init.startswith("xavier"):
        expected = gain**2 * 2.0 / (fan_in + fan_out)
    else:
        expected = gain**2 / fan_in
    w = model[0].weight.detach().double()
    # Sampling error of a variance estimate over n = 600,000 values: ~sqrt(2/n) = 0.18 %
    # (less for uniform); 1 % is > 5 standard errors, and far below any gain mix-up (>= 15 %).
    assert w.var().item() == pytest.approx(expected, rel=0.01)
    assert abs(w.mean().item()) < 5 * math.sqrt(expected / w.numel())
    assert torch.all(model[0].bias == 0)


def test_init_gain_scales_weights_and_default_keeps_torch_init() -> None:
    torch.manual_seed(1)
    a = nn.Linear(50, 50)
    torch.manual_seed(1)
    b = nn.Linear(50, 50)
    init_weights(nn.Sequential(b), "default", "relu")
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    init_weights(nn.Sequential(b), "default", "relu", gain=3.0)
    assert torch.allclose(b.weight, 3 * a.weight)


# ----------------------------------------------------------------------------- norm, dropout


@pytest.mark.parametrize(("norm", "cls"), [("batch", nn.BatchNorm1d), ("layer", nn.LayerNorm)])
def test_norm_layers_sit_between_linear_and_activation(norm: str, cls: type) -> None:
    model = build_mlp(20, [8, 6], 3, "tanh", norm=norm)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Linear, cls, nn.Tanh, nn.Linear, cls, nn.Tanh, nn.Linear]
    sizes = [m.normalized_shape if norm == "layer" else (m.num_features,) for m in model[1:5:3]]
    assert sizes == [(8,), (6,)]
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_batch_norm_uses_batch_stats_in_train_and_running_stats_in_eval() -> None:
    torch.manual_seed(0)
    model = build_mlp(5, [4], 2, "relu", norm="batch")
    bn = model[1]
    x = torch.randn(64, 5) * 3 + 1
    model.train()
    model(x)  # updates running stats
    h = model[0](x)
    assert torch.allclose(bn.running_mean, 0.1 * h.mean(0).detach(), atol=1e-6)
    model.eval()
    with torch.no_grad():
        expect = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        assert torch.allclose(bn(h), expect * bn.weight + bn.bias, atol=1e-5)
        model.train()
        batch = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps)
        assert torch.allclose(bn(h), batch * bn.weight + bn.bias, atol=1e-5)


def test_dropout_follows_each_activation_and_is_off_at_eval() -> None:
    torch.manual_seed(0)
    model = build_mlp(30, [200, 200], 4, "relu", dropout=0.5)
    assert [type(m) for m in model].count(nn.Dropout) == 2
    assert isinstance(model[2], nn.Dropout) and isinstance(model[5], nn.Dropout)
    plain = build_mlp(30, [200, 200], 4, "relu")
    with torch.no_grad():  # dropout has no parameters: copy the Linear ones in order
        for a, b in zip(plain.parameters(), model.parameters(), strict=True):
            a.copy_(b)
    x = torch.randn(8, 30)
    model.eval()
    assert torch.equal(model(x), plain(x))
    model.train()
    h = model[2](model[1](model[0](x)))
    assert (h == 0).float().mean() > 0.6  # ReLU zeros plus about half of the rest
    assert not torch.equal(model(x), plain(x))


# ----------------------------------------------------------------------------- penalties, clipping


def test_l1_l2_change_the_loss_by_exactly_the_penalty() -> None:
    torch.manual_seed(0)
    model = build_mlp(6, [5], 3, "relu", norm="batch")
    x, y = torch.randn(10, 6), torch.randint(0, 3, (10,))
    data_loss = F.cross_entropy(model(x), y)
    w1, w2 = model[0].weight, model[3].weight  # matrices only: biases and BN scales are free
    l1, l2 = 0.01, 0.3
    spec = {"experiment": "mnist", "l1": l1, "l2": l2, "log_grad_norms": False}
    tech = Techniques(spec, model, torch.optim.SGD(model.parameters(), lr=0.1))
    expected = l1 * (w1.abs().sum() + w2.abs().sum()) + l2 / 2 * ((w1**2).sum() + (w2**2).sum())
    assert torch.allclose(tech.loss(data_loss) - data_loss, expected, rtol=1e-6)
    only_l2 = Techniques({**spec, "l1": 0.0}, model, torch.optim.SGD(model.parameters(), lr=0.1))
    model.zero_grad()
    only_l2.loss(torch.zeros(())).backward()
    assert torch.allclose(w1.grad, l2 * w1) and model[0].bias.grad is None


def test_clipping_bounds_norm_and_values() -> None:
    torch.manual_seed(0)
    ps = [torch.randn(50, requires_grad=True), torch.randn(7, 3, requires_grad=True)]
    for p in ps:
        p.grad = torch.randn_like(p) * 10
    clip_gradients(ps, max_norm=None, max_value=0.5)
    assert all(p.grad.abs().max() <= 0.5 for p in ps)
    for p in ps:
        p.grad = torch.randn_like(p) * 10
    clip_gradients(ps, max_norm=1.5, max_value=None)
    total = torch.cat([p.grad.flatten() for p in ps]).norm()
    assert total == pytest.approx(1.5, rel=1e-5)


def test_task_clips_before_the_step_but_logs_the_raw_norm(synth: str) -> None:
    spec = _mnist_spec(clip_grad_norm=1e-3, batch_size="full", epochs=1, init_gain=5.0)
    task = mnist.MnistTask(spec, torch.device("cpu"), synth)
    before = copy.deepcopy(task.model)
    out = before(task.x_train)
    F.cross_entropy(out, task.y_train).backward()
    raw = {n: p.grad.norm().item() for n, p in before.named_parameters()}
    metrics = task.train_epoch(1, torch.zeros(1), lambda *_: None)
    moved = torch.cat(
        [
            (a - b).flatten()
            for a, b in zip(task.model.parameters(), before.parameters(), strict=True)
        ]
    )
    assert moved.norm().item() == pytest.approx(0.01 * 1e-3, rel=1e-2)  # lr * clipped norm
    for name, value in raw.items():  # logged gradient norms equal p.grad.norm()
        assert metrics[f"train/param_grad_norm/{name}"] == pytest.approx(value, rel=1e-5)
    assert sum(v**2 for v in raw.values()) ** 0.5 > 1e-2  # the clip did act


def test_diverged_gradients_log_nan_norms() -> None:
    model = nn.Linear(3, 2)
    tracker = GradNormTracker(model)
    model.weight.grad = torch.full((2, 3), float("nan"))
    model.bias.grad = torch.tensor([1.0, float("inf")])
    tracker.record()
    model.weight.grad = torch.full((2, 3), 2.0)  # a finite step before the nan one ...
    model.bias.grad = torch.tensor([3.0, 4.0])
    tracker.record()
    model.weight.grad = torch.full((2, 3), float("nan"))
    model.bias.grad = torch.tensor([1.0, float("inf")])
    tracker.record()
    metrics = tracker.epoch_metrics()
    # ... is the mean over finite steps: weight norm sqrt(6 * 4), bias 5 (inf step left out).
    assert metrics["train/param_grad_norm/weight"] == pytest.approx(math.sqrt(24))
    assert metrics["train/param_grad_norm/bias"] == pytest.approx(5.0)
    model.weight.grad = torch.full((2, 3), float("nan"))
    tracker.record()
    # no finite step at all
    assert math.isnan(tracker.epoch_metrics()["train/param_grad_norm/weight"])
    model.weight.grad = torch.full((2, 3), float("nan"))
    model.bias.grad = torch.tensor([1.0, float("inf")])
    tracker.record()
    tracker.epoch_metrics()
    hist = tracker.histograms()  # (the run writer keeps the finite values: test_writer_histograms)
    assert list(hist) == ["grad/weight", "grad/bias"] and hist["grad/bias"][0] == 1.0


# ----------------------------------------------------------------------------- val split, stopping


def test_val_split_is_disjoint_complete_and_reproducible_per_seed() -> None:
    tr, va = val_split_indices(1000, 0.2, seed=3)
    assert len(va) == 200 and len(tr) == 800
    assert not set(tr.tolist()) & set(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    tr2, va2 = val_split_indices(1000, 0.2, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, val_split_indices(1000, 0.2, seed=4)[1])


def test_task_validation_comes_from_training_set_never_test(synth: str) -> None:
    spec = _mnist_spec(val_split=0.25, normalize_inputs=True)
    task = mnist.MnistTask(spec, torch.device("cpu"), synth)
    data = task.data
    assert task.x_val.shape[0] == 100 and task.x_train.shape[0] == 300
    mean, std = task.x_train.mean(), task.x_train.std()
    assert abs(mean.item()) < 1e-5 and std.item() == pytest.approx(1.0, rel=1e-4)

    def rows(x: torch.Tensor) -> set[bytes]:
        return {r.numpy().tobytes() for r in x}

    _, va = val_split_indices(400, 0.25, spec["seed"])
    raw_val = data.x_train[va]
    assert rows(raw_val) <= rows(data.x_train)
    assert not rows(raw_val) & rows(data.x_test)
    # Standardised with the training part's statistics, validation is the same rows.
    tr, _ = val_split_indices(400, 0.25, spec["seed"])
    m, s = data.x_train[tr].mean(), data.x_train[tr].std()
    assert torch.allclose(task.x_val, (raw_val - m) / s)
    assert set(task.evaluate()) >= {"val/loss", "val/accuracy", "test/loss", "test/accuracy"}


def test_early_stopping_on_a_scripted_sequence_restores_best_weights() -> None:
    model = nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(patience=3)
    losses = [1.0, 0.8, 0.9, 0.7, 0.75, 0.71, 0.70, 0.5]
    stopped_at = None
    for epoch, loss in enumerate(losses, start=1):
        with torch.no_grad():
            model.weight.fill_(epoch)  # weights remember their epoch
        if stopper.step(epoch, loss, model):
            stopped_at = epoch
            break
    # Best 0.7 at epoch 4; 0.75, 0.71, 0.70 (not lower) are three bad epochs.
    assert stopped_at == 7 and stopper.best_epoch == 4
    stopper.restore(model)
    assert model.weight.item() == 4.0
    with pytest.raises(ValueError, match="early_stopping"):
        EarlyStopping(0)


class _ScriptedTask:
    """A task whose validation loss follows a script (for the runner's stopping logic)."""

    def __init__(self, spec: dict[str, Any], device: torch.device, data_dir: str | None) -> None:
        self.model = nn.Linear(1, 1, bias=False)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.tech = Techniques(spec, self.model, self.optimizer)
        self.steps_per_epoch = 1
        self.script = [0.9, 0.5, 0.6, 0.4, 0.45, 0.41, 0.42, 0.1, 0.1, 0.1]
        self.epoch = 0

    stop = property(lambda self: self.tech.stop)

    def hparams(self) -> dict[str, Any]:
        return {"x": 1}

    def hparam_metrics(self) -> list[str]:
        return ["test/accuracy"]

    def histograms(self) -> dict[str, torch.Tensor]:
        return {}

    def train_epoch(self, epoch: int, losses: torch.Tensor, progress: Any) -> dict[str, float]:
        self.epoch = epoch
        with torch.no_grad():
            self.model.weight.fill_(epoch)
        losses[0] = 1.0
        return {"train/loss_epoch": 1.0}

    def evaluate(self) -> dict[str, float]:
        return {"val/loss": self.script[self.epoch - 1], "test/accuracy": self.model.weight.item()}

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        return self.tech.end_epoch(epoch, metrics)

    def finish(self) -> dict[str, Any]:
        extra = self.tech.finish()
        return {**extra, "final": self.evaluate()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "techniques": self.tech.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.tech.load_state_dict(state["techniques"])


def test_runner_stops_early_records_epoch_and_restores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchopt_survey.experiments.runs import single as runner

    monkeypatch.setattr(runner, "make_task", _ScriptedTask)
    spec = {
        "experiment": "mnist", "variant": "v", "optimizer": "sgd", "seed": 0, "epochs": 10,
        "early_stopping": 3, "log_grad_norms": False,
    }  # fmt: skip
    res = execute_run(spec, RunOptions(logdir=str(tmp_path), quiet=True))
    # best 0.4 at epoch 4, then 0.45, 0.41, 0.42: stop after epoch 7.
    assert res["early_stopping"]["stopped_epoch"] == 7
    assert res["early_stopping"]["best_epoch"] == 4
    assert len(res["history"]["val/loss"]) == 7
    assert res["final"]["test/accuracy"] == 4.0  # evaluated with the restored weights
    assert len(res["loss_curve"]["loss"]) == 7
    # Resuming the stopped run's checkpoint trains nothing more.
    (tmp_path / "mnist/v/sgd/seed0/result.json").unlink()
    again = execute_run(spec, RunOptions(logdir=str(tmp_path), quiet=True, resume=True))
    assert again["early_stopping"]["stopped_epoch"] == 7 and len(again["history"]["val/loss"]) == 7


# ----------------------------------------------------------------------------- config, CLI


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("dropout=-0.1", "dropout"),
        ("dropout=1", "dropout"),
        ("init=glorot", "init"),
        ("norm=group", "norm"),
        ("early_stopping=0", "early_stopping"),
        ("val_split=1.5", "val_split"),
        ("val_split=0", "val_split"),
        ("l2=-1", "l2"),
        ("l1=abc", "l1"),
        ("clip_grad_norm=0", "clip_grad_norm"),
        ("hidden=[32,0]", "hidden"),
        ("scheduler=NoSuchLR", "scheduler"),
        ("scheduler={name: StepLR}", "scheduler"),  # StepLR needs step_size
    ],
)
def test_bad_values_exit_2_naming_the_key(
    setting: str, key: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["mnist", "--set", setting, "--logdir", str(tmp_path / "runs")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {key}:" in err, err
    assert not (tmp_path / "runs").exists()


def test_karate_bad_patience_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["karate", "--set", "early_stopping=0", "--logdir", str(tmp_path)]) == 2
    assert "early_stopping:" in capsys.readouterr().err


def test_yaml_exponent_strings_are_numbers() -> None:
    args = cli.build_parser().parse_args(["mnist", "--set", "l1=1e-4", "--set", "l2=5e-3"])
    (cfg,) = cli.build_configs(args)
    assert cfg["l1"] == 1e-4 and cfg["l2"] == 5e-3


def test_dataset_accepts_torchvision_spelling() -> None:
    args = cli.build_parser().parse_args(["mnist", "--dataset", "FashionMNIST"])
    assert cli.build_configs(args)[0]["dataset"] == "fashionmnist"
    args = cli.build_parser().parse_args(["mnist", "--set", "dataset=Fashion-MNIST"])
    assert cli.build_configs(args)[0]["dataset"] == "fashionmnist"


def test_options_reach_the_spec_and_distinct_run_ids() -> None:
    args = cli.build_parser().parse_args(
        ["mnist", "--config", str(PRESETS / "mnist_deep.yaml"), "--set", "norm=batch"]
    )
    (cfg,) = cli.build_configs(args)
    specs = mnist.expand(cfg)
    assert specs[0]["hidden"] == [32] * 12 and specs[0]["norm"] == "batch"
    assert specs[0]["variant"] == "mnist-minibatch-normbatch"
    paper = mnist.expand(validate(default_config("mnist")))
    assert not any(k in paper[0] for k in ("init", "norm", "dropout"))  # paper specs unchanged


def test_scheduler_steps_per_epoch(synth: str) -> None:
    spec = _mnist_spec(scheduler={"name": "StepLR", "step_size": 1, "gamma": 0.5}, lr=0.1)
    task = mnist.MnistTask(spec, torch.device("cpu"), synth)
    m = task.train_epoch(1, torch.zeros(task.steps_per_epoch), lambda *_: None)
    m.update(task.evaluate())
    assert task.end_epoch(1, m)["lr"] == pytest.approx(0.05)
    assert task.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_karate_takes_init_dropout_penalties_clipping_and_early_stopping(tmp_path: Path) -> None:
    cfg = merge(
        default_config("karate"),
        {
            "models": ["gcn"], "optimizers": ["adam"], "seeds": [0], "epochs": 30,
            "init": "kaiming_normal", "dropout": 0.3, "l2": 1e-3, "clip_grad_norm": 1.0,
            "early_stopping": 2,
        },
    )  # fmt: skip
    (spec,) = karate.expand(validate(cfg))
    task = karate.KarateTask(spec, torch.device("cpu"), None)
    assert task.model.dropout.p == 0.3
    assert torch.all(task.model.conv1.bias == 0)  # non-default init zeroes biases
    res = execute_run(spec, RunOptions(logdir=str(tmp_path), quiet=True))
    stopped = res["early_stopping"]["stopped_epoch"]
    assert stopped is not None and len(res["history"]["val/loss"]) == stopped < 30
    assert "train/param_grad_norm/conv1.lin.weight" in res["history"]


def test_cli_logs_grad_norm_scalars_histograms_and_hparams(synth: str, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHOPT_SURVEY")}
    env.update(
        TORCHOPT_SURVEY_DATA=synth,
        TORCHOPT_SURVEY_CACHE=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    argv = [
        sys.executable, "-m", "torchopt_survey.experiments", "mnist", "--quiet",
        "--optimizers", "sgd", "--regimes", "minibatch", "--epochs", "2",
        "--set", "hidden=[8,8]", "--set", "init=xavier_normal", "--set", "norm=layer",
        "--set", "name=t", "--logdir", str(tmp_path / "runs"),
    ]  # fmt: skip
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs/mnist/mnist-minibatch-t/sgd/seed0"
    acc = EventAccumulator(str(run), size_guidance={"histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/param_grad_norm/0.weight", "train/param_grad_norm/1.weight",
            "train/param_grad_norm/6.weight"} <= set(
        tags["scalars"]
    )
    assert "grad/0.weight" in tags["histograms"]
    assert [e.step for e in acc.Histograms("grad/0.weight")] == [1, 2]
    from tensorboard.plugins.hparams import plugin_data_pb2

    raw = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(raw).session_start_info.hparams
    assert hp["init"].string_value == "xavier_normal" and hp["norm"].string_value == "layer"
    assert hp["dropout"].number_value == 0.0


# ----------------------------------------------------------------------------- report section


def _fake_run(
    seed: int, grads: list[float], acc: float, train_acc: float | None = None, **opts: Any
) -> dict[str, Any]:
    spec = {
        "experiment": "mnist", "variant": "v-" + "-".join(f"{k}{v}" for k, v in opts.items()),
        "dataset": "mnist", "regime": "minibatch", "optimizer": "sgd", "seed": seed,
        "optimizer_kwargs": {"lr": 0.05}, "epochs": 2, "hidden": [4, 4], "activation": "tanh",
        "train_subset": 100, "name": "x", **opts,
    }  # fmt: skip
    from torchopt_survey.experiments.report.techniques import linear_weight_names

    names = linear_weight_names(spec)
    history = {f"train/param_grad_norm/{n}": [g, g] for n, g in zip(names, grads, strict=True)}
    history.update({"test/accuracy": [acc, acc], "train/loss_epoch": [1.0, 0.5]})
    final = {"test/accuracy": acc}
    if train_acc is not None:
        spec["eval_train"] = True
        history["train/accuracy"] = [train_acc, train_acc]
        final["train/accuracy"] = train_acc
    lc = {"step": [1, 2], "loss": [1.0, 0.5], "steps_per_epoch": 1}
    return {"spec": spec, "history": history, "final": final, "loss_curve": lc, "run_id": "r",
            "wall_time_s": 1.0}  # fmt: skip


def test_report_pairs_runs_and_gives_verdicts(tmp_path: Path) -> None:
    from torchopt_survey.experiments.report import techniques as rt
    from torchopt_survey.experiments.report import write_report
    from torchopt_survey.experiments.runtime.files import save_json

    runs = []
    for s in range(3):
        e = 0.01 * s
        runs.append(_fake_run(s, [1e-6 + e * 1e-6, 1e-3, 1e-1], 0.10 + e))  # vanishing baseline
        runs.append(_fake_run(s, [0.5 + e, 0.6, 0.7], 0.80 + e, init="xavier_normal"))
        runs.append(_fake_run(s, [1e-6 + e * 1e-6, 1e-3, 1e-1], 0.10 + e, norm="layer"))
    for s in range(3):  # overfitting set-up (train accuracy measured)
        e = 0.01 * s
        runs.append(_fake_run(s, [1, 1, 1], 0.80 + e, 1.0))
        runs.append(_fake_run(s, [1, 1, 1], 0.85 + e, 0.90, dropout=0.5))
        runs.append(_fake_run(s, [1, 1, 1], 0.70 + e, 0.80, l2=0.1))
    md = rt.claims_markdown(runs)
    assert "alleviate the vanishing gradient problem | **confirmed** | 1 |" in md
    assert (
        "batch and layer normalisation help against vanishing and exploding gradients | **refuted**"
        in md
    )
    assert "§V.C: dropout reduces overfitting | **confirmed**" in md
    assert (
        "§V.C: L1 and L2 regularisation reduce overfitting | **mixed**" in md
    )  # gap down, acc down
    assert "§V.C: early stopping reduces overfitting | not run" in md
    assert rt.improved([0.1, 0.2, float("nan")], [0.3, 0.4, 0.5], higher=True) == (
        True,
        "all seeds separated",
    )
    for i, r in enumerate(runs):
        save_json(tmp_path / "runs" / f"r{i}" / "result.json", r)
    paths = write_report(tmp_path / "runs", tmp_path / "out")
    names = {p.name for p in paths}
    assert {
        "fig_grad_norm_by_depth.png",
        "fig_grad_training_loss.png",
        "fig_overfitting.png",
    } <= names
    assert "results.csv" not in names  # no first-survey runs here
    assert "Xavier" in (tmp_path / "out" / "claims.md").read_text()
