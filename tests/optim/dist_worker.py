"""One rank of the distributed integration checks (started by ``tests/optim/test_distributed.py``).

``PYTHONPATH=.:tests python tests/optim/dist_worker.py SCENARIO[,SCENARIO...] OUT_DIR`` with
torchrun's environment variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
Every optimizer configuration of ``tests/helpers/optim_cases.py`` is trained for a few float64
steps under the scenario and compared with the same steps in one plain process on the whole
batch; each rank writes ``OUT_DIR/<scenario>-rank<R>.json`` (one record per check: the largest
absolute parameter difference, or the error raised). Scenarios:

* ``ddp`` -- ``DistributedDataParallel``: each rank takes its half of every global batch.
* ``zero`` -- ``ZeroRedundancyOptimizer(optimizer_class=...)`` over a DDP model.
* ``fsdp`` -- FSDP2 (``fully_shard``; parameters are DTensors, the last layer's shard is empty
  on rank 1) with the forloop, foreach and fused paths.
* ``dcp`` -- ``torch.distributed.checkpoint`` with ``get/set_optimizer_state_dict`` on the FSDP2
  model: save on 2 ranks after 3 steps, load into fresh objects on 2 ranks and continue; and a
  fresh optimizer whose state dict is read before its first step must train exactly as one
  that never was (the checkpoint helper's state-initialisation step may not change it).
* ``dcp-load1`` (one process): load the ``dcp`` checkpoint into an unsharded model and continue.
* ``compact`` -- compact optimizer state (``state_dtype``). Under DDP (plain parameters) Adam,
  RMSprop and Momentum (lazy state) with bfloat16 and int8 state, foreach and fused, must match
  the one-process run *with the same compact state*: every rank holds the whole tensor, so
  blocks, scales and rounding seeds are the one process's, and the only difference left is the
  all-reduce's summation order (a float64 rounding difference that a code or rounding decision
  would only amplify at an exact tie). With torch.distributed.checkpoint: a state dict read
  before the first step changes nothing, and saving after 3 steps, loading into fresh objects
  and continuing equals the run never interrupted (exactly: codes, scales and rounding counts
  are restored as saved); ``dcp-load1`` loads these checkpoints into one plain process too.
  DTensor parameters sharded along another dimension than 0 (tensor parallelism's layout)
  are not supported: every class must refuse them at construction and in
  ``add_param_group`` with a ValueError naming ``state_dtype`` and the placements.
* ``fsdp-compact`` -- compact state under FSDP2, the same classes, dtypes and paths (int8 in
  blocks of 32, on a model whose shard boundaries fall inside a block, on a block's edge and
  leave one rank an empty shard): the state is DTensors with compact local shards, and the
  run equals the one-process compact run (the shards keep the unsharded layout: whole-tensor
  int8 blocks, a block cut by a shard boundary scaled by its maximum over both ranks, and
  bfloat16 rounding bits drawn by global element index); Adam also with HSDP's placements
  (``Replicate(), Shard(0)`` on a 1 x 2 mesh). On the foreach path, the state
  dicts: one read before the first step changes nothing; DCP save on 2 ranks, load on 2,
  continue equals the run never interrupted; the full state dicts (``full_state_dict=True``)
  through ``torch.save`` / ``torch.load(weights_only=True)`` into fresh FSDP2 objects, and
  each rank's own ``opt.state_dict()`` the same way, continue equally; a one-process
  optimizer's state dict (compact, or float32: compacted on loading) loaded with
  ``load_state_dict`` into FSDP2 objects continues as one process does.
* ``dcp-load1`` also loads the ``fsdp-compact`` checkpoints and full state dicts into one
  plain process (the int8 scales are saved as the whole tensor's, so they reshard).
"""

from __future__ import annotations

import copy
import functools
import json
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from helpers.optim_cases import OPTIMS, OptimInfo
from torch import nn

STEPS = 4
#: the whole batch; rank r of W takes rows [r * n / W, (r + 1) * n / W)
X = torch.linspace(-1, 1, 8 * 6, dtype=torch.float64).reshape(8, 6).sin()
Y = torch.linspace(-1, 1, 8, dtype=torch.float64).reshape(8, 1).cos()

