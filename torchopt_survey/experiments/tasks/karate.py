"""Link prediction on Zachary's Karate Club (or any edge list) with PyG."""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from ..runtime.distributed import DistContext, all_reduce_sum, wrap_ddp
from .closure_step import closure_step, needs_closure, refuse_closure_optimizers
from .data import load_graph
from .models import LINK_MODELS, GCNLinkModel, PaperLinkModel
from .optimizers import build_optimizer, optimizer_hparams
from .protocol import Claim, Figures, LossCurve, ModelOptimizerState, ReportMetric, SweepMetric
from .schema import COMMON, check_choice, check_int
from .techniques import (
    COMMON_OPTIONS,
    TechniqueHooks,
    TechniqueOptions,
    Techniques,
    attach_step_in_backward,
    init_weights,
    optimizer_arguments,
    technique_defaults,
    technique_spec,
    variant_suffix,
)
from .techniques import hparams as technique_hparams

NAME = "karate"

#: the §V technique options this task takes: the common ones
TECHNIQUE_OPTIONS = COMMON_OPTIONS

#: the paper's configuration of this task (``--config``, ``--set`` and flags override it)
DEFAULTS: dict[str, Any] = {
    **COMMON,
    "experiment": NAME,
    "seeds": list(range(10)),
    "epochs": 100,
    "edge_list": None,  # None: PyG's built-in KarateClub
    "models": ["paper", "gcn"],
    "decoder": "dot",
    "embedding_dim": 16,
    "channels": 16,
    "hidden": 32,
    "val_ratio": 0.1,
    "test_ratio": 0.2,
    **technique_defaults(TECHNIQUE_OPTIONS),
}


def validate_config(cfg: dict[str, Any]) -> None:
    """Check (and normalise in place) this task's own keys of a config."""
    models = cfg["models"]
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not models:
        raise ValueError(f"models: expected a non-empty list, got {cfg['models']!r}")
    for m in models:
        check_choice("models", m, LINK_MODELS)
    cfg["models"] = list(dict.fromkeys(models))
    check_choice("decoder", cfg["decoder"], ("dot", "mlp"))
    for key in ("embedding_dim", "channels", "hidden"):
        check_int(cfg, key)
    for key in ("val_ratio", "test_ratio"):
        v = cfg[key]
        if not isinstance(v, int | float) or not 0 < v < 0.5:
            raise ValueError(f"{key}: expected a fraction in (0, 0.5), got {v!r}")
    if cfg["edge_list"] is not None:
        cfg["edge_list"] = str(cfg["edge_list"])


