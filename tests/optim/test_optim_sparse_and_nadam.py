"""Two torch.optim parity holes, closed (issue #7, items 2 and 3).

* Sparse gradients with momentum: ``SGD(momentum=...)``, ``Momentum`` and ``NAG`` on an
  ``nn.Embedding(sparse=True)`` do what torch.optim.SGD does -- the update runs on the sparse
  tensors, the momentum buffer is sparse too -- with the same result.
* NAdam follows torch.optim.NAdam's arithmetic, including the float32 rounding of the
  ``mu_product`` state it multiplies in place: float64 trajectories agree to 1e-12 like every
  other method, and the stored ``mu_product`` is bit for bit torch's.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.optim_cases import BY_NAME

import torchopt_survey as tos

# (our class, our kwargs, torch.optim.SGD kwargs)
SPARSE_CASES = [
    (tos.SGD, {"momentum": 0.9}, {"momentum": 0.9}),
    (tos.SGD, {"momentum": 0.9, "dampening": 0.3, "maximize": True},
     {"momentum": 0.9, "dampening": 0.3, "maximize": True}),
    (tos.SGD, {"momentum": 0.5, "nesterov": True}, {"momentum": 0.5, "nesterov": True}),
    (tos.Momentum, {}, {"momentum": 0.9}),
    (tos.Momentum, {"momentum": 0.8, "nesterov": True}, {"momentum": 0.8, "nesterov": True}),
    (tos.NAG, {}, {"momentum": 0.9, "nesterov": True}),
    (tos.NAG, {"maximize": True}, {"momentum": 0.9, "nesterov": True, "maximize": True}),
    (tos.SGD, {}, {}),
]
SPARSE_IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}"
              for cls, kw, _ in SPARSE_CASES]


class Model(torch.nn.Module):
    """A sparse embedding and a dense layer in one parameter group (as real models have)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(20, 3, sparse=True)
        self.out = torch.nn.Linear(3, 1)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.out(self.emb(index))) ** 2).sum() + (self.emb(index) ** 2).sum()