PATHS: dict[str, dict[str, bool]] = {
    "forloop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # the last Linear's weight (1, 3) and bias (1,) leave rank 1 of 2 an empty FSDP2 shard
    return nn.Sequential(
        nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 1)
    ).double()


def batch(rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = X.shape[0] // world
    return X[rank * n:(rank + 1) * n], Y[rank * n:(rank + 1) * n]


def train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          steps: int = STEPS) -> None:
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def full_params(model: nn.Module) -> torch.Tensor:
    """All parameters, unsharded (a collective for DTensor parameters)."""
    out = []
    for p in model.parameters():
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out.append(t.reshape(-1))
    return torch.cat(out)


def reference(info: OptimInfo, kwargs: dict[str, Any], steps: int = STEPS) -> torch.Tensor:
    model = make_model()
    train(model, info.cls(model.parameters(), **kwargs), X, Y, steps)
    return full_params(model)


def configs() -> list[tuple[OptimInfo, str, dict[str, Any]]]:
    return [(info, case_id, {**info.base, **config})
            for info in OPTIMS for config, case_id in zip(info.configs, info.ids())]


def check(records: list[dict[str, Any]], name: str, fn: Callable[[], float]) -> None:
    try:
        records.append({"check": name, "diff": float(fn())})
    except Exception as exc:  # reported by the test, with the traceback
        records.append({"check": name, "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()})


def shard(model: nn.Module) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def scenario_ddp(rank: int, world: int, records: list[dict[str, Any]]) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = batch(rank, world)
    for info, case_id, kwargs in configs():
        def run(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs) -> float:
            model = DDP(make_model())
            train(model, info.cls(model.parameters(), **kwargs), x, y)
            return (full_params(model.module) - reference(info, kwargs)).abs().max().item()
        check(records, f"ddp/{case_id}", run)


def scenario_zero(rank: int, world: int, records: list[dict[str, Any]]) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = batch(rank, world)
    for info, case_id, kwargs in configs():
        def run(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs) -> float:
            model = DDP(make_model())
            opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=info.cls, **kwargs)
            train(model, opt, x, y)
            return (full_params(model.module) - reference(info, kwargs)).abs().max().item()
        check(records, f"zero/{case_id}", run)


def scenario_fsdp(rank: int, world: int, records: list[dict[str, Any]]) -> None:
    x, y = batch(rank, world)
    for info, case_id, kwargs in configs():
        for path, flags in PATHS.items():
            def run(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs,
                    flags: dict[str, bool] = flags) -> float:
                model = shard(make_model())
                train(model, info.cls(model.parameters(), **kwargs, **flags), x, y)
                return (full_params(model) - reference(info, kwargs)).abs().max().item()
            check(records, f"fsdp-{path}/{case_id}", run)


def _dcp_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}


def _dcp_load(model: nn.Module, opt: torch.optim.Optimizer, path: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = _dcp_state(model, opt)  # templates: the checkpoint is read into these
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])


Build = Callable[[], tuple[nn.Module, torch.optim.Optimizer]]


