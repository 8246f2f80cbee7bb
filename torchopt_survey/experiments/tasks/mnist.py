"""MNIST-format classification with the survey's 784-500-10 MLP, trained from device tensors."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from ...compiled import CompiledStep, compile_step
from ...optim import SurveyOptimizer
from ..runtime.distributed import DistContext, all_reduce_sum, wrap_ddp
from .closure_step import closure_step, needs_closure, refuse_closure_optimizers
from .data import DATASETS, ImageData, load_image_dataset
from .models import ACTIVATIONS, build_mlp
from .optimizers import (
    SECOND_ORDER_NAMES,
    build_optimizer,
    optimizer_hparams,
    resolve_optimizer_names,
)
from .protocol import Claim, Figures, ModelOptimizerState, Overview, ReportMetric, SweepMetric
from .schema import COMMON, check_choice, check_int
from .spec import RunSpec
from .techniques import (
    COMMON_OPTIONS,
    MODEL_OPTIONS,
    TechniqueHooks,
    TechniqueOptions,
    Techniques,
    attach_step_in_backward,
    check_hidden,
    init_weights,
    optimizer_arguments,
    scheduler_entry,
    technique_defaults,
    technique_spec,
    val_split_indices,
    variant_suffix,
)
from .techniques import hparams as technique_hparams

NAME = "mnist"

#: the §V technique options this task takes: every one (it implements the model ones)
TECHNIQUE_OPTIONS = (*COMMON_OPTIONS, *MODEL_OPTIONS)

#: the paper's configuration of this task (``--config``, ``--set`` and flags override it)
DEFAULTS: dict[str, Any] = {
    **COMMON,
    "experiment": NAME,
    "dataset": "mnist",
    "hidden": 500,
    "activation": "linear",
    "train_subset": None,
    "test_subset": None,
    "eval_batch_size": 10000,
    # the compiled training step (torchopt_survey.compile_step): "auto" where it was measured
    # to win (CPU, batches smaller than the training set), true wherever the run allows it,
    # false: eager everywhere
    "compile": "auto",
    # Regimes of the first survey, all with the same optimizer options: batch_size "full" is
    # full-batch gradient descent (one step per epoch).
    "regimes": {
        "gd": {"batch_size": "full", "optimizers": ["sgd"]},
        "sgd": {"batch_size": 1, "optimizers": ["sgd"], "log_every": 100},
        "minibatch": {"batch_size": 64, "optimizers": ["all"]},
    },
    # §V techniques (init, norm, dropout, l1/l2, clipping, val_split/early_stopping, ...).
    **technique_defaults(TECHNIQUE_OPTIONS),
}

# Keys a regime may set; missing ones fall back to the top level.
REGIME_KEYS = ("batch_size", "optimizers", "epochs", "log_every", "lr")


def validate_config(cfg: dict[str, Any]) -> None:
    """Check (and normalise in place) this task's own keys of a config."""
    # torchvision's spelling too: FashionMNIST, Fashion-MNIST, KMNIST ...
    dataset = str(cfg["dataset"]).lower().replace("-", "").replace("_", "")
    check_choice("dataset", dataset, tuple(DATASETS))
    cfg["dataset"] = dataset
    check_choice("activation", cfg["activation"], tuple(ACTIVATIONS))
    check_hidden(cfg["hidden"])
    check_int(cfg, "eval_batch_size")
    for key in ("train_subset", "test_subset"):
        if cfg[key] is not None:
            check_int(cfg, key)
    if not (isinstance(cfg["compile"], bool) or cfg["compile"] == "auto"):
        raise ValueError(f"compile: expected auto, true or false, got {cfg['compile']!r}")
    if cfg["compile"] is True and cfg["step_in_backward"]:
        raise ValueError("compile: the compiled step cannot run the update inside backward "
                         "(step_in_backward=true); set compile=false or compile=auto")
    regimes = cfg["regimes"]
    if not isinstance(regimes, dict) or not regimes:
        raise ValueError("regimes: expected a non-empty mapping {name: {batch_size: ...}}")
    for rname, spec in regimes.items():
        if not isinstance(spec, dict):
            raise ValueError(f"regimes.{rname}: expected a mapping with keys {REGIME_KEYS}")
        for k in spec:
            if k not in REGIME_KEYS:
                raise ValueError(
                    f"config: unknown key 'regimes.{rname}.{k}'; valid keys: "
                    + ", ".join(REGIME_KEYS)
                )
        bs = spec.get("batch_size", 64)
        if bs != "full" and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
            raise ValueError(
                f"regimes.{rname}.batch_size: expected a positive integer or 'full', got {bs!r}"
            )
        spec["batch_size"] = bs
        spec["optimizers"] = resolve_optimizer_names(spec.get("optimizers", cfg["optimizers"]))
        for k in ("epochs", "log_every"):
            if k in spec:
                check_int({k: spec[k]}, k)


