"""The MNIST task's stacked replicas: N runs of one architecture as one program.

The N models are built exactly as N separate runs build them (each under its own seed), then
stacked along a leading replica dimension (``torch.func.stack_module_state``); one forward
(``vmap`` over ``functional_call``) and one backward serve all N, and one optimizer step
updates the stacked tensors, with every hyperparameter that differs between the runs given as
a per-replica [N] tensor (see ``torchopt_survey.optim.core.replicas``). Each replica draws its
own seed's batches, so replica r follows the trajectory of run r done alone (within float32
rounding: the batched matmuls sum in another order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from .mnist import TECHNIQUE_OPTIONS, MnistTask
from .optimizers import SECOND_ORDER_NAMES
from .stacking import StackedReplicas
from .stacking import group_key as stacked_group_key
from .techniques import TechniqueOptions, val_split_indices


def _techniques(spec: dict[str, Any]) -> list[str]:
    """§V technique options of an MNIST run that the vectorised program does not implement
    (a validation split it does)."""
    return [k for k in TECHNIQUE_OPTIONS
            if k in spec and k not in ("val_split", "name")]


def why_not(spec: dict[str, Any]) -> str | None:
    """Why the run of ``spec`` cannot be a replica of a program (None: it can)."""
    if spec["optimizer"] in SECOND_ORDER_NAMES:
        return f"{spec['optimizer']} runs are not vectorised (closure-based full-batch steps)"
    if _techniques(spec):
        return f"runs with {', '.join(_techniques(spec))} are not vectorised"
    if spec.get("compile") is True:  # (auto: the vectorised program is the faster one)
        return "compile=True runs are not vectorised"
    return None


def group_key(spec: dict[str, Any]) -> tuple[Any, ...] | None:
    """What runs must share to be one program (None: this run cannot be vectorised)."""
    return None if why_not(spec) is not None else stacked_group_key(spec)


def _is_mlp(model: torch.nn.Module) -> bool:
    """The survey's MLP (Linear, activation, Linear) with its parameter names."""
    return isinstance(model, torch.nn.Sequential) and len(model) == 3 and all(
        isinstance(model[i], torch.nn.Linear) for i in (0, 2)) and not list(
        model[1].parameters())