def _unwrapped(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # (DDP's wrapped module)


def dcp_lazy(build: Build, x: torch.Tensor, y: torch.Tensor,
             want: Callable[[], torch.Tensor]) -> float:
    """A DCP state dict read before the first step (lazy state) must change nothing."""
    model, opt = build()
    _dcp_state(model, opt)
    train(model, opt, x, y)
    return (full_params(_unwrapped(model)) - want()).abs().max().item()


def dcp_round_trip(build: Build, ckpt: Path, x: torch.Tensor, y: torch.Tensor,
                   continued: dict[str, list[float]], key: str,
                   loaded: Callable[[torch.optim.Optimizer], None] | None = None) -> float:
    """3 steps, DCP save, 3 more (recorded under ``key`` for the one-process load); a fresh
    model and optimizer loaded from the checkpoint must continue exactly alike."""
    import torch.distributed.checkpoint as dcp

    model, opt = build()
    train(model, opt, x, y, 3)
    dcp.save(_dcp_state(model, opt), checkpoint_id=str(ckpt))
    train(model, opt, x, y, 3)
    want = full_params(_unwrapped(model))
    continued[key] = want.tolist()
    model, opt = build()
    _dcp_load(model, opt, ckpt)
    if loaded is not None:
        loaded(opt)
    train(model, opt, x, y, 3)
    return (full_params(_unwrapped(model)) - want).abs().max().item()


#: the checkpoint scenarios run the foreach path (the FSDP2 scenario covers the others)
DCP_FLAGS = {"foreach": True}


def dcp_cases() -> list[tuple[OptimInfo, str, dict[str, Any]]]:
    # every configuration: lazily created state differs between them (momentum buffers, steps)
    return configs()


def scenario_dcp(rank: int, world: int, records: list[dict[str, Any]], out: Path) -> None:
    x, y = batch(rank, world)
    continued: dict[str, list[float]] = {}
    for info, case_id, kwargs in dcp_cases():
        def build(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs) -> Any:
            model = shard(make_model())
            return model, info.cls(model.parameters(), **kwargs, **DCP_FLAGS)

        check(records, f"dcp-lazy/{case_id}", functools.partial(
            dcp_lazy, build, x, y, functools.partial(reference, info, kwargs)))
        check(records, f"dcp-2to2/{case_id}", functools.partial(
            dcp_round_trip, build, out / "ckpt" / case_id, x, y, continued, case_id))
    if rank == 0:
        (out / "dcp-continued.json").write_text(json.dumps(continued))


def scenario_dcp_load1(records: list[dict[str, Any]], out: Path) -> None:
    """One plain process loads the 2-rank checkpoints (DCP reshards) and continues."""
    continued = json.loads((out / "dcp-continued.json").read_text())
    for info, case_id, kwargs in dcp_cases():
        def run(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs,
                case_id: str = case_id) -> float:
            model = make_model()
            opt = info.cls(model.parameters(), **kwargs, **DCP_FLAGS)
            _dcp_load(model, opt, out / "ckpt" / case_id)
            train(model, opt, X, Y, 3)
            want = torch.tensor(continued[case_id], dtype=torch.float64)
            return (full_params(model) - want).abs().max().item()
        check(records, f"dcp-2to1/{case_id}", run)


#: compact state: one Adam-family method, one other and one with lazy state, each layout
COMPACT_METHODS = ("Adam", "RMSprop", "Momentum")
STATE_DTYPES = ("bfloat16", "int8")


def _refused(make: Callable[[], object], *words: str) -> float:
    """0.0 when ``make`` raises the ValueError that names ``state_dtype`` and ``words``."""
    try:
        make()
    except ValueError as exc:
        if "state_dtype" in str(exc) and all(word in str(exc) for word in words):
            return 0.0
        raise
    raise AssertionError("compact state for an unsupported DTensor layout was accepted")


#: int8 blocks in the FSDP2 checks: small enough that the model's tensors have several, and
#: shard boundaries fall inside blocks, on a block's edge and beyond a tensor's end
COMPACT_BLOCK = 32


def make_compact_model() -> nn.Module:
    torch.manual_seed(0)
    # FSDP2 on 2 ranks: the first weight (16, 6) is cut inside its second block (rank 1
    # starts 16 elements into it), the second (3, 16) on a block's edge, the last one
    # (1, 3) and its bias leave rank 1 an empty shard
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3), nn.Tanh(), nn.Linear(3, 1)
    ).double()


def compact_cases() -> list[tuple[OptimInfo, str, dict[str, Any]]]:
    infos = {info.name: info for info in OPTIMS}
    out = []
    for name in COMPACT_METHODS:
        info = infos[name]
        for state_dtype in STATE_DTYPES:
            block = {"state_block_size": COMPACT_BLOCK} if state_dtype == "int8" else {}
            for path in ("foreach", "fused"):
                out.append((info, f"{name}-{state_dtype}-{path}",
                            {**info.base, "state_dtype": state_dtype, **block, **PATHS[path]}))
    return out


def _compact_reference(info: OptimInfo, kwargs: dict[str, Any], steps: int = STEPS
                       ) -> torch.Tensor:
    model = make_compact_model()
    train(model, info.cls(model.parameters(), **kwargs), X, Y, steps)
    return full_params(model)


