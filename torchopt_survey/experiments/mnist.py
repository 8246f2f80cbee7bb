"""MNIST-format classification with the survey's 784-500-10 MLP, trained from device tensors."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from .checkpoint import ModelOptimizerState
from .data import ImageData, load_image_dataset
from .models import make_mlp
from .registry import build_optimizer, optimizer_hparams

_DATA_CACHE: dict[tuple[Any, ...], ImageData] = {}


@dataclasses.dataclass
class SplitImageData(ImageData):
    """An image dataset whose last ``val_split`` training images are held out for validation.

    (Issue #10's own minimal ``val_split``, to be unified with #9's validation split.)
    """

    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


def get_data(spec: dict[str, Any], data_dir: str | None, device: torch.device) -> ImageData:
    """Load (once per process) the dataset a run spec asks for."""
    val = int(spec.get("val_split") or 0)
    key = (spec["dataset"], data_dir, str(device), spec["train_subset"], spec["test_subset"], val)
    if key not in _DATA_CACHE:
        data = load_image_dataset(
            spec["dataset"], data_dir, device, spec["train_subset"], spec["test_subset"]
        )
        if val:
            n = data.x_train.shape[0]
            if val >= n:
                raise ValueError(f"val_split: {val} held-out images leave none of the {n} "
                                 "training images to train on")
            data = SplitImageData(
                data.name, data.x_train[: n - val], data.y_train[: n - val], data.x_test,
                data.y_test, data.x_train[n - val :], data.y_train[n - val :])
        _DATA_CACHE[key] = data
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
                        "experiment": "mnist",
                        "variant": f"{cfg['dataset']}-{regime}",
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
                        # (only when set: older runs' specs stay equal for --resume)
                        **({"val_split": cfg["val_split"]} if cfg["val_split"] else {}),
                    }
                )
    return specs


class MnistTask(ModelOptimizerState):
    """One training run: model, optimizer and the epoch loop over in-memory tensors."""

    def __init__(self, spec: dict[str, Any], device: torch.device, data_dir: str | None) -> None:
        self.spec = spec
        self.device = device
        self.data = get_data(spec, data_dir, device)
        n = self.data.x_train.shape[0]
        bs = spec["batch_size"]
        self.batch_size = n if bs == "full" or bs >= n else int(bs)
        self.steps_per_epoch = math.ceil(n / self.batch_size)
        torch.manual_seed(spec["seed"])
        self.model = make_mlp(
            self.data.num_features, spec["hidden"], self.data.num_classes, spec["activation"]
        ).to(device)
        self.optimizer = build_optimizer(
            spec["optimizer"], self.model.parameters(), spec["optimizer_kwargs"]
        )
        # torch.compile pays off on GPUs (fused kernels); on CPU it was measured slower for this
        # small MLP, so it is opt-in.
        self._forward = torch.compile(self.model) if spec["compile"] else self.model

    def hparams(self) -> dict[str, Any]:
        s = self.spec
        hp = {"optimizer": s["optimizer"], "lr": s["optimizer_kwargs"].get("lr"),
              "seed": s["seed"], "regime": s["regime"]}  # (first in the HParams dashboard)
        hp.update({k: s[k] for k in ("dataset", "epochs", "activation")})
        hp["batch_size"] = self.batch_size
        hp.update({f"opt/{k}": v for k, v in s["optimizer_kwargs"].items()})
        return hp

    # -- training
    def _step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self._forward(xb), yb)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def train_epoch(
        self, epoch: int, losses: torch.Tensor, progress: Callable[[int, float], None]
    ) -> dict[str, float]:
        """Run one epoch; writes each step's loss into ``losses`` (a CPU view of length
        ``steps_per_epoch``) and calls ``progress(steps_done, last_loss)`` now and then."""
        x, y = self.data.x_train, self.data.y_train
        n, bs = x.shape[0], self.batch_size
        self.model.train()
        # A fresh generator per (seed, epoch) makes the shuffle independent of how the run got
        # here, so a resumed run sees exactly the batches of an uninterrupted one.
        gen = torch.Generator().manual_seed(self.spec["seed"] * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen).to(self.device) if bs < n else None
        # Losses stay on the device until the epoch ends: no host sync per step.
        buf = torch.empty(self.steps_per_epoch, device=self.device)
        every = max(1, self.steps_per_epoch // 50)
        step = self._step
        for i in range(self.steps_per_epoch):
            if perm is None:
                xb, yb = x, y  # full batch: order does not matter for the mean loss
            else:
                # Gathering one batch per step is cheaper than permuting the whole 188 MB set
                # each epoch (that costs ~0.13 ms/step in page faults and copies here).
                idx = perm[i * bs : (i + 1) * bs]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            buf[i] = step(xb, yb)
            if (i + 1) % every == 0:
                progress(i + 1, float(buf[i]))
        losses.copy_(buf.cpu())
        return {"train/loss_epoch": float(losses.double().mean())}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        splits = [("test", self.data.x_test, self.data.y_test)]
        if getattr(self.data, "x_val", None) is not None:
            splits.append(("val", self.data.x_val, self.data.y_val))
        metrics: dict[str, float] = {}
        for name, x, y in splits:
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
            step = self.spec["eval_batch_size"]
            for i in range(0, x.shape[0], step):
                out = self.model(x[i : i + step])
                loss_sum += F.cross_entropy(out, y[i : i + step], reduction="sum").double()
                correct += (out.argmax(1) == y[i : i + step]).sum()
            n = x.shape[0]
            metrics[f"{name}/accuracy"] = float(correct) / n
            metrics[f"{name}/loss"] = float(loss_sum) / n
        return metrics
