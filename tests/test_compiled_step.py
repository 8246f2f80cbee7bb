"""compile_step: the compiled training step equals the eager one, compiles once, and refuses
what it cannot compile.

Tolerances: float64 trajectories agree to 1e-10 (only the order of floating-point sums may
differ between Inductor's kernels and eager's); float32 ones to the suite's float32 tolerance
(atol 1e-6, rtol 1e-5, as for per-replica runs).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import torchopt_survey as ts
from torchopt_survey.compiled import _SHARED_PROGRAMS, _rewrite

FLOAT32_TOL = {"atol": 1e-6, "rtol": 1e-5}
FLOAT64_TOL = {"atol": 1e-10, "rtol": 1e-10}

FIRST_ORDER = {
    "SGD": (ts.SGD, {"lr": 0.1}),
    "Momentum": (ts.Momentum, {"lr": 0.1, "momentum": 0.9}),
    "NAG": (ts.NAG, {"lr": 0.1, "momentum": 0.9}),
    "Adagrad": (ts.Adagrad, {"lr": 0.1}),
    "Adadelta": (ts.Adadelta, {"lr": 1.0}),
    "RMSprop": (ts.RMSprop, {"lr": 0.01}),
    "Adam": (ts.Adam, {"lr": 0.01}),
    "AdamW": (ts.AdamW, {"lr": 0.01}),
    "AMSGrad": (ts.AMSGrad, {"lr": 0.01}),
    "NAdam": (ts.NAdam, {"lr": 0.01}),
    "Adamax": (ts.Adamax, {"lr": 0.01}),
}


def _mlp(dtype: torch.dtype, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 6), activation(), nn.Linear(6, 3)).to(dtype)


def _batches(n: int, batch: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 7, generator=gen, dtype=dtype),
             torch.randint(0, 3, (batch,), generator=gen)) for _ in range(n)]


def _eager_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def _assert_same_run(model: nn.Module, opt: torch.optim.Optimizer, twin: nn.Module,
                     twin_opt: torch.optim.Optimizer, tol: dict[str, float]) -> None:
    for ours, theirs in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(ours, theirs, **tol)
    for ours, theirs in zip(opt.state.values(), twin_opt.state.values()):
        assert ours.keys() == theirs.keys()
        for key in ours:
            # scalar state stored in float32 (step counts, NAdam's mu_product) is compared as
            # float32 whatever the parameters' dtype
            entry_tol = FLOAT32_TOL if ours[key].dtype == torch.float32 else tol
            torch.testing.assert_close(ours[key], theirs[key], **entry_tol, check_dtype=False)


def _compare(cls: type, kwargs: dict, dtype: torch.dtype, batch: int, steps: int,
             tol: dict[str, float], twin_cls: type | None = None) -> ts.CompiledStep:
    model = _mlp(dtype)
    twin = copy.deepcopy(model)
    opt = cls(model.parameters(), **kwargs)
    twin_opt = (twin_cls or cls)(twin.parameters(), **kwargs)
    step = ts.compile_step(model, F.cross_entropy, opt)
    for x, y in _batches(steps, batch, dtype):
        loss = step(x, y)
        expected = _eager_step(twin, twin_opt, x, y)
        torch.testing.assert_close(loss, expected, **tol)
        assert all(p.grad is None for p in model.parameters())
    _assert_same_run(model, opt, twin, twin_opt, tol)
    return step


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize(("name", "torch_cls", "kwargs"), [
    ("SGD", torch.optim.SGD, {"lr": 0.1}),
    ("Momentum", torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
    ("Adam", torch.optim.Adam, {"lr": 0.01}),
])
def test_float32_equals_eager_torch_optim(name: str, torch_cls: type, kwargs: dict,
                                          batch: int) -> None:
    step = _compare(FIRST_ORDER[name][0], kwargs, torch.float32, batch, 4, FLOAT32_TOL,
                    twin_cls=torch_cls)
    assert step.compilations == 1
    # state that the first gradient creates (the momentum buffer) is made by one eager step
    assert step.eager_steps == (1 if name != "SGD" else 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FIRST_ORDER))
def test_float64_equals_eager_every_first_order_class(name: str) -> None:
    cls, kwargs = FIRST_ORDER[name]
    step = _compare(cls, kwargs, torch.float64, 3, 4, FLOAT64_TOL)
    assert step.compilations == 1


def test_scheduler_changes_lr_without_compiling() -> None:
    model, twin = _mlp(torch.float32), _mlp(torch.float32)
    opt, twin_opt = ts.Momentum(model.parameters(), lr=0.1), ts.Momentum(twin.parameters(),
                                                                           lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    twin_sched = torch.optim.lr_scheduler.StepLR(twin_opt, step_size=1, gamma=0.5)
    step = ts.compile_step(model, F.cross_entropy, opt)
    for x, y in _batches(5, 4, torch.float32):
        step(x, y)
        _eager_step(twin, twin_opt, x, y)
        sched.step()
        twin_sched.step()
    assert step.compilations == 1
    _assert_same_run(model, opt, twin, twin_opt, FLOAT32_TOL)


def test_one_program_per_batch_shape() -> None:
    model = _mlp(torch.float32)
    step = ts.compile_step(model, F.cross_entropy, ts.SGD(model.parameters(), lr=0.1))
    (x, y), = _batches(1, 6, torch.float32)
    step(x, y)
    step(x[:2], y[:2])  # a last, shorter batch
    step(x, y)
    step(x[:2], y[:2])
    assert step.compilations == 2


def test_program_is_shared_by_models_of_one_architecture() -> None:
    """The next run's model reuses the compiled program, and trains its own tensors with it."""
    first = _compare(ts.Adam, {"lr": 0.02}, torch.float32, 4, 2, FLOAT32_TOL)
    programs = len(_SHARED_PROGRAMS)
    second = _compare(ts.Adam, {"lr": 0.02}, torch.float32, 4, 3, FLOAT32_TOL)
    assert second.compilations == 1 and len(_SHARED_PROGRAMS) == programs
    assert list(second._programs.values()) == list(first._programs.values())