_DATA_CACHE: dict[tuple[Any, ...], ImageData] = {}

# Schedulers that change momentum every step: a compiled step would compile each new value.
_CYCLING_MOMENTUM = ("OneCycleLR", "CyclicLR")


def compile_why_not(spec: dict[str, Any], device: torch.device, full_batch: bool,
                    opts: TechniqueOptions) -> str | None:
    """Why the run of ``spec`` trains with the eager step (None: with the compiled one).
    ``compile=true`` compiles wherever the run allows it; ``auto`` only where the compiled
    step was measured to win: CPU with batches smaller than the training set."""
    mode = spec["compile"]
    if mode is False:
        return "compile=false"
    if spec["optimizer"] in SECOND_ORDER_NAMES:
        return "closure-based optimizer (several loss evaluations per step)"
    if opts.step_in_backward:
        return "step_in_backward (the update runs inside the eager backward)"
    if opts.state_dtype is not None:
        return "state_dtype (compact state is updated by the eager step)"
    if opts.l1 or opts.l2:
        return "l1/l2 penalty (the eager step adds it to the loss)"
    if opts.clip_grad_norm is not None or opts.clip_grad_value is not None:
        return "gradient clipping (between backward and the update)"
    if opts.dropout:
        return "dropout (the compiled step draws another random stream)"
    entry = scheduler_entry(opts.scheduler)
    if entry and entry[0] in _CYCLING_MOMENTUM and entry[1].get("cycle_momentum", True):
        return f"{entry[0]} cycles momentum (a compiled constant)"
    if mode == "auto" and full_batch:
        return "full batch (compiling was measured to gain nothing; compile=true forces it)"
    if mode == "auto" and device.type != "cpu":
        return f"{device.type} (not measured to win there; compile=true forces it)"
    return None


def get_data(spec: dict[str, Any], data_dir: str | None, device: torch.device) -> ImageData:
    """Load (once per process) the dataset a run spec asks for."""
    key = (spec["dataset"], data_dir, str(device), spec["train_subset"], spec["test_subset"])
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_image_dataset(
            spec["dataset"], data_dir, device, spec["train_subset"], spec["test_subset"]
        )
    return _DATA_CACHE[key]