class VectorMnist(StackedReplicas):
    """N MNIST runs (same architecture, regime and optimizer) trained as one program."""

    def __init__(self, specs: Sequence[dict[str, Any]], device: torch.device,
                 data_dir: str | None) -> None:

        # each replica's model exactly as its separate run builds it (seeded init); their
        # copies of the split data are dropped: the program gathers from the shared set
        singles = []
        for spec in specs:
            task = MnistTask(spec, device, data_dir)
            task.x_train = task.y_train = task.x_val = task.y_val = None  # type: ignore[assignment]
            singles.append(task)
        self.singles = singles
        self.data = singles[0].data
        self.batch_size = singles[0].batch_size
        self.steps_per_epoch = singles[0].steps_per_epoch
        n_all = self.data.x_train.shape[0]
        frac = TechniqueOptions.of(specs[0]).val_split
        # per replica, indices into the shared training set: its seed's train/val split
        self.train_idx: torch.Tensor | None = None
        self.val_idx: torch.Tensor | None = None
        if frac is not None:
            splits = [val_split_indices(n_all, float(frac), s["seed"]) for s in specs]
            self.train_idx = torch.stack([tr for tr, _ in splits]).to(device)
            self.val_idx = torch.stack([va for _, va in splits]).to(device)
        super().__init__(specs, [t.model for t in singles])
        if isinstance(self.skeleton, torch.nn.Sequential) and _is_mlp(self.skeleton):
            # The same math as batched matmuls ordered so that every weight gradient comes
            # out in the weight's own [N, out, in] layout (vmap's linear produces [N, in,
            # out] and autograd then copies it: a third of a step on one CPU thread).
            act = self.skeleton[1]

            def mlp(p: dict[str, Any], b: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
                xt = x.transpose(-1, -2)  # [N, in, B] (or [in, B] shared by all replicas)
                h = act(torch.matmul(p["0.weight"], xt) + p["0.bias"].unsqueeze(-1))
                out = torch.matmul(p["2.weight"], h) + p["2.bias"].unsqueeze(-1)
                return out.transpose(-1, -2)  # [N, B, classes]

            self.forward = self.forward_shared = mlp

    # -- training
    def train_epoch(self, epoch: int,
                    progress: Callable[[int, float], None] | None = None) -> torch.Tensor:
        """One epoch for every replica; returns the step losses, [N, steps_per_epoch] (CPU)."""
        x, y = self.data.x_train, self.data.y_train
        n = x.shape[0] if self.train_idx is None else self.train_idx.shape[1]
        bs, reps = self.batch_size, self.n
        device = x.device
        perms = None
        if bs < n:  # each replica its own seed's order, as its separate run draws it
            perms = torch.stack([
                torch.randperm(n, generator=torch.Generator().manual_seed(
                    s["seed"] * 1_000_003 + epoch)) for s in self.specs
            ]).to(device)
        buf = torch.empty(self.steps_per_epoch, reps, device=device)
        for i in range(self.steps_per_epoch):
            if perms is None:
                if self.train_idx is None:
                    xb, yb = x.expand(reps, *x.shape), y.expand(reps, *y.shape)
                else:
                    xb, yb = x[self.train_idx], y[self.train_idx]
            else:
                idx = perms[:, i * bs : (i + 1) * bs]
                if self.train_idx is not None:  # positions in each replica's training part
                    idx = torch.gather(self.train_idx, 1, idx)
                xb, yb = x[idx], y[idx]
            self.optimizer.zero_grad(set_to_none=True)
            out = self.forward(self.params, self.buffers, xb)
            per = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none")
            per = per.view(reps, -1).mean(1)  # each replica's own mean loss
            per.sum().backward()  # replicas are independent: each gets its own gradient
            self.optimizer.step()
            buf[i] = per.detach()
            if progress is not None and (i + 1) % max(1, self.steps_per_epoch // 10) == 0:
                progress(i + 1, float(buf[i].mean()))
        return buf.t().cpu()

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        out_metrics: list[dict[str, float]] = []
        per_split = {}
        step = self.specs[0]["eval_batch_size"]
        x, y = self.data.x_test, self.data.y_test
        correct = torch.zeros(self.n, dtype=torch.long, device=x.device)
        loss_sum = torch.zeros(self.n, dtype=torch.float64, device=x.device)
        for i in range(0, x.shape[0], step):
            out = self.forward_shared(self.params, self.buffers, x[i : i + step])
            yb = y[i : i + step]
            ce = F.cross_entropy(out.flatten(0, 1), yb.repeat(self.n), reduction="none")
            loss_sum += ce.view(self.n, -1).double().sum(1)
            correct += (out.argmax(-1) == yb).sum(1)
        per_split["test"] = (correct.tolist(), loss_sum.tolist(), x.shape[0])
        if self.val_idx is not None:  # each replica its own validation images
            x, y = self.data.x_train, self.data.y_train
            correct = torch.zeros(self.n, dtype=torch.long, device=x.device)
            loss_sum = torch.zeros(self.n, dtype=torch.float64, device=x.device)
            chunk = max(1, step // self.n)
            for i in range(0, self.val_idx.shape[1], chunk):
                idx = self.val_idx[:, i : i + chunk]
                out = self.forward(self.params, self.buffers, x[idx])
                yb = y[idx]
                ce = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none")
                loss_sum += ce.view(self.n, -1).double().sum(1)
                correct += (out.argmax(-1) == yb).sum(1)
            per_split["val"] = (correct.tolist(), loss_sum.tolist(), self.val_idx.shape[1])
        for r in range(self.n):
            metrics = {}
            for name, (correct, loss_sum, count) in per_split.items():
                metrics[f"{name}/accuracy"] = correct[r] / count
                metrics[f"{name}/loss"] = loss_sum[r] / count
            out_metrics.append(metrics)
        return out_metrics

    def hparams(self, r: int) -> dict[str, Any]:
        return self.singles[r].hparams()

    def hparam_metrics(self) -> list[str]:
        return self.singles[0].hparam_metrics()

    def replica_state(self, r: int) -> dict[str, Any]:
        return {**super().replica_state(r), "techniques": self.singles[r].tech.state_dict()}
