"""A task of the public :class:`.protocol.Task` protocol, trained by the harness.

:func:`load_task` imports ``package.module:Class`` and checks it against the protocol before any
run starts (ValueError naming the task and the problem: the CLI's exit 2). :class:`TaskRun`
trains one run of it (the loop every built-in task has: seeded mini-batch order, full-batch
closures for the second-order methods, DDP sharding under torchrun, the §V techniques that
apply to any model), :class:`StackedTaskRun` several runs as one program (torch.func stacked
replicas), and :class:`CustomConfig` is its configuration: defaults, validation, run specs.
"""

from __future__ import annotations

import copy
import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import vmap

from ..runtime.distributed import DistContext, all_reduce_sum, wrap_ddp
from .closure_step import closure_step, needs_closure, refuse_closure_optimizers
from .optimizers import SECOND_ORDER_NAMES, build_optimizer, optimizer_hparams
from .protocol import (
    Capabilities,
    Defaults,
    Figures,
    Metric,
    ModelOptimizerState,
    ReportMetric,
    SweepMetric,
    Task,
    TaskData,
)
from .schema import validate_common
from .stacking import StackedReplicas
from .stacking import group_key as stacked_group_key
from .techniques import (
    COMMON_DEFAULTS,
    TechniqueHooks,
    Techniques,
    technique_spec,
    validate_techniques,
    variant_suffix,
)
from .techniques import hparams as technique_hparams

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _problem(path: str, name: str | None, text: str) -> ValueError:
    label = f"task {name!r} ({path})" if name else f"task {path}"
    return ValueError(f"{label}: {text}")