def expand(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One run spec per (model, optimizer, seed) of a validated Karate config."""
    graph = "karate" if cfg["edge_list"] is None else Path(cfg["edge_list"]).stem
    specs = []
    for model in cfg["models"]:
        for opt in cfg["optimizers"]:
            overrides = dict(cfg["optimizer_kwargs"].get(opt, {}))
            if cfg["fused"]:
                overrides["fused"] = True
            if cfg["lr"] is not None:
                overrides["lr"] = cfg["lr"]
            for seed in cfg["seeds"]:
                specs.append(
                    {
                        "experiment": NAME,
                        "variant": f"{graph}-{model}{variant_suffix(cfg)}",
                        "graph": graph,
                        "edge_list": cfg["edge_list"],
                        "model": model,
                        "decoder": cfg["decoder"],
                        "optimizer": opt,
                        "optimizer_kwargs": optimizer_hparams(opt, overrides),
                        "seed": seed,
                        "epochs": cfg["epochs"],
                        "embedding_dim": cfg["embedding_dim"],
                        "channels": cfg["channels"],
                        "hidden": cfg["hidden"],
                        "val_ratio": cfg["val_ratio"],
                        "test_ratio": cfg["test_ratio"],
                        **technique_spec(cfg),
                    }
                )
    return specs


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's and Python's global RNGs (PyG's negative sampling draws from Python's
    ``random``) for the block, restoring the callers' states afterwards."""
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC-AUC as the Mann-Whitney statistic (ties count one half)."""
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def split_edges(data: Any, seed: int, val_ratio: float, test_ratio: float) -> tuple[Any, Any, Any]:
    """PyG ``RandomLinkSplit`` under a fixed seed: each seed is a different split."""
    from torch_geometric.transforms import RandomLinkSplit

    splitter = RandomLinkSplit(
        num_val=val_ratio,
        num_test=test_ratio,
        is_undirected=True,
        add_negative_train_samples=False,  # fresh training negatives each epoch instead
        neg_sampling_ratio=1.0,
    )
    with seeded(seed):
        return splitter(data)


class KarateTask(TechniqueHooks, ModelOptimizerState):
    """One link-prediction run (full-batch: one optimizer step per epoch)."""

    sweep_metric = SweepMetric("auc", "ROC-AUC", target=0.80, description="Karate ROC-AUC")
    figures = Figures((("train/loss_epoch", "training loss"), ("test/accuracy", "test accuracy"),
                       ("test/auc", "test ROC-AUC")),
                      title="link prediction {variant}: optimizers",
                      names={"karate-paper": "fig3_karate_paper.png",
                             "karate-gcn": "fig4_karate_gcn.png"})
    report_metrics = (ReportMetric("test_accuracy", "test/accuracy", "test acc"),
                      ReportMetric("test_auc", "test/auc", "test AUC"))
    claims = (
        Claim("adaptive methods win on link prediction",
              ("adagrad", "adadelta", "rmsprop", "adam", "adamw", "amsgrad", "nadam", "adamax"),
              ("sgd", "momentum", "nag"),
              (("final_test_auc", "final test ROC-AUC"),
               ("final_test_accuracy", "final test accuracy")),
              sweep_text="adaptive methods win (ROC-AUC)"),
    )

    def __init__(self, spec: dict[str, Any], device: torch.device, data_dir: str | None) -> None:
        self.spec = spec
        self.device = device
        graph = load_graph(spec["edge_list"])
        train, val, test = split_edges(graph, spec["seed"], spec["val_ratio"], spec["test_ratio"])
        self.train, self.val, self.test = (d.to(device) for d in (train, val, test))
        num_nodes = graph.num_nodes  # PyG types it optional; load_graph always sets it
        if num_nodes is None:
            raise ValueError("edge_list: the graph has no node count")
        self.num_nodes = int(num_nodes)
        self.steps_per_epoch = 1
        torch.manual_seed(spec["seed"])
        opts = TechniqueOptions.of(spec)
        dropout = float(opts.dropout)
        if spec["model"] == "paper":
            self.model: torch.nn.Module = PaperLinkModel(
                self.num_nodes, spec["embedding_dim"], spec["channels"], dropout
            )
        else:
            self.model = GCNLinkModel(
                graph.num_features, spec["hidden"], spec["embedding_dim"], spec["decoder"], dropout
            )
        # Both models use ReLU between layers.
        init_weights(self.model, opts.init, "relu", float(opts.init_gain))
        self.model.to(device)
        self.optimizer = build_optimizer(
            spec["optimizer"], self.model.parameters(), optimizer_arguments(spec)
        )
        self.tech = Techniques(spec, self.model, self.optimizer)
        self.in_backward = attach_step_in_backward(spec, self.model, self.optimizer)
        # Fixed negatives for measuring train accuracy/AUC, so the curve is not sampling noise.
        self.train_eval_pairs, self.train_eval_labels = self._with_negatives(seed_offset=-1)
        self.dist: DistContext | None = None  # set by distribute() under torchrun
        self._ddp: torch.nn.Module | None = None

    @staticmethod
    def check_data(cfg: dict[str, Any], data_dir: str | None) -> None:
        """Read and check ``--edge-list`` once (the built-in graph needs no check)."""
        if cfg["edge_list"] is not None:
            load_graph(cfg["edge_list"])

    @staticmethod
    def expected_cost(spec: dict[str, Any]) -> float:
        """Rough relative cost of a run (one full-batch step per epoch on a small graph)."""
        return spec["epochs"] * 1e-3

    def distribute(self, ctx: DistContext) -> None:
        """Train under DDP as one rank of ``ctx`` (see distributed.py): each full-batch step's
        training pairs (positives and sampled negatives, drawn identically on every rank) are
        sharded; the encoder's message passing needs the whole graph, so it runs on every rank.
        Evaluation and checkpoints keep using the plain ``self.model``."""
        refuse_closure_optimizers(self.optimizer, self.spec["optimizer"])
        if self.in_backward is not None:
            raise ValueError("step_in_backward: not under DDP (the update would use this rank's "
                             "unreduced gradient); set step_in_backward=false")
        self.dist = ctx
        self._ddp = wrap_ddp(self.model, self.device)

    def _with_negatives(self, seed_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torch_geometric.utils import negative_sampling

        pos = self.train.edge_label_index
        with seeded(self.spec["seed"] * 1_000_003 + seed_offset + 7):
            neg = negative_sampling(
                self.train.edge_index.cpu(), num_nodes=self.num_nodes, num_neg_samples=pos.shape[1]
            ).to(self.device)
        pairs = torch.cat([pos, neg], dim=1)
        labels = torch.cat([torch.ones(pos.shape[1]), torch.zeros(neg.shape[1])]).to(self.device)
        return pairs, labels

    def hparams(self) -> dict[str, Any]:
        s = self.spec
        hp = {"optimizer": s["optimizer"], "lr": s["optimizer_kwargs"].get("lr"),
              "seed": s["seed"], "model": s["model"]}  # (first in the HParams dashboard)
        hp.update({k: s[k] for k in ("graph", "epochs", "embedding_dim")})
        hp.update({f"opt/{k}": v for k, v in s["optimizer_kwargs"].items()})
        hp.update(technique_hparams(s, TECHNIQUE_OPTIONS))
        return hp

    def hparam_metrics(self) -> list[str]:
        """The metric tags the HParams dashboard shows beside each run's hyperparameters."""
        return ["test/accuracy", "train/loss_epoch", "test/auc", "train/accuracy", "train/auc"]

    def _logits(self, data: Any, pairs: torch.Tensor) -> torch.Tensor:
        # Message passing only over training edges: val/test edges stay unseen.
        return self.model(self.train.x, self.train.edge_index, pairs)

    def train_epoch(
        self, epoch: int, losses: torch.Tensor, progress: Callable[[int, float], None]
    ) -> dict[str, float]:
        self.model.train()
        pairs, labels = self._with_negatives(seed_offset=epoch)
        if needs_closure(self.optimizer):  # second-order methods (issue #8)
            return self._closure_epoch(pairs, labels, losses, progress)
        self.optimizer.zero_grad(set_to_none=True)
        if self.dist is not None and self._ddp is not None:
            # This rank's shard; the sum scaled by world / total makes DDP's gradient average
            # the gradient of the mean over all pairs (as in mnist.py's _dist_step).
            total, w = labels.numel(), self.dist.world_size
            a, b = self.dist.shard(total)
            logits = self._ddp(self.train.x, self.train.edge_index, pairs[:, a:b])
            loss = F.binary_cross_entropy_with_logits(logits, labels[a:b], reduction="sum")
            loss = self.tech.loss(loss * (w / total))
        else:
            loss = F.binary_cross_entropy_with_logits(self._logits(self.train, pairs), labels)
            loss = self.tech.loss(loss)
        loss.backward()
        self.tech.after_backward()
        self.optimizer.step()
        if self.dist is not None:  # the one-process loss: the ranks' parts summed
            losses[0] = all_reduce_sum(loss.detach() / self.dist.world_size).cpu()
        else:
            losses[0] = loss.detach().cpu()
        progress(1, float(losses[0]))
        return {"train/loss_epoch": float(losses[0]), **self.tech.epoch_metrics()}

    def _closure_epoch(
        self,
        pairs: torch.Tensor,
        labels: torch.Tensor,
        losses: torch.Tensor,
        progress: Callable[[int, float], None],
    ) -> dict[str, float]:
        """One outer iteration of a closure-based optimizer on this epoch's full batch."""

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            logits = self._logits(self.train, pairs)
            return F.binary_cross_entropy_with_logits(logits, labels), logits

        loss, counters = closure_step(self.optimizer, compute)
        losses[0] = loss.cpu()
        progress(1, float(losses[0]))
        return {"train/loss_epoch": float(losses[0]), **counters}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        out: dict[str, float] = {}
        sets = {
            "train": (self.train_eval_pairs, self.train_eval_labels),
            "val": (self.val.edge_label_index, self.val.edge_label),
            "test": (self.test.edge_label_index, self.test.edge_label),
        }
        for name, (pairs, labels) in sets.items():
            logits = self._logits(self.train, pairs)
            out[f"{name}/loss"] = float(F.binary_cross_entropy_with_logits(logits, labels.float()))
            out[f"{name}/accuracy"] = float(((logits > 0).float() == labels).float().mean())
            out[f"{name}/auc"] = roc_auc(logits.cpu(), labels.cpu())
        return out

# ----------------------------------------------------------------------------- its report

#: the report's second-order section: ``train/loss`` on fixed negatives after each epoch
LOSS_CURVE = LossCurve("train/loss", after_epoch=True)


def why_not(spec: dict[str, Any]) -> str:
    """Why a run trains alone (every one does)."""
    return "karate runs are not vectorised (graph models: PyG message passing)"


# ----------------------------------------------------------------------------- its CLI

HELP = "link prediction on Zachary's Karate Club (or --edge-list), every optimizer"


def add_flags(p: argparse.ArgumentParser) -> None:
    """The flags of this task's commands (``karate``, ``all``, ``sweep``)."""
    g = p.add_argument_group("karate")
    g.add_argument(
        "--models", nargs="+", metavar="NAME", help="link models: " + ", ".join(LINK_MODELS)
    )
    g.add_argument(
        "--edge-list",
        metavar="FILE",
        help="run link prediction on this undirected graph (two node ids per line) "
        "instead of Karate",
    )


def apply_flags(args: argparse.Namespace, cfg: dict[str, Any], upd: dict[str, Any],
                ) -> dict[str, Any]:
    """Put this task's flags into ``upd``; returns ``cfg`` to merge it into."""
    if getattr(args, "models", None):
        upd["models"] = list(args.models)
    if getattr(args, "edge_list", None) is not None:
        upd["edge_list"] = args.edge_list
    return cfg