def expand(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One run spec per (regime, optimizer, seed) of a validated MNIST config."""
    specs = []
    for regime, rspec in cfg["regimes"].items():
        for opt in rspec["optimizers"]:
            overrides = dict(cfg["optimizer_kwargs"].get(opt, {}))
            if cfg["fused"]:
                overrides["fused"] = True
            lr = rspec.get("lr", cfg["lr"])
            if lr is not None:
                overrides["lr"] = lr
            for seed in cfg["seeds"]:
                specs.append(
                    {
                        "experiment": NAME,
                        "variant": f"{cfg['dataset']}-{regime}{variant_suffix(cfg)}",
                        "dataset": cfg["dataset"],
                        "regime": regime,
                        "batch_size": rspec["batch_size"],
                        "optimizer": opt,
                        "optimizer_kwargs": optimizer_hparams(opt, overrides),
                        "seed": seed,
                        "epochs": rspec.get("epochs", cfg["epochs"]),
                        "log_every": rspec.get("log_every", 1),
                        "hidden": cfg["hidden"],
                        "activation": cfg["activation"],
                        "train_subset": cfg["train_subset"],
                        "test_subset": cfg["test_subset"],
                        "eval_batch_size": cfg["eval_batch_size"],
                        "compile": cfg["compile"],
                        # Only the technique options that differ from their defaults.
                        **technique_spec(cfg),
                    }
                )
    return specs


class MnistTask(TechniqueHooks, ModelOptimizerState):
    """One training run: model, optimizer and the epoch loop over in-memory tensors."""

    sweep_metric = SweepMetric("accuracy", "accuracy", target=0.90, description="MNIST accuracy")
    figures = Figures((("train/loss", "training loss"), ("test/accuracy", "test accuracy")),
                      names={"mnist-minibatch": "fig2_mnist_optimizers.png"})
    report_metrics = (ReportMetric("test_accuracy", "test/accuracy", "test acc"),)
    claims = (
        Claim("Adagrad/AMSGrad/Adam beat Momentum/NAG/RMSProp on MNIST",
              ("adagrad", "amsgrad", "adam"), ("momentum", "nag", "rmsprop"),
              (("final_test_accuracy", "final test accuracy"),), variant_suffix="-minibatch",
              sweep_text="Adagrad/AMSGrad/Adam beat Momentum/NAG/RMSProp"),
    )

    def __init__(self, spec: dict[str, Any], device: torch.device, data_dir: str | None) -> None:
        self.spec = spec
        self.opts = TechniqueOptions.of(spec)
        self.device = device
        self.data = get_data(spec, data_dir, device)
        self._split_and_scale()
        n = self.x_train.shape[0]
        bs = spec["batch_size"]
        self.batch_size = n if bs == "full" or bs >= n else int(bs)
        self.steps_per_epoch = math.ceil(n / self.batch_size)
        torch.manual_seed(spec["seed"])
        opts = self.opts
        self.model = build_mlp(
            self.data.num_features,
            spec["hidden"],
            self.data.num_classes,
            spec["activation"],
            opts.norm,
            float(opts.dropout),
        )
        init_weights(
            self.model, opts.init, spec["activation"], float(opts.init_gain)
        )
        self.model.to(device)
        self.optimizer = build_optimizer(
            spec["optimizer"], self.model.parameters(), optimizer_arguments(spec)
        )
        self.tech = Techniques(spec, self.model, self.optimizer)
        self.in_backward = attach_step_in_backward(spec, self.model, self.optimizer)
        self._forward: torch.nn.Module = self.model
        #: the compiled training step, or None (eager) with the reason in ``compile_why_not``
        self.compiled: CompiledStep | None = None
        self.compile_why_not = compile_why_not(spec, device, self.batch_size >= n, self.opts)
        if self.compile_why_not is None and isinstance(self.optimizer, SurveyOptimizer):
            try:
                self.compiled = compile_step(self.model, F.cross_entropy, self.optimizer,
                                             grad_norms=self.tech.tracker is not None)
            except (TypeError, ValueError) as exc:  # what the step cannot hold (e.g. buffers)
                self.compile_why_not = str(exc)
        self._norm_order: list[int] | None = None  # compiled norms -> the tracker's order
        if self.compiled is not None and self.tech.tracker is not None:
            names = self.compiled.parameter_names
            order = [names.index(n) for n, _ in self.tech.tracker.named]
            self._norm_order = None if order == list(range(len(names))) else order
        self.dist: DistContext | None = None  # set by distribute() under torchrun

    @staticmethod
    def check_data(cfg: dict[str, Any], data_dir: str | None) -> None:
        """Read the dataset's files once (missing or corrupt: :class:`DataError`)."""
        load_image_dataset(cfg["dataset"], data_dir, "cpu", 1, 1)

    @staticmethod
    def expected_cost(spec: dict[str, Any]) -> float:
        """Rough relative cost of a run: its steps plus a pass over the data per epoch
        (single-sample SGD's 600,000 steps dwarf the rest)."""
        n = spec["train_subset"] or 60000
        bs = n if spec["batch_size"] == "full" else min(int(spec["batch_size"]), n)
        steps = -(-n // bs)
        return spec["epochs"] * (steps * 0.25e-3 + n * 0.02e-3)

    def distribute(self, ctx: DistContext) -> None:
        """Train under DDP as one rank of ``ctx`` (see distributed.py): the steps shard each
        global batch; evaluation and checkpoints keep using the plain ``self.model``."""
        refuse_closure_optimizers(self.optimizer, self.spec["optimizer"])
        if self.in_backward is not None:
            raise ValueError("step_in_backward: not under DDP (the update would use this rank's "
                             "unreduced gradient); set step_in_backward=false")
        self.dist = ctx
        if self.compiled is not None:
            self.compiled, self.compile_why_not = None, "DDP (torchrun) runs the eager step"
        self._forward = wrap_ddp(self.model, self.device)

    def hparams(self) -> dict[str, Any]:
        s = self.spec
        hp = {"optimizer": s["optimizer"], "lr": s["optimizer_kwargs"].get("lr"),
              "seed": s["seed"], "regime": s["regime"]}  # (first in the HParams dashboard)
        hp.update({k: s[k] for k in ("dataset", "epochs", "activation")})
        hp["batch_size"] = self.batch_size
        hp.update({f"opt/{k}": v for k, v in s["optimizer_kwargs"].items()})
        hp["hidden"] = str(s["hidden"])
        hp.update(technique_hparams(s, TECHNIQUE_OPTIONS))
        hp["compile"] = str(s["compile"])
        hp["compiled"] = self.compiled is not None
        hp["compile_why_not"] = self.compile_why_not or ""
        return hp

    def finish(self) -> dict[str, Any]:
        out = super().finish()
        cs = self.compiled
        out["compile"] = {
            "compiled": cs is not None, "why_not": self.compile_why_not,
            "programs": cs.compilations if cs else 0,
            "compile_seconds": cs.compile_seconds if cs else 0.0,
            "eager_steps": cs.eager_steps if cs else None,
        }
        return out

    def hparam_metrics(self) -> list[str]:
        """The metric tags the HParams dashboard shows beside each run's hyperparameters."""
        tags = ["test/accuracy", "train/loss_epoch"]
        return tags + ["val/accuracy"] if self.x_val is not None else tags

    def _split_and_scale(self) -> None:
        """Training/validation tensors (seeded split of the training set) and, with
        ``normalize_inputs``, standardisation by the training part's pixel mean and std."""
        d = self.data
        self.x_train, self.y_train = d.x_train, d.y_train
        self.x_val: torch.Tensor | None = None
        self.y_val: torch.Tensor | None = None
        frac = self.opts.val_split
        if frac is not None:
            tr, va = val_split_indices(d.x_train.shape[0], float(frac), self.spec["seed"])
            tr, va = tr.to(d.x_train.device), va.to(d.x_train.device)
            self.x_train, self.y_train = d.x_train[tr], d.y_train[tr]
            self.x_val, self.y_val = d.x_train[va], d.y_train[va]
        self.x_test = d.x_test
        if self.opts.normalize_inputs:
            mean, std = self.x_train.mean(), self.x_train.std()
            self.x_train = (self.x_train - mean) / std
            self.x_test = (self.x_test - mean) / std
            if self.x_val is not None:
                self.x_val = (self.x_val - mean) / std

    # -- training
    def _compiled_step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        cs = self.compiled
        if cs is None:  # (fell back to eager this epoch)
            return self._step(xb, yb)
        try:
            loss = cs(xb, yb)
        except Exception as exc:  # noqa: BLE001 -- auto falls back: e.g. no C compiler
            if self.spec["compile"] != "auto" or cs.compilations:
                raise
            # (the program failed to build before it ran: nothing was updated)
            self.compiled, self.compile_why_not = None, f"compilation failed: {exc}"[:300]
            return self._step(xb, yb)
        tracker = self.tech.tracker
        if tracker is not None and cs.grad_norms is not None:
            norms = cs.grad_norms
            tracker.record_norms(norms if self._norm_order is None else norms[self._norm_order])
        return loss

    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.tech.loss(F.cross_entropy(self._forward(xb), yb))
        loss.backward()
        self.tech.after_backward()
        self.optimizer.step()
        return loss.detach()

    def _dist_step(self, xb: torch.Tensor, yb: torch.Tensor, global_n: int) -> torch.Tensor:
        """One step on this rank's shard ``xb`` of a global batch of ``global_n`` samples."""
        assert self.dist is not None
        w = self.dist.world_size
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients over w: a shard's loss *sum* times w / global_n
        # makes that average the gradient of the global batch's mean loss (uneven or empty
        # shards included), as in one process.
        data = F.cross_entropy(self._forward(xb), yb, reduction="sum") * (w / global_n)
        loss = self.tech.loss(data)
        loss.backward()
        self.tech.after_backward()
        self.optimizer.step()
        # Summed over the ranks at the end of the epoch: the one-process loss (penalty once).
        return loss.detach() / w

    def train_epoch(
        self, epoch: int, losses: torch.Tensor, progress: Callable[[int, float], None]
    ) -> dict[str, float]:
        """Run one epoch; writes each step's loss into ``losses`` (a CPU view of length
        ``steps_per_epoch``) and calls ``progress(steps_done, last_loss)`` now and then."""
        x, y = self.x_train, self.y_train
        n, bs = x.shape[0], self.batch_size
        self.model.train()
        if needs_closure(self.optimizer):  # second-order methods (issue #8)
            return self._closure_epoch(losses, progress)
        # A fresh generator per (seed, epoch) makes the shuffle independent of how the run got
        # here, so a resumed run sees exactly the batches of an uninterrupted one.
        gen = torch.Generator().manual_seed(self.spec["seed"] * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen).to(self.device) if bs < n else None
        # Losses stay on the device until the epoch ends: no host sync per step.
        buf = torch.empty(self.steps_per_epoch, device=self.device)
        every = max(1, self.steps_per_epoch // 50)
        step = self._step if self.compiled is None else self._compiled_step
        if self.dist is not None:
            return self._train_epoch_sharded(perm, buf, every, losses, progress)
        last = self.steps_per_epoch - 1
        for i in range(self.steps_per_epoch):
            if perm is None:
                xb, yb = x, y  # full batch: order does not matter for the mean loss
            else:
                # Gathering one batch per step is cheaper than permuting the whole 188 MB set
                # each epoch (that costs ~0.13 ms/step in page faults and copies here).
                idx = perm[i * bs : (i + 1) * bs]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if i == last and self.compiled is not None and self.tech.tracker is not None:
                # an eager step leaves the gradients in .grad: the epoch's histograms
                buf[i] = self.compiled.eager(xb, yb)
                self.tech.tracker.record()
            else:
                buf[i] = step(xb, yb)
            if (i + 1) % every == 0:
                progress(i + 1, float(buf[i]))
        losses.copy_(buf.cpu())
        return {"train/loss_epoch": float(losses.double().mean()), **self.tech.epoch_metrics()}

    def _closure_epoch(
        self, losses: torch.Tensor, progress: Callable[[int, float], None]
    ) -> dict[str, float]:
        """Closure-based optimizers: each step is one outer iteration over the batches of the
        epoch in order (full batch: one step per epoch, the regime they are meant for)."""
        x, y = self.x_train, self.y_train  # the training part (after val_split, normalised)
        bs = self.batch_size
        counters: dict[str, float] = {}
        for i in range(self.steps_per_epoch):
            xb, yb = x[i * bs : (i + 1) * bs], y[i * bs : (i + 1) * bs]

            def compute(
                xb: torch.Tensor = xb, yb: torch.Tensor = yb
            ) -> tuple[torch.Tensor, torch.Tensor]:
                out = self._forward(xb)
                return F.cross_entropy(out, yb), out

            loss, counters = closure_step(self.optimizer, compute)
            losses[i] = loss.cpu()
            progress(i + 1, float(losses[i]))
        return {"train/loss_epoch": float(losses.double().mean()), **counters}

    def _train_epoch_sharded(
        self,
        perm: torch.Tensor | None,
        buf: torch.Tensor,
        every: int,
        losses: torch.Tensor,
        progress: Callable[[int, float], None],
    ) -> dict[str, float]:
        """``train_epoch`` under DDP: the global batches of one process, each rank gathering
        only its contiguous shard of each."""
        assert self.dist is not None
        x, y = self.x_train, self.y_train
        n, bs, w = x.shape[0], self.batch_size, self.dist.world_size
        if perm is None:  # full batch: a fixed shard, sliced once
            a, b = self.dist.shard(n)
            xs, ys = x[a:b], y[a:b]
        for i in range(self.steps_per_epoch):
            if perm is None:
                buf[i] = self._dist_step(xs, ys, n)
            else:
                batch = perm[i * bs : (i + 1) * bs]  # the global batch (the last may be short)
                a, b = self.dist.shard(batch.numel())
                idx = batch[a:b]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
                buf[i] = self._dist_step(xb, yb, batch.numel())
            if (i + 1) % every == 0:
                progress(i + 1, float(buf[i]) * w)  # rank 0's shard, as an estimate
        # one collective per epoch, not per step: each step's loss summed over the ranks
        losses.copy_(all_reduce_sum(buf).cpu())
        return {"train/loss_epoch": float(losses.double().mean()), **self.tech.epoch_metrics()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        out = self._evaluate_set("test", self.x_test, self.data.y_test)
        if self.x_val is not None and self.y_val is not None:
            out.update(self._evaluate_set("val", self.x_val, self.y_val))
        if self.opts.eval_train:
            out.update(self._evaluate_set("train", self.x_train, self.y_train))
        return out

    @torch.no_grad()
    def _evaluate_set(self, name: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.model.eval()
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        step = self.spec["eval_batch_size"]
        for i in range(0, x.shape[0], step):
            out = self.model(x[i : i + step])
            loss_sum += F.cross_entropy(out, y[i : i + step], reduction="sum").double()
            correct += (out.argmax(1) == y[i : i + step]).sum()
        n = x.shape[0]
        return {f"{name}/accuracy": float(correct) / n, f"{name}/loss": float(loss_sum) / n}

def resume_as(stored: Any, spec: RunSpec) -> tuple[RunSpec, str] | None:
    """A checkpoint saved without the compiled step (``compile`` false, or absent as in 0.1)
    while today's spec says ``compile=auto``: the run continues eager, as it ran (the compiled
    step rounds differently), with ``compile=false`` in its spec from then on."""
    if not isinstance(stored, Mapping) or spec.settings.get("compile") != "auto" \
            or stored.get("compile", False) is not False:
        return None
    as_ran = spec.with_settings(compile=False)
    if as_ran != {**stored, "compile": False}:
        return None
    why = "absent" if "compile" not in stored else "false"
    return as_ran, (f"saved with compile {why} (eager, as 0.1 ran): resumed eager, as it ran "
                    "(compile=false; today's default compile=auto would round differently)")


# ----------------------------------------------------------------------------- its report

#: Fig. 1 of the paper: plain SGD in the three regimes, one figure per dataset
_REGIMES = (("gd", "GD (full batch)"), ("sgd", "SGD (batch 1)"), ("minibatch", "MBGD"))


def _regime_figures(variants: Sequence[str]) -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    out = []
    for ds in sorted({v.rsplit("-", 1)[0] for v in variants}):
        name = "fig1_mnist_regimes.png" if ds == "mnist" else f"fig1_{ds}_regimes.png"
        out.append((name, f"{ds}: gradient descent regimes (SGD optimizer)",
                    [(label, f"{ds}-{regime}", "sgd") for regime, label in _REGIMES]))
    return out


OVERVIEW = Overview(
    _regime_figures,
    covers=lambda variant, optimizers: (variant.rsplit("-", 1)[1] in ("gd", "sgd")
                                        and list(optimizers) == ["sgd"]),
)

#: why the report's second-order section has no Newton runs of this task
NO_NEWTON = "Newton cannot run: 397,510 parameters need a 632 GB Hessian (float32)"


def weight_names(spec: dict[str, Any]) -> list[str]:
    """Parameter names of the MLP's Linear weights, input layer first (depth order)."""
    model = build_mlp(784, spec["hidden"], 10, spec["activation"], spec.get("norm", "none"),
                      float(spec.get("dropout", 0.0)))
    return [f"{i}.weight" for i, m in enumerate(model) if isinstance(m, torch.nn.Linear)]


# ----------------------------------------------------------------------------- its CLI

HELP = "the MNIST MLP in the paper's three regimes (GD, SGD, mini-batch), every optimizer"


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of this task's commands (``mnist``, ``all``, ``sweep``)."""
    g = p.add_argument_group("mnist")
    g.add_argument(
        "--dataset",
        choices=tuple(DATASETS),
        # torchvision's class names work too (FashionMNIST, KMNIST), in any case.
        type=lambda s: s.lower().replace("-", "").replace("_", ""),
        help="MNIST-format torchvision dataset (default mnist; FashionMNIST spelling works too)",
    )
    g.add_argument(
        "--regimes",
        nargs="+",
        metavar="NAME",
        help="subset of the config's regimes (paper: gd = full batch, sgd = batch 1, "
        "minibatch = 64)",
    )
    g.add_argument(
        "--activation",
        choices=tuple(ACTIVATIONS),
        help="hidden activation (paper: linear, which makes the MLP a linear classifier)",
    )
    g.add_argument("--train-subset", type=int, metavar="N", help="use the first N training images")
    g.add_argument("--test-subset", type=int, metavar="N", help="use the first N test images")


def apply_flags(args: argparse.Namespace, cfg: dict[str, Any], upd: dict[str, Any],
                ) -> dict[str, Any]:
    """Put this task's flags into ``upd``; returns ``cfg`` to merge it into (the regime table
    is replaced, not merged). Flags apply to every regime, over per-regime config values."""
    for key in ("dataset", "activation", "train_subset", "test_subset"):
        if getattr(args, key, None) is not None:
            upd[key] = getattr(args, key)
    regimes = dict(cfg["regimes"])
    chosen = getattr(args, "regimes", None)
    if chosen:
        unknown = [r for r in chosen if r not in regimes]
        if unknown:
            raise ValueError(
                f"--regimes: unknown regime {unknown[0]!r}; valid choices: {', '.join(regimes)}"
            )
        regimes = {r: regimes[r] for r in chosen}
    for r, spec in regimes.items():
        spec = dict(spec)
        if args.optimizers:
            spec["optimizers"] = list(args.optimizers)
        if args.epochs is not None:
            spec.pop("epochs", None)
        if getattr(args, "lr", None) is not None:
            spec.pop("lr", None)
        regimes[r] = spec
    upd["regimes"] = regimes
    return {**cfg, "regimes": {}}


#: default validation fraction of an MNIST sweep (10,000 of the 60,000 training images; the
#: paper has no validation split)
SWEEP_VAL_SPLIT = 1 / 6


def sweep_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The sweep's protocol: the mini-batch-64 regime unless ``--regimes`` says otherwise."""
    return {} if getattr(args, "regimes", None) else {"regimes": ["minibatch"]}


def prepare_sweep(cfg: dict[str, Any], val_split: float | None) -> dict[str, Any]:
    """A sweep selects on validation: a seeded ``val_split`` per run (1/6 by default)."""
    if val_split is not None:
        return {**cfg, "val_split": val_split}
    return cfg if cfg.get("val_split") is not None else {**cfg, "val_split": SWEEP_VAL_SPLIT}


def optimizers_of(cfg: dict[str, Any]) -> list[str]:
    """Every optimizer a validated config runs (over its regimes)."""
    return [o for r in cfg["regimes"].values() for o in r["optimizers"]]
