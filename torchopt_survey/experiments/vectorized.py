"""Vectorised training: N MNIST runs of one architecture as one program.

The N models are built exactly as N separate runs build them (each under its own seed), then
stacked along a leading replica dimension (``torch.func.stack_module_state``); one forward
(``vmap`` over ``functional_call``) and one backward serve all N, and one optimizer step
updates the stacked tensors, with every hyperparameter that differs between the runs given as
a per-replica [N] tensor (see ``torchopt_survey.optim.core.replicas``). Each replica draws its
own seed's batches, so replica r follows the trajectory of run r done alone (within float32
rounding: the batched matmuls sum in another order).

Each replica is still a normal run on disk: its own TensorBoard folder with hparams, per-step
loss and per-epoch metrics, and per-epoch checkpoints in the format :func:`runner.execute_run`
writes -- so ``--resume`` continues a vectorised run either way.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

from .checkpoint import load_checkpoint, load_json, save_checkpoint, save_json
from .registry import build_optimizer

#: spec keys that may differ between the replicas of one program (besides float hparams)
_PER_REPLICA_KEYS = ("seed", "optimizer_kwargs", "variant", "sweep")  # (labels)


def _float_hparams(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items()
            if isinstance(v, float | int) and not isinstance(v, bool)}


def _techniques(spec: dict[str, Any]) -> list[str]:
    """§V technique options of an MNIST run that the vectorised program does not implement
    (a validation split it does)."""
    from .techniques import technique_defaults

    return [k for k in technique_defaults("mnist") if k in spec and k not in ("val_split",
                                                                          "name")]


def group_key(spec: dict[str, Any]) -> tuple | None:
    """What runs must share to be one program (None: this run cannot be vectorised)."""
    from .registry import SECOND_ORDER_NAMES

    if spec["experiment"] != "mnist" or spec.get("compile") or _techniques(spec) or (
            spec["optimizer"] in SECOND_ORDER_NAMES):
        return None
    shared = {k: v for k, v in spec.items() if k not in _PER_REPLICA_KEYS}
    kwargs = spec["optimizer_kwargs"]
    fixed = {k: v for k, v in kwargs.items() if k not in _float_hparams(kwargs)}
    return (repr(sorted(shared.items())), repr(sorted(fixed.items())),
            tuple(sorted(_float_hparams(kwargs))))


def why_not(spec: dict[str, Any]) -> str:
    if spec["experiment"] != "mnist":
        return f"{spec['experiment']} runs are not vectorised (graph models: PyG message passing)"
    from .registry import SECOND_ORDER_NAMES

    if spec["optimizer"] in SECOND_ORDER_NAMES:
        return f"{spec['optimizer']} runs are not vectorised (closure-based full-batch steps)"
    if _techniques(spec):
        return f"runs with {', '.join(_techniques(spec))} are not vectorised"
    return "compile=True runs are not vectorised"


def plan_groups(specs: Sequence[dict[str, Any]], max_replicas: int = 64,
                ) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Split ``specs`` into vectorisable groups (2+ runs) and runs to do one by one."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    alone: list[dict[str, Any]] = []
    for spec in specs:
        key = group_key(spec)
        if key is None:
            alone.append(spec)
        else:
            groups.setdefault(key, []).append(spec)
    out: list[list[dict[str, Any]]] = []
    for members in groups.values():
        for i in range(0, len(members), max_replicas):
            chunk = members[i : i + max_replicas]
            if len(chunk) > 1:
                out.append(chunk)
            else:
                alone.extend(chunk)
    return out, alone


def stacked_hparams(specs: Sequence[dict[str, Any]], dtype: torch.dtype) -> dict[str, Any]:
    """One optimizer's kwargs for all replicas: differing floats become [N] tensors."""
    first = specs[0]["optimizer_kwargs"]
    out: dict[str, Any] = {}
    for key, value in first.items():
        values = [s["optimizer_kwargs"][key] for s in specs]
        if key in _float_hparams(first) and len(set(values)) > 1:
            out[key] = torch.tensor([float(v) for v in values], dtype=dtype)
        elif isinstance(value, list | tuple) and any(
            isinstance(v, float) for v in value
        ) and len({tuple(v) for v in values}) > 1:
            out[key] = tuple(
                torch.tensor([float(v[i]) for v in values], dtype=dtype)
                if len({v[i] for v in values}) > 1 else value[i]
                for i in range(len(value))
            )
        else:
            out[key] = value
    return out