def _assert_compact(opt: torch.optim.Optimizer, sharded: bool) -> None:
    """Every tensor state is compact (int8 scales aside) and, sharded, a DTensor."""
    for state in opt.state.values():
        for key, value in state.items():
            if not isinstance(value, torch.Tensor) or not value.dim() or key.endswith(
                    "_blockmax"):
                continue
            if sharded and not hasattr(value, "to_local"):
                raise AssertionError(f"state {key!r} of a DTensor parameter is not a DTensor")
            local = value.to_local() if hasattr(value, "to_local") else value
            if local.dtype not in (torch.bfloat16, torch.int8, torch.uint8):
                raise AssertionError(f"state {key!r} is {local.dtype}, not compact")


def scenario_fsdp_compact(rank: int, world: int, records: list[dict[str, Any]],
                          out: Path) -> None:
    """Compact state under FSDP2 (see the module docstring)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    x, y = batch(rank, world)
    continued: dict[str, list[float]] = {}
    continued_full: dict[str, list[float]] = {}
    for info, case_id, kwargs in compact_cases():
        def trained(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs) -> float:
            model = shard(make_compact_model())
            opt = info.cls(model.parameters(), **kwargs)
            train(model, opt, x, y)
            _assert_compact(opt, sharded=True)
            return (full_params(model) - _compact_reference(info, kwargs)).abs().max().item()
        check(records, f"fsdp-compact/{case_id}", trained)

        def hybrid(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs) -> float:
            # HSDP's layout: placements (Replicate(), Shard(0)) on a 2-D mesh
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard"))
            model = make_compact_model()
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            model = fully_shard(model, mesh=mesh)
            layout = [type(p).__name__ for p in next(model.parameters()).placements]
            if layout != ["Replicate", "Shard"]:
                raise AssertionError(f"not HSDP's placements: {layout}")
            opt = info.cls(model.parameters(), **kwargs)
            train(model, opt, x, y)
            _assert_compact(opt, sharded=True)
            return (full_params(model) - _compact_reference(info, kwargs)).abs().max().item()
        if info.name == "Adam" and kwargs.get("foreach"):
            check(records, f"fsdp-compact-hsdp/{case_id}", hybrid)
        if not kwargs.get("foreach"):
            continue  # (the state dict checks: one path, as the dcp scenario's)

        def build(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs) -> Any:
            model = shard(make_compact_model())
            return model, info.cls(model.parameters(), **kwargs)

        check(records, f"fsdp-dcp-compact-lazy/{case_id}", functools.partial(
            dcp_lazy, build, x, y, functools.partial(_compact_reference, info, kwargs)))
        check(records, f"fsdp-dcp-compact-2to2/{case_id}", functools.partial(
            dcp_round_trip, build, out / "ckpt-fsdp-compact" / case_id, x, y, continued,
            case_id, functools.partial(_assert_compact, sharded=True)))

        def full_dict(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs,
                      case_id: str = case_id) -> float:
            # the full (unsharded) state dicts, through torch.save and
            # torch.load(weights_only=True), into fresh FSDP2 objects (and, in dcp-load1,
            # into one plain process)
            options = StateDictOptions(full_state_dict=True)
            model = shard(make_compact_model())
            opt = info.cls(model.parameters(), **kwargs)
            train(model, opt, x, y, 3)
            path = out / f"full-{case_id}.pt"
            saved = {"model": get_model_state_dict(model, options=options),
                     "optim": get_optimizer_state_dict(model, opt, options=options)}
            if rank == 0:
                torch.save(saved, path)
            dist.barrier()
            train(model, opt, x, y, 3)
            want = full_params(model)
            continued_full[case_id] = want.tolist()
            loaded = torch.load(path, weights_only=True)
            model = shard(make_compact_model())
            opt = info.cls(model.parameters(), **kwargs)
            set_model_state_dict(model, loaded["model"], options=options)
            set_optimizer_state_dict(model, opt, loaded["optim"], options=options)
            _assert_compact(opt, sharded=True)
            train(model, opt, x, y, 3)
            return (full_params(model) - want).abs().max().item()
        check(records, f"fsdp-compact-full/{case_id}", full_dict)

        def rank_dict(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs,
                      case_id: str = case_id) -> float:
            # each rank's own opt.state_dict(), through torch.save/load(weights_only=True)
            model = shard(make_compact_model())
            opt = info.cls(model.parameters(), **kwargs)
            train(model, opt, x, y, 3)
            path = out / f"rank{rank}-{case_id}.pt"
            torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, path)
            train(model, opt, x, y, 3)
            want = full_params(model)
            loaded = torch.load(path, weights_only=True)
            model = shard(make_compact_model())
            model.load_state_dict(loaded["model"])
            opt = info.cls(model.parameters(), **kwargs)
            opt.load_state_dict(loaded["optim"])
            _assert_compact(opt, sharded=True)
            train(model, opt, x, y, 3)
            return (full_params(model) - want).abs().max().item()
        check(records, f"fsdp-compact-rank-dict/{case_id}", rank_dict)

        def from_plain(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs) -> float:
            # a one-process optimizer's state dict (plain whole tensors), compact and float32,
            # loaded with load_state_dict into FSDP2 objects: each rank takes its shard (the
            # float32 one is compacted), and continuing equals one process doing the same
            plain = {key: value for key, value in kwargs.items() if key not in (
                "state_dtype", "state_block_size")}
            diff = 0.0
            for source in (kwargs, plain):
                model = make_compact_model()
                opt = info.cls(model.parameters(), **source)
                train(model, opt, X, Y, 3)
                saved_model, saved = model.state_dict(), opt.state_dict()
                one = make_compact_model()
                one.load_state_dict(saved_model)
                one_opt = info.cls(one.parameters(), **kwargs)
                one_opt.load_state_dict(copy.deepcopy(saved))  # (no step count shared)
                train(one, one_opt, X, Y, 3)
                sharded = shard(make_compact_model())
                set_model_state_dict(sharded, saved_model,
                                     options=StateDictOptions(full_state_dict=True))
                sharded_opt = info.cls(sharded.parameters(), **kwargs)
                sharded_opt.load_state_dict(copy.deepcopy(saved))
                _assert_compact(sharded_opt, sharded=True)
                train(sharded, sharded_opt, x, y, 3)
                diff = max(diff, (full_params(sharded) - full_params(one)).abs().max().item())
            return diff
        check(records, f"fsdp-compact-from-plain/{case_id}", from_plain)
    if rank == 0:
        (out / "fsdp-compact-continued.json").write_text(json.dumps(continued))
        (out / "fsdp-compact-continued-full.json").write_text(json.dumps(continued_full))


def scenario_compact_load1(records: list[dict[str, Any]], out: Path) -> None:
    """One plain process loads the 2-rank DDP compact checkpoints and continues."""
    continued = json.loads((out / "compact-continued.json").read_text())
    for name, want in continued.items():
        info = next(info for info in OPTIMS if info.name == name.split("-")[0])
        state_dtype, path = name.split("-")[1:]
        kwargs = {**info.base, "state_dtype": state_dtype, **PATHS[path]}

        def run(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs, name: str = name,
                want: list[float] = want) -> float:
            model = make_model()
            opt = info.cls(model.parameters(), **kwargs)
            _dcp_load(model, opt, out / "ckpt-compact" / name)
            _assert_compact(opt, sharded=False)
            train(model, opt, X, Y, 3)
            return (full_params(model) - torch.tensor(want, dtype=torch.float64)).abs().max(
            ).item()
        check(records, f"dcp-compact-2to1/{name}", run)


def scenario_fsdp_compact_load1(records: list[dict[str, Any]], out: Path) -> None:
    """One plain process loads the 2-rank FSDP2 compact checkpoints and continues."""
    continued = json.loads((out / "fsdp-compact-continued.json").read_text())
    full_continued = json.loads((out / "fsdp-compact-continued-full.json").read_text())
    for info, case_id, kwargs in compact_cases():
        if not kwargs.get("foreach"):
            continue
        def run(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs,
                case_id: str = case_id) -> float:
            model = make_compact_model()
            opt = info.cls(model.parameters(), **kwargs)
            _dcp_load(model, opt, out / "ckpt-fsdp-compact" / case_id)
            _assert_compact(opt, sharded=False)
            train(model, opt, X, Y, 3)
            want = torch.tensor(continued[case_id], dtype=torch.float64)
            return (full_params(model) - want).abs().max().item()
        check(records, f"fsdp-dcp-compact-2to1/{case_id}", run)

        def full(info: OptimInfo = info, kwargs: dict[str, Any] = kwargs,
                 case_id: str = case_id) -> float:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            loaded = torch.load(out / f"full-{case_id}.pt", weights_only=True)
            model = make_compact_model()
            model.load_state_dict(loaded["model"])
            opt = info.cls(model.parameters(), **kwargs)
            set_optimizer_state_dict(model, opt, loaded["optim"],
                                     options=StateDictOptions(full_state_dict=True))
            _assert_compact(opt, sharded=False)
            train(model, opt, X, Y, 3)
            want = torch.tensor(full_continued[case_id], dtype=torch.float64)
            return (full_params(model) - want).abs().max().item()
        check(records, f"fsdp-compact-full-to1/{case_id}", full)


def _unsupported_layout() -> list[nn.Parameter]:
    """Parameters sharded along dim 1 (tensor parallelism's column split)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    return [nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(p.dim() - 1)]))
            for p in make_model().parameters()]