@pytest.mark.parametrize("batch", [1, 4])
def test_gradient_norms_come_out_of_the_program(batch: int) -> None:
    model, twin = _mlp(torch.float32), _mlp(torch.float32)
    opt, twin_opt = ts.Adam(model.parameters(), lr=0.01), ts.Adam(twin.parameters(), lr=0.01)
    step = ts.compile_step(model, F.cross_entropy, opt, grad_norms=True)
    assert step.parameter_names == [name for name, _ in model.named_parameters()]
    for x, y in _batches(3, batch, torch.float32):
        step(x, y)
        twin_opt.zero_grad()
        F.cross_entropy(twin(x), y).backward()
        expected = torch.stack([p.grad.norm() for p in twin.parameters()])
        twin_opt.step()
        torch.testing.assert_close(step.grad_norms, expected, **FLOAT32_TOL)
    assert step.eager_steps == 1 and step.compilations == 1
    step.eager(*_batches(1, batch, torch.float32)[0])  # leaves .grad for a histogram
    assert all(p.grad is not None for p in model.parameters())


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path) -> None:
    batches = _batches(6, 4, torch.float32)
    model = _mlp(torch.float32)
    opt = ts.Adam(model.parameters(), lr=0.01)
    step = ts.compile_step(model, F.cross_entropy, opt)
    for x, y in batches[:3]:
        step(x, y)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    for x, y in batches[3:]:
        step(x, y)

    saved = torch.load(path, weights_only=True)
    resumed = _mlp(torch.float32)
    resumed.load_state_dict(saved["model"])
    resumed_opt = ts.Adam(resumed.parameters(), lr=0.01)
    resumed_opt.load_state_dict(saved["opt"])
    resumed_step = ts.compile_step(resumed, F.cross_entropy, resumed_opt)
    for x, y in batches[3:]:
        resumed_step(x, y)
    assert resumed_step.eager_steps == 0  # the loaded state is complete: compiled from the start
    _assert_same_run(model, opt, resumed, resumed_opt, {"atol": 0, "rtol": 0})


def test_parameters_outside_the_optimizer_stay_fixed() -> None:
    model, twin = _mlp(torch.float32), _mlp(torch.float32)
    opt = ts.SGD(model[2].parameters(), lr=0.1)
    twin_opt = ts.SGD(twin[2].parameters(), lr=0.1)
    before = model[0].weight.detach().clone()
    step = ts.compile_step(model, F.cross_entropy, opt)
    for x, y in _batches(3, 4, torch.float32):
        step(x, y)
        _eager_step(twin, twin_opt, x, y)
    assert torch.equal(model[0].weight, before)
    _assert_same_run(model, opt, twin, twin_opt, FLOAT32_TOL)