def _is_mlp(model: torch.nn.Module) -> bool:
    """The survey's MLP (Linear, activation, Linear) with its parameter names."""
    return isinstance(model, torch.nn.Sequential) and len(model) == 3 and all(
        isinstance(model[i], torch.nn.Linear) for i in (0, 2)) and not list(
        model[1].parameters())


class VectorMnist:
    """N MNIST runs (same architecture, regime and optimizer) trained as one program."""

    def __init__(self, specs: Sequence[dict[str, Any]], device: torch.device,
                 data_dir: str | None) -> None:
        from .mnist import MnistTask
        from .techniques import option, val_split_indices

        self.specs = list(specs)
        self.n = len(specs)
        # each replica's model exactly as its separate run builds it (seeded init); their
        # copies of the split data are dropped: the program gathers from the shared set
        singles = []
        for spec in self.specs:
            task = MnistTask(spec, device, data_dir)
            task.x_train = task.y_train = task.x_val = task.y_val = None  # type: ignore[assignment]
            singles.append(task)
        self.singles = singles
        self.data = singles[0].data
        self.batch_size = singles[0].batch_size
        self.steps_per_epoch = singles[0].steps_per_epoch
        n_all = self.data.x_train.shape[0]
        frac = option(self.specs[0], "val_split")
        # per replica, indices into the shared training set: its seed's train/val split
        self.train_idx: torch.Tensor | None = None
        self.val_idx: torch.Tensor | None = None
        if frac is not None:
            splits = [val_split_indices(n_all, float(frac), s["seed"]) for s in self.specs]
            self.train_idx = torch.stack([tr for tr, _ in splits]).to(device)
            self.val_idx = torch.stack([va for _, va in splits]).to(device)
        self.skeleton = copy.deepcopy(singles[0].model).to("meta")
        params, buffers = stack_module_state([t.model for t in singles])
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.buffers = buffers
        dtype = next(iter(self.params.values())).dtype
        self.optimizer = build_optimizer(
            self.specs[0]["optimizer"], list(self.params.values()),
            stacked_hparams(self.specs, dtype),
        )

        def one(p: dict[str, Any], b: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.skeleton, (p, b), (x,))

        self._forward = vmap(one, in_dims=(0, 0, 0))
        self._forward_shared = vmap(one, in_dims=(0, 0, None))
        if _is_mlp(self.skeleton):
            # The same math as batched matmuls ordered so that every weight gradient comes
            # out in the weight's own [N, out, in] layout (vmap's linear produces [N, in,
            # out] and autograd then copies it: a third of a step on one CPU thread).
            act = self.skeleton[1]

            def mlp(p: dict[str, Any], b: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
                xt = x.transpose(-1, -2)  # [N, in, B] (or [in, B] shared by all replicas)
                h = act(torch.matmul(p["0.weight"], xt) + p["0.bias"].unsqueeze(-1))
                out = torch.matmul(p["2.weight"], h) + p["2.bias"].unsqueeze(-1)
                return out.transpose(-1, -2)  # [N, B, classes]

            self._forward = self._forward_shared = mlp

    # -- training
    def train_epoch(self, epoch: int, losses: torch.Tensor,
                    progress: Callable[[int, float], None] | None = None) -> None:
        """One epoch for every replica; ``losses`` is [N, steps_per_epoch] (CPU)."""
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
            out = self._forward(self.params, self.buffers, xb)
            per = F.cross_entropy(out.flatten(0, 1), yb.flatten(), reduction="none")
            per = per.view(reps, -1).mean(1)  # each replica's own mean loss
            per.sum().backward()  # replicas are independent: each gets its own gradient
            self.optimizer.step()
            buf[i] = per.detach()
            if progress is not None and (i + 1) % max(1, self.steps_per_epoch // 10) == 0:
                progress(i + 1, float(buf[i].mean()))
        losses.copy_(buf.t().cpu())

    @torch.no_grad()
    def evaluate(self) -> list[dict[str, float]]:
        out_metrics: list[dict[str, float]] = []
        per_split = {}
        step = self.specs[0]["eval_batch_size"]
        x, y = self.data.x_test, self.data.y_test
        correct = torch.zeros(self.n, dtype=torch.long, device=x.device)
        loss_sum = torch.zeros(self.n, dtype=torch.float64, device=x.device)
        for i in range(0, x.shape[0], step):
            out = self._forward_shared(self.params, self.buffers, x[i : i + step])
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
                out = self._forward(self.params, self.buffers, x[idx])
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

    # -- one replica as a separate run's state (checkpoint format of runner.execute_run)
    def replica_state(self, r: int) -> dict[str, Any]:
        model = {k: v[r].detach().clone() for k, v in self.params.items()}
        model.update({k: v[r].clone() for k, v in self.buffers.items()})
        full = self.optimizer.state_dict()
        state = {i: {k: (v[r].clone() if isinstance(v, torch.Tensor) and v.dim() > 0
                         else (v.clone() if isinstance(v, torch.Tensor) else v))
                     for k, v in entries.items()} for i, entries in full["state"].items()}

        def one(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() == 1 and value.numel() == self.n:
                return float(value[r])
            if isinstance(value, tuple):
                return tuple(one(v) for v in value)
            return value

        own = self.specs[r]["optimizer_kwargs"]  # the run's own values, not float32 copies

        def value_of(key: str, value: Any) -> Any:
            if key == "params" or key not in own:
                return value
            if not any(isinstance(v, torch.Tensor) and v.dim() == 1 and v.numel() == self.n
                       for v in (value if isinstance(value, tuple) else (value,))):
                return value
            return tuple(own[key]) if isinstance(value, tuple) else own[key]

        groups = [{k: value_of(k, v) for k, v in g.items()} for g in full["param_groups"]]
        return {"model": model, "optimizer": {"state": state, "param_groups": groups},
                "techniques": self.singles[r].tech.state_dict()}

    def load_replica_states(self, states: Sequence[dict[str, Any]]) -> None:
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(torch.stack([s["model"][k] for s in states]))
        full = self.optimizer.state_dict()
        first = states[0]["optimizer"]["state"]
        stacked = {}
        for i, entries in first.items():
            stacked[i] = {}
            for k, v in entries.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    stacked[i][k] = torch.stack([s["optimizer"]["state"][i][k] for s in states])
                else:
                    stacked[i][k] = v
        self.optimizer.load_state_dict({"state": stacked, "param_groups": full["param_groups"]})


def execute_vectorized(
    specs: Sequence[dict[str, Any]],
    opts: Any,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``specs`` (one group from :func:`plan_groups`) as one program.

    Finished runs are skipped under ``--resume``; if the unfinished ones stopped at different
    epochs they are continued one by one (their checkpoints are ordinary ones).
    """
    from torch.utils.tensorboard import SummaryWriter

    from .runner import (
        CHECKPOINT,
        RESULT,
        _clear_run_dir,
        _downsample,
        _log_hparams,
        execute_run,
        normalise,
        prepare_process,
        run_id,
    )

    specs = [normalise(s) for s in specs]
    results: list[dict[str, Any]] = []
    todo: list[dict[str, Any]] = []
    states: list[dict[str, Any] | None] = []
    for spec in specs:
        run_dir = Path(opts.logdir) / run_id(spec)
        done = None
        if opts.resume and (run_dir / RESULT).is_file():
            try:
                done = load_json(run_dir / RESULT)
            except (OSError, ValueError):
                done = None
        if done is not None and done.get("spec") == spec:
            res = {**done, "skipped": True}
            results.append(res)
            if on_done:
                on_done(res)
            continue
        state = None
        if opts.resume and (run_dir / CHECKPOINT).is_file():
            try:
                state = load_checkpoint(run_dir / CHECKPOINT)
                if state.get("spec") != spec:
                    state = None
            except Exception:  # unreadable: start that run over
                state = None
        todo.append(spec)
        states.append(state)
    if not todo:
        return results
    epochs_done = {0 if s is None else int(s["epoch"]) for s in states}
    if len(todo) == 1 or len(epochs_done) > 1:
        for spec in todo:  # (continuing from different epochs: one by one)
            res = execute_run(spec, opts)
            results.append(res)
            if on_done:
                on_done(res)
        return results
    device = prepare_process(opts)
    prog = VectorMnist(todo, device, opts.data_dir)
    n, epochs, spe = len(todo), todo[0]["epochs"], prog.steps_per_epoch
    start_epoch = epochs_done.pop()
    step_losses = torch.full((n, epochs * spe), float("nan"))
    histories: list[dict[str, list[float]]] = [{} for _ in todo]
    elapsed = [0.0] * n
    if start_epoch:
        prog.load_replica_states([s["task"] for s in states])  # type: ignore[index]
        for r, s in enumerate(states):
            assert s is not None
            histories[r] = {k: list(v) for k, v in s["history"].items()}
            step_losses[r] = s["step_losses"]
            elapsed[r] = float(s["elapsed"])
    writers = []
    for r, spec in enumerate(todo):
        run_dir = Path(opts.logdir) / run_id(spec)
        if not start_epoch:
            _clear_run_dir(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(run_dir),
                               purge_step=start_epoch * spe + 1 if start_epoch else None)
        if not start_epoch:
            hp = prog.singles[r].hparams()
            hp["vectorized"] = n
            tags = ["test/accuracy", "train/loss_epoch"]
            if prog.val_idx is not None:
                tags.append("val/accuracy")
            _log_hparams(writer, hp, tags, opts.hparam_domains)
        writers.append(writer)
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            t0 = time.perf_counter()
            base = (epoch - 1) * spe
            prog.train_epoch(epoch, step_losses[:, base : base + spe])
            train_time = time.perf_counter() - t0
            metrics = prog.evaluate()
            # the program's time, shared: each replica is charged 1/N of it
            epoch_time = (time.perf_counter() - t0) / n
            for r, spec in enumerate(todo):
                m = {"train/loss_epoch": float(step_losses[r, base : base + spe].double().mean()),
                     **metrics[r], "time/epoch_seconds": epoch_time,
                     "time/train_seconds": train_time / n}
                elapsed[r] += epoch_time
                for k, v in m.items():
                    histories[r].setdefault(k, []).append(v)
                log_every = int(spec.get("log_every", 1))
                ep = step_losses[r, base : base + spe]
                for j in range(0, spe, log_every):
                    writers[r].add_scalar("train/loss",
                                          float(ep[j : j + log_every].double().mean()),
                                          base + j + 1)
                for k, v in m.items():
                    writers[r].add_scalar(k, v, epoch)
                writers[r].flush()
                save_checkpoint(Path(opts.logdir) / run_id(spec) / CHECKPOINT, {
                    "format": 1, "spec": spec, "epoch": epoch, "elapsed": elapsed[r],
                    "task": prog.replica_state(r), "history": histories[r],
                    "step_losses": step_losses[r].clone(),
                })
    finally:
        for w in writers:
            w.close()
    for r, spec in enumerate(todo):
        xs, ys = _downsample(step_losses[r])
        acc = histories[r].get("test/accuracy", [])
        result = {
            "spec": spec, "run_id": run_id(spec), "history": histories[r],
            "loss_curve": {"step": xs, "loss": ys, "steps_per_epoch": spe},
            "wall_time_s": elapsed[r], "final": {k: v[-1] for k, v in histories[r].items()},
            "best_test_accuracy": max(acc) if acc else None, "device": str(device),
            "torch": torch.__version__, "vectorized": n,
        }
        save_json(Path(opts.logdir) / run_id(spec) / RESULT, result)
        res = {**result, "skipped": False}
        results.append(res)
        if on_done:
            on_done(res)
    return results