def scenario_compact(rank: int, world: int, records: list[dict[str, Any]], out: Path) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    x, y = batch(rank, world)
    continued: dict[str, list[float]] = {}
    for info in OPTIMS:
        for state_dtype in STATE_DTYPES:
            if info.name in COMPACT_METHODS:
                for path in ("foreach", "fused"):
                    compact = {**info.base, "state_dtype": state_dtype, **PATHS[path]}

                    def ddp(info: OptimInfo = info, kwargs: dict[str, Any] = compact) -> float:
                        model = DDP(make_model())
                        opt = info.cls(model.parameters(), **kwargs)
                        train(model, opt, x, y)
                        _assert_compact(opt, sharded=False)
                        diff = full_params(model.module) - reference(info, kwargs)
                        return diff.abs().max().item()
                    check(records, f"ddp-compact/{info.name}-{state_dtype}-{path}", ddp)

                    def build(info: OptimInfo = info, kwargs: dict[str, Any] = compact) -> Any:
                        model = DDP(make_model())
                        return model, info.cls(model.parameters(), **kwargs)

                    name = f"{info.name}-{state_dtype}-{path}"
                    check(records, f"dcp-compact-lazy/{name}", functools.partial(
                        dcp_lazy, build, x, y, functools.partial(reference, info, compact)))
                    check(records, f"dcp-compact-2to2/{name}", functools.partial(
                        dcp_round_trip, build, out / "ckpt-compact" / name, x, y, continued,
                        name))

            def at_construction(info: OptimInfo = info, state_dtype: str = state_dtype) -> float:
                params = _unsupported_layout()
                return _refused(lambda: info.cls(params, **info.base, state_dtype=state_dtype),
                                "Shard(dim=1)", "Shard(0)")
            check(records, f"fsdp-compact-refused/{info.name}-{state_dtype}", at_construction)

            def added(info: OptimInfo = info, state_dtype: str = state_dtype) -> float:
                plain = make_model()
                opt = info.cls(plain.parameters(), **info.base, state_dtype=state_dtype)
                params = _unsupported_layout()
                diff = _refused(lambda: opt.add_param_group({"params": params}),
                                "Shard(dim=1)", "Shard(0)")
                if len(opt.param_groups) != 1:
                    raise AssertionError("the refused group was added")
                return diff
            check(records, f"fsdp-compact-refused/{info.name}-{state_dtype}-added", added)
    if rank == 0:
        (out / "compact-continued.json").write_text(json.dumps(continued))


SCENARIOS = {"ddp": scenario_ddp, "zero": scenario_zero, "fsdp": scenario_fsdp}


def main() -> None:
    scenarios, out = sys.argv[1].split(","), Path(sys.argv[2])
    torch.set_num_threads(1)
    if scenarios == ["dcp-load1"]:
        records: list[dict[str, Any]] = []
        scenario_dcp_load1(records, out)
        scenario_compact_load1(records, out)
        scenario_fsdp_compact_load1(records, out)
        (out / "dcp-load1-rank0.json").write_text(json.dumps(records))
        return
    # a rank whose partner died fails its next collective within this time instead of hanging
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        for scenario in scenarios:
            records = []
            if scenario == "dcp":
                scenario_dcp(rank, world, records, out)
            elif scenario == "compact":
                scenario_compact(rank, world, records, out)
            elif scenario == "fsdp-compact":
                scenario_fsdp_compact(rank, world, records, out)
            else:
                SCENARIOS[scenario](rank, world, records)
            (out / f"{scenario}-rank{rank}.json").write_text(json.dumps(records))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