def test_outer_product_becomes_a_broadcast_multiply() -> None:
    """At batch 1 a weight gradient is an mm with inner size 1: rewritten so that it fuses."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def grad_and_update(w: torch.Tensor, d: torch.Tensor, x: torch.Tensor,
                        step: torch.Tensor) -> torch.Tensor:
        scale = 1 - 0.9 ** (step + 1)
        return w - (d.t() @ x) / scale

    args = (torch.randn(5, 4), torch.randn(1, 5), torch.randn(1, 4), torch.tensor(3.0))
    graph = make_fx(grad_and_update)(*args)
    _rewrite(graph.graph)
    graph.recompile()
    targets = [node.target for node in graph.graph.nodes]
    assert torch.ops.aten.mm.default not in targets
    assert torch.ops.aten.mul.Tensor in targets
    torch.testing.assert_close(graph(*args), grad_and_update(*args), rtol=0, atol=0)
    realized = [node for node in graph.graph.nodes
                if node.meta.get("inductor_realize_to_strides")]
    assert realized and all(node.meta["val"].numel() == 1 for node in realized)


def test_deterministic_algorithms_mode_compiles() -> None:
    """The experiments run with torch.use_deterministic_algorithms(True)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        step = _compare(ts.SGD, {"lr": 0.1}, torch.float32, 4, 2, FLOAT32_TOL)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert step.compilations == 1


def test_groups_added_after_compiling_are_refused() -> None:
    model = _mlp(torch.float32)
    opt = ts.SGD(model[0].parameters(), lr=0.1)
    step = ts.compile_step(model, F.cross_entropy, opt)
    opt.add_param_group({"params": model[2].parameters()})
    with pytest.raises(RuntimeError, match="groups changed"):
        step(*_batches(1, 4, torch.float32)[0])


def test_bad_arguments_are_refused() -> None:
    model = _mlp(torch.float32)
    with pytest.raises(TypeError, match="optimizer"):
        ts.compile_step(model, F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="closure"):
        ts.compile_step(model, F.cross_entropy, ts.NewtonCG(model.parameters()))
    with pytest.raises(TypeError, match="model"):
        ts.compile_step(lambda x: x, F.cross_entropy, ts.SGD(model.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="grad_norms"):
        ts.compile_step(model, F.cross_entropy, ts.SGD(model.parameters(), lr=0.1),
                        grad_norms="yes")
    with pytest.raises(TypeError, match="loss_fn"):
        ts.compile_step(model, "cross_entropy", ts.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="buffers"):
        bn = nn.Sequential(nn.Linear(7, 3), nn.BatchNorm1d(3))
        ts.compile_step(bn, F.cross_entropy, ts.SGD(bn.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="not a parameter of model"):
        ts.compile_step(model, F.cross_entropy, ts.SGD([nn.Parameter(torch.ones(2))], lr=0.1))
    with pytest.raises(ValueError, match="lr"):
        ts.compile_step(model, F.cross_entropy,
                        ts.SGD([{"params": model.parameters(), "lr": torch.ones(2)}], lr=0.1))
    with pytest.raises(ValueError, match="betas"):
        ts.compile_step(model, F.cross_entropy, ts.Adam(
            model.parameters(), betas=(torch.tensor(0.9), torch.tensor(0.99))))
    opt = ts.SGD(model.parameters(), lr=0.1)
    opt.register_step_pre_hook(lambda *args: None)
    with pytest.raises(ValueError, match="hooks"):
        ts.compile_step(model, F.cross_entropy, opt)


# a process that compiles one step and prints Inductor's cache counters and its losses
_CACHE_PROBE = """
import json, torch
import torchopt_survey as ts
from torch._dynamo.utils import counters
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
step = ts.compile_step(model, torch.nn.functional.cross_entropy, ts.Adam(model.parameters()))
x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
losses = [float(step(x, y)) for _ in range(3)]
print(json.dumps({"losses": losses, "inductor": dict(counters["inductor"]),
                  "aot": dict(counters["aot_autograd"])}))
"""


def test_a_new_process_loads_the_step_from_inductors_disk_caches(tmp_path) -> None:
    """The next worker or command does not lower the step and generate its code again: it
    finds the program in Inductor's FX graph cache and AOTAutograd's cache on disk."""
    import json
    import os
    import subprocess
    import sys

    from helpers.processes import checkout_pythonpath

    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               OMP_NUM_THREADS="1", PYTHONPATH=checkout_pythonpath())
    env.pop("TORCHINDUCTOR_FORCE_DISABLE_CACHES", None)
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["inductor"].get("fxgraph_cache_miss") == 1, first
    assert second["inductor"].get("fxgraph_cache_hit") == 1, second
    assert second["aot"].get("autograd_cache_hit") == 1, second
    assert second["losses"] == first["losses"]