def train(model: Model, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        index = torch.randint(0, 20, (8,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        model(index).backward()
        opt.step()


def pair() -> tuple[Model, Model]:
    torch.manual_seed(0)
    model = Model().double()
    return model, copy.deepcopy(model)


def assert_models_close(a: Model, b: Model, tol: float = 1e-12) -> None:
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("foreach", [False, True, None], ids=["forloop", "foreach", "default"])
@pytest.mark.parametrize(("cls", "kwargs", "torch_kwargs"), SPARSE_CASES, ids=SPARSE_IDS)
def test_sparse_gradients_with_momentum_match_torch(cls, kwargs, torch_kwargs, foreach) -> None:
    ours_model, torch_model = pair()
    ours = cls(ours_model.parameters(), lr=0.05, foreach=foreach, **kwargs)
    theirs = torch.optim.SGD(torch_model.parameters(), lr=0.05, foreach=foreach, **torch_kwargs)
    train(ours_model, ours, 15)
    train(torch_model, theirs, 15)
    assert_models_close(ours_model, torch_model)
    # same state: a sparse momentum buffer for the embedding, a dense one for the layer
    for p_ours, p_torch in zip(ours_model.parameters(), torch_model.parameters()):
        assert list(ours.state[p_ours]) == list(theirs.state[p_torch])
        if "momentum_buffer" in theirs.state[p_torch]:
            mine = ours.state[p_ours]["momentum_buffer"]
            ref = theirs.state[p_torch]["momentum_buffer"]
            assert mine.layout == ref.layout
            torch.testing.assert_close(mine.to_dense(), ref.to_dense(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("direction", ["ours->torch", "torch->ours"])
def test_sparse_momentum_state_dict_round_trip(direction: str) -> None:
    """A sparse momentum buffer moves between ours and torch.optim and the run continues."""
    source_model, target_model = pair()
    make_ours = lambda m: tos.Momentum(m.parameters(), lr=0.05)  # noqa: E731
    make_torch = lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)  # noqa: E731
    make_source, make_target = (
        (make_ours, make_torch) if direction == "ours->torch" else (make_torch, make_ours))
    source = make_source(source_model)
    train(source_model, source, 6)
    target_model.load_state_dict(source_model.state_dict())
    target = make_target(target_model)
    target.load_state_dict(copy.deepcopy(source.state_dict()))
    train(source_model, source, 6, start=6)
    train(target_model, target, 6, start=6)
    assert_models_close(target_model, source_model)


@pytest.mark.parametrize("name", ["SGD", "Momentum", "NAG"])
def test_sparse_gradients_refused_where_torch_refuses_them(name: str) -> None:
    """weight_decay (sparse + dense is undefined) and fused=True: same error type as torch."""
    cls = getattr(tos, name)
    momentum = {} if name == "SGD" else None
    for flags in ({"weight_decay": 0.1}, {"fused": True}):
        errors = []
        for make in (cls, torch.optim.SGD):
            kwargs = dict(flags, lr=0.1)
            if make is torch.optim.SGD and momentum is None:
                kwargs.update(momentum=0.9, nesterov=name == "NAG")
            emb = torch.nn.Embedding(5, 2, sparse=True)
            opt = make(emb.parameters(), **kwargs)
            emb(torch.tensor([1, 2])).sum().backward()
            with pytest.raises(RuntimeError) as info:
                opt.step()
            errors.append(info.type)
        assert errors[0] is errors[1]


# ------------------------------------------------------------------------------------------
# NAdam: torch.optim's arithmetic
# ------------------------------------------------------------------------------------------
NADAM_CONFIGS = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled_weight_decay": True, "momentum_decay": 0.01},
    {"maximize": True, "betas": (0.8, 0.99)},
]


def nadam_problem(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2)]
    params = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    targets = [torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes]
    return params, targets


def nadam_run(opt, params, targets, steps: int) -> None:
    for _ in range(steps):
        for p, t in zip(params, targets):
            p.grad = 2 * (p.detach() - t) + 0.1 * torch.sin(p.detach())
        opt.step()


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("config", NADAM_CONFIGS, ids=lambda c: "-".join(map(str, c)) or "default")
def test_nadam_float64_parity_at_the_tolerance_of_the_others(config: dict, foreach: bool) -> None:
    # the same tolerance as every other method of the conformance table
    tolerance = BY_NAME["Adam"].parity_rtol
    assert BY_NAME["NAdam"].parity_rtol == tolerance <= 1e-12
    start, targets = nadam_problem()
    ours_params = [p.clone().requires_grad_(True) for p in start]
    torch_params = [p.clone().requires_grad_(True) for p in start]
    ours = tos.NAdam(ours_params, lr=0.01, foreach=foreach, **config)
    theirs = torch.optim.NAdam(torch_params, lr=0.01, foreach=foreach, **config)
    nadam_run(ours, ours_params, targets, 200)
    nadam_run(theirs, torch_params, targets, 200)
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
        # the float32 product is torch's, bit for bit: the rounding is the same
        assert torch.equal(ours.state[a]["mu_product"], theirs.state[b]["mu_product"])
        assert ours.state[a]["mu_product"].dtype == theirs.state[b]["mu_product"].dtype


def test_nadam_follows_the_state_dtype_after_loading_like_torch() -> None:
    """torch.optim casts a loaded mu_product to the parameter's dtype (float64 here) and then
    multiplies in float64; ours does the same, so a resumed run stays on torch's trajectory."""
    start, targets = nadam_problem(1)
    source_params = [p.clone().requires_grad_(True) for p in start]
    source = torch.optim.NAdam(source_params, lr=0.01)
    nadam_run(source, source_params, targets, 20)
    runs = []
    for cls in (tos.NAdam, torch.optim.NAdam):
        for foreach in (False, True):
            params = [p.detach().clone().requires_grad_(True) for p in source_params]
            opt = cls(params, lr=0.01, foreach=foreach)
            opt.load_state_dict(copy.deepcopy(source.state_dict()))
            opt.param_groups[0]["foreach"] = foreach  # (the loaded group brought the saver's)
            assert opt.state[params[0]]["mu_product"].dtype == torch.float64
            nadam_run(opt, params, targets, 100)
            runs.append(params)
    for params in runs[:-1]:
        for a, b in zip(params, runs[-1]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_nadam_foreach_with_state_of_two_dtypes_like_torch() -> None:
    """A state dict saved before one parameter ever had a gradient: after loading, the loaded
    mu_product is float64 (torch casts it to the parameter's dtype) and the new one float32.
    The foreach step must multiply each in its own precision, as torch's does."""
    start, targets = nadam_problem(2)
    source_params = [p.clone().requires_grad_(True) for p in start]
    source = torch.optim.NAdam(source_params, lr=0.01)
    for _ in range(5):  # the last parameter never gets a gradient: no state for it
        for p, t in zip(source_params[:-1], targets):
            p.grad = 2 * (p.detach() - t)
        source.step()
    runs = []
    for cls in (tos.NAdam, torch.optim.NAdam):
        params = [p.detach().clone().requires_grad_(True) for p in source_params]
        opt = cls(params, lr=0.01, foreach=True)
        opt.load_state_dict(copy.deepcopy(source.state_dict()))
        opt.param_groups[0]["foreach"] = True  # (the loaded group brought the saver's None)
        nadam_run(opt, params, targets, 50)
        assert opt.state[params[0]]["mu_product"].dtype == torch.float64
        assert opt.state[params[-1]]["mu_product"].dtype == torch.float32
        runs.append((params, opt))
    (ours_params, ours), (torch_params, theirs) = runs
    for a, b in zip(ours_params, torch_params):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert torch.equal(ours.state[a]["mu_product"], theirs.state[b]["mu_product"])