def load_task(path: str) -> Task:
    """Import and instantiate the task at ``package.module:Class`` and check its contract:
    the attributes of :class:`.protocol.Task`, a model whose output fits the loss and the
    metrics on a few examples, and the selected metric among them."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise _problem(path, None, "expected a module path 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import error is the task's problem, stated before any run
        raise _problem(path, None, f"module {module_name!r} does not import "
                       f"({type(exc).__name__}: {exc})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise _problem(path, None, f"module {module_name!r} has no {attr!r}")
    try:
        task = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        raise _problem(path, None, f"{attr}() raised {type(exc).__name__}: {exc}") from None
    name = getattr(task, "name", None)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _problem(path, None, f"name: expected an identifier (letters, digits, _), got "
                       f"{name!r}")
    missing = [a for a in ("metrics", "select", "defaults", "capabilities", "data", "model",
                           "loss") if not hasattr(task, a)]
    if missing:
        raise _problem(path, name, f"missing {', '.join(missing)} (see the Task protocol)")
    for attr_name, kind in (("defaults", Defaults), ("capabilities", Capabilities)):
        if not isinstance(getattr(task, attr_name), kind):
            raise _problem(path, name, f"{attr_name}: expected a {kind.__name__}, got "
                           f"{type(getattr(task, attr_name)).__name__}")
    metrics = list(task.metrics)
    if not metrics or not all(isinstance(m, Metric) for m in metrics):
        raise _problem(path, name, "metrics: expected a non-empty sequence of Metric")
    names = [m.name for m in metrics]
    if "loss" in names or len(set(names)) != len(names):
        raise _problem(path, name, f"metrics: names must be unique and not 'loss', got {names}")
    if task.select not in names:
        raise _problem(path, name, f"select: metric {task.select!r} is missing; the task's "
                       f"metrics: {', '.join(names)}")
    if not next(m for m in metrics if m.name == task.select).higher_is_better:
        raise _problem(path, name, f"select: metric {task.select!r} is lower-is-better; sweeps "
                       "and claims take the highest value as the best: select a metric where "
                       "higher is better (e.g. R² or a negated error)")
    return task


def check_contract(task: Task, path: str, device: torch.device) -> None:
    """Build the data and a model, and evaluate the loss and every metric on the first
    examples: what does not fit is stated (ValueError naming the task) before any run."""
    name = task.name
    try:
        data = task.data(device)
    except Exception as exc:
        raise _problem(path, name, f"data() raised {type(exc).__name__}: {exc}") from None
    if not isinstance(data, TaskData):
        raise _problem(path, name, f"data(): expected a TaskData, got {type(data).__name__}")
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or \
                x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise _problem(path, name, f"data(): x_{split} and y_{split} must be tensors with "
                           "the same, non-zero number of examples")
    torch.manual_seed(0)
    model = task.model(0)
    if not isinstance(model, nn.Module):
        raise _problem(path, name, f"model(): expected a torch.nn.Module, got "
                       f"{type(model).__name__}")
    model.to(device)
    x, y = data.x_train[:4], data.y_train[:4]
    try:
        out = model(x)
    except Exception as exc:
        raise _problem(path, name, f"model(x_train[:4]) raised {type(exc).__name__}: "
                       f"{exc}") from None
    try:
        loss = task.loss(out, y)
    except Exception as exc:
        raise _problem(path, name, f"the model's output {tuple(out.shape)} does not fit the "
                       f"loss with targets {tuple(y.shape)} ({type(exc).__name__}: {exc})"
                       ) from None
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.requires_grad:
        raise _problem(path, name, "loss(): expected a 0-d tensor that depends on the model's "
                       "parameters (the mean loss of a batch)")
    with torch.no_grad():
        for m in task.metrics:
            try:
                value = float(m.fn(out, y))
            except Exception as exc:
                raise _problem(path, name, f"metric {m.name!r} on the model's output "
                               f"{tuple(out.shape)}: {type(exc).__name__}: {exc}") from None
            del value  # (a number; it may be nan on four examples)


def _task_metrics(task: Task, out: torch.Tensor, y: torch.Tensor, split: str,
                  ) -> dict[str, float]:
    metrics = {f"{split}/loss": float(task.loss(out, y))}
    for m in task.metrics:
        metrics[f"{split}/{m.name}"] = float(m.fn(out, y))
    return metrics


class TaskRun(TechniqueHooks, ModelOptimizerState):
    """One run of a custom task: what :func:`..runs.single.execute_run` trains."""

    def __init__(self, task: Task, spec: Mapping[str, Any], device: torch.device) -> None:
        self.task, self.spec, self.device = task, spec, device
        self.data = task.data(device)
        n = self.data.x_train.shape[0]
        bs = spec["batch_size"]
        self.batch_size = n if bs is None or bs >= n else int(bs)
        self.steps_per_epoch = math.ceil(n / self.batch_size)
        torch.manual_seed(spec["seed"])
        self.model = task.model(spec["seed"]).to(device)
        self.optimizer = build_optimizer(spec["optimizer"], self.model.parameters(),
                                         spec["optimizer_kwargs"])
        self.tech = Techniques(spec, self.model, self.optimizer)
        self._forward: nn.Module = self.model
        self.dist: DistContext | None = None
        self.info = TaskRunInfo(task, spec, self.batch_size)

    def distribute(self, ctx: DistContext) -> None:
        """Train under DDP as one rank of ``ctx``: each global batch is sharded."""
        if not self.task.capabilities.torchrun_sharding:
            raise ValueError(f"task {self.task.name!r}: does not support torchrun sharding "
                             "(its capabilities); run it in one process")
        refuse_closure_optimizers(self.optimizer, self.spec["optimizer"])
        self.dist = ctx
        self._forward = wrap_ddp(self.model, self.device)

    def hparams(self) -> dict[str, Any]:
        return self.info.hparams()

    def hparam_metrics(self) -> list[str]:
        return self.info.hparam_metrics()

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        data_loss = self.task.loss(self._forward(xb), yb) if xb.shape[0] else \
            sum(p.sum() * 0.0 for p in self.model.parameters())  # an empty shard: no gradient
        loss = self.tech.loss(torch.as_tensor(data_loss) * scale)
        loss.backward()
        self.tech.after_backward()
        self.optimizer.step()
        return loss.detach()

    def train_epoch(self, epoch: int, losses: torch.Tensor,
                    progress: Callable[[int, float], None]) -> dict[str, float]:
        """One epoch in this seed's order (the same batches, resumed or not)."""
        x, y = self.data.x_train, self.data.y_train
        n, bs = x.shape[0], self.batch_size
        self.model.train()
        if needs_closure(self.optimizer):
            return self._closure_epoch(losses, progress)
        gen = torch.Generator().manual_seed(self.spec["seed"] * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen).to(self.device) if bs < n else None
        buf = torch.empty(self.steps_per_epoch, device=self.device)
        w = self.dist.world_size if self.dist is not None else 1
        for i in range(self.steps_per_epoch):
            idx = perm[i * bs : (i + 1) * bs] if perm is not None else \
                torch.arange(n, device=self.device)
            if self.dist is not None:
                # this rank's shard; the mean over it times (shard / global) * world makes
                # DDP's gradient average the gradient of the global batch's mean loss
                a, b = self.dist.shard(idx.numel())
                shard = idx[a:b]
                buf[i] = self._step(x[shard], y[shard], (b - a) * w / idx.numel()) / w
            else:
                buf[i] = self._step(x[idx], y[idx])
            progress(i + 1, float(buf[i]) * w)
        if self.dist is not None:
            all_reduce_sum(buf)
        losses.copy_(buf.cpu())
        return {"train/loss_epoch": float(losses.double().mean()), **self.tech.epoch_metrics()}

    def _closure_epoch(self, losses: torch.Tensor,
                       progress: Callable[[int, float], None]) -> dict[str, float]:
        """Closure-based optimizers: each step one outer iteration over a batch in order."""
        if not self.task.capabilities.full_batch_closures:
            raise ValueError(f"task {self.task.name!r}: does not support the closure-based "
                             f"second-order methods ({self.spec['optimizer']})")
        x, y, bs = self.data.x_train, self.data.y_train, self.batch_size
        counters: dict[str, float] = {}
        for i in range(self.steps_per_epoch):
            xb, yb = x[i * bs : (i + 1) * bs], y[i * bs : (i + 1) * bs]

            def compute(xb: torch.Tensor = xb, yb: torch.Tensor = yb,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
                out = self._forward(xb)
                return self.task.loss(out, yb), out

            loss, counters = closure_step(self.optimizer, compute)
            losses[i] = loss.cpu()
            progress(i + 1, float(losses[i]))
        return {"train/loss_epoch": float(losses.double().mean()), **counters}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        d = self.data
        return {**_task_metrics(self.task, self.model(d.x_val), d.y_val, "val"),
                **_task_metrics(self.task, self.model(d.x_test), d.y_test, "test")}


class StackedTaskRun(StackedReplicas):
    """Several runs of a custom task (one architecture, one optimizer) as one program."""

    def __init__(self, task: Task, specs: Sequence[Mapping[str, Any]],
                 device: torch.device) -> None:
        self.task, self.device = task, device
        self.data = task.data(device)
        models = []
        for spec in specs:  # each model exactly as its separate run builds it
            torch.manual_seed(spec["seed"])
            models.append(task.model(spec["seed"]).to(device))
        super().__init__(specs, models)
        n, bs = self.data.x_train.shape[0], specs[0]["batch_size"]
        self.batch_size = n if bs is None or bs >= n else int(bs)
        self.steps_per_epoch = math.ceil(n / self.batch_size)
        self.runs = [TaskRunInfo(task, spec, self.batch_size) for spec in specs]
        self._loss = vmap(task.loss)
        self._loss_shared = vmap(task.loss, in_dims=(0, None))

    def hparams(self, r: int) -> dict[str, Any]:
        return self.runs[r].hparams()

    def hparam_metrics(self) -> list[str]:
        return self.runs[0].hparam_metrics()

    def train_epoch(self, epoch: int) -> torch.Tensor:
        """One epoch for every replica, each in its own seed's order; the step losses
        [N, steps_per_epoch] (CPU)."""
        x, y = self.data.x_train, self.data.y_train
        n, bs = x.shape[0], self.batch_size
        self.skeleton.train()
        perms = None
        if bs < n:
            perms = torch.stack([
                torch.randperm(n, generator=torch.Generator().manual_seed(
                    s["seed"] * 1_000_003 + epoch)) for s in self.specs
            ]).to(self.device)
        buf = torch.empty(self.steps_per_epoch, self.n, device=self.device)
        for i in range(self.steps_per_epoch):
            self.optimizer.zero_grad(set_to_none=True)
            if perms is None:
                out = self.forward_shared(self.params, self.buffers, x)
                per = self._loss_shared(out, y)
            else:
                idx = perms[:, i * bs : (i + 1) * bs]
                out = self.forward(self.params, self.buffers, x[idx])
                per = self._loss(out, y[idx])
            per.sum().backward()  # replicas are independent: each gets its own gradient
            self.optimizer.step()
            buf[i] = per.detach()
        return buf.t().cpu()

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        self.skeleton.eval()
        d = self.data
        outs = {split: self.forward_shared(self.params, self.buffers, x)
                for split, x in (("val", d.x_val), ("test", d.x_test))}
        return [{**_task_metrics(self.task, outs["val"][r], d.y_val, "val"),
                 **_task_metrics(self.task, outs["test"][r], d.y_test, "test")}
                for r in range(self.n)]


class TaskRunInfo:
    """What a run logs about itself, without building it."""

    def __init__(self, task: Task, spec: Mapping[str, Any], batch_size: int) -> None:
        self.task, self.spec, self.batch_size = task, spec, batch_size

    def hparams(self) -> dict[str, Any]:
        s = self.spec
        hp: dict[str, Any] = {"optimizer": s["optimizer"], "lr": s["optimizer_kwargs"].get("lr"),
                              "seed": s["seed"], "task": s["experiment"], "epochs": s["epochs"],
                              "batch_size": self.batch_size}
        hp.update({f"opt/{k}": v for k, v in s["optimizer_kwargs"].items()})
        hp.update(technique_hparams(s))
        return hp

    def hparam_metrics(self) -> list[str]:
        return [f"test/{self.task.select}", f"val/{self.task.select}", "train/loss_epoch"]


class CustomConfig:
    """A custom task's configuration: defaults, validation, run specs, and the hooks the
    registry needs."""

    def __init__(self, task: Task, path: str) -> None:
        self.task, self.path = task, path
        self._checked = False

    # -- config
    def default_config(self) -> dict[str, Any]:
        d = self.task.defaults
        return {"experiment": self.task.name, "task": self.path,
                "optimizers": list(d.optimizers), "seeds": list(d.seeds), "epochs": d.epochs,
                "lr": d.lr, "batch_size": d.batch_size, "optimizer_kwargs": {},
                "deterministic": True, "fused": False, **copy.deepcopy(COMMON_DEFAULTS)}

    def validate(self, cfg: dict[str, Any]) -> dict[str, Any]:
        cfg = validate_common(cfg)
        bs = cfg["batch_size"]
        if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
            raise ValueError(f"batch_size: expected a positive integer or null, got {bs!r}")
        validate_techniques(cfg)
        return cfg

    def expand(self, cfg: dict[str, Any]) -> list[dict[str, Any]]:
        specs = []
        for opt in cfg["optimizers"]:
            overrides = dict(cfg["optimizer_kwargs"].get(opt, {}))
            if cfg["fused"]:
                overrides["fused"] = True
            if cfg["lr"] is not None:
                overrides["lr"] = cfg["lr"]
            for seed in cfg["seeds"]:
                specs.append({
                    "experiment": self.task.name, "task": self.path,
                    "variant": f"{self.task.name}{variant_suffix(cfg)}", "optimizer": opt,
                    "optimizer_kwargs": optimizer_hparams(opt, overrides), "seed": seed,
                    "epochs": cfg["epochs"], "batch_size": cfg["batch_size"],
                    **technique_spec(cfg),
                })
        return specs

    # -- registry hooks
    def make_run(self, spec: Mapping[str, Any], device: torch.device,
                 data_dir: str | None) -> TaskRun:
        return TaskRun(self.task, spec, device)

    def make_stacked(self, specs: Sequence[Mapping[str, Any]], device: torch.device,
                     data_dir: str | None) -> StackedTaskRun:
        return StackedTaskRun(self.task, specs, device)

    def check_data(self, cfg: dict[str, Any], data_dir: str | None) -> None:
        if not self._checked:
            check_contract(self.task, self.path, torch.device("cpu"))
            self._checked = True

    def expected_cost(self, spec: Mapping[str, Any]) -> float:
        return float(spec["epochs"])

    def why_not(self, spec: Mapping[str, Any]) -> str | None:
        name = self.task.name
        if not self.task.capabilities.stacked_replicas:
            return f"{name} runs are not vectorised (the task's capabilities say its model " \
                "does not stack)"
        if spec["optimizer"] in SECOND_ORDER_NAMES:
            return f"{spec['optimizer']} runs are not vectorised (closure-based full-batch steps)"
        techniques = [k for k in COMMON_DEFAULTS if k in spec and k != "name"]
        if techniques:
            return f"runs with {', '.join(techniques)} are not vectorised"
        return None

    def group_key(self, spec: Mapping[str, Any]) -> tuple[Any, ...] | None:
        return None if self.why_not(spec) is not None else stacked_group_key(spec)

    def sweep_metric(self) -> SweepMetric:
        t = self.task
        return SweepMetric(t.select, t.select, target=float(getattr(t, "target", math.nan)),
                           description=f"{t.name} {t.select}")

    def figures(self) -> Figures:
        sel = self.task.select
        return Figures((("train/loss", "training loss"), (f"val/{sel}", f"validation {sel}"),
                        (f"test/{sel}", f"test {sel}")))

    def report_metrics(self) -> tuple[ReportMetric, ...]:
        return tuple(ReportMetric(f"test_{m.name}", f"test/{m.name}", f"test {m.name}")
                     for m in self.task.metrics)
