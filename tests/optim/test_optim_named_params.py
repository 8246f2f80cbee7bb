"""``Optimizer(model.named_parameters())``, as torch.optim accepts it (issue #7, item 1).

``(name, tensor)`` pairs: the names go to each group's ``param_names`` and to ``state_dict()``,
the math does not see them, and state dicts load between named and unnamed optimizers, ours and
torch.optim's, in both directions -- with the same ``param_names`` afterwards as torch.optim ends
up with -- on the forloop, foreach and fused paths.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from helpers.optim_cases import OPTIMS, OptimInfo

PATHS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
SHAPES = [(4, 3), (3,), (2, 2, 2), (5,)]
NAMES = ["layer.weight", "layer.bias", "block.kernel", "head.bias"]


def make_params(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator, dtype=torch.float64).requires_grad_(True)
            for s in SHAPES]


def groups(params: list[torch.Tensor], named: bool) -> list[dict]:
    """Two groups (the second with its own lr), with or without names."""
    entries = list(zip(NAMES, params)) if named else list(params)
    return [{"params": entries[:2]}, {"params": entries[2:], "lr": 0.02}]


def build(info: OptimInfo, params, *, named: bool, torch_cls: bool = False, **flags):
    cls = info.torch_cls if torch_cls else info.cls
    return cls(groups(params, named), **{**info.base, **info.configs[-1], **flags})


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int, start: int = 0):
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(100 + step)
        for p in params:  # gradients that depend on the parameters (a smooth loss)
            p.grad = torch.sin(p.detach()) + 0.1 * torch.randn(
                p.shape, generator=generator, dtype=p.dtype)
        opt.step()
    return [p.detach().clone() for p in params]


def clone_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_(True) for p in params]


def torch_flags(info: OptimInfo, path: str) -> dict:
    """torch.optim's flags for the same path (forloop where torch has no fused kernel)."""
    if path == "fused" and not info.torch_fused:
        return {"foreach": False}
    return PATHS[path]


IDS = [info.name for info in OPTIMS]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("info", OPTIMS, ids=IDS)
def test_named_parameters_are_accepted_and_recorded_like_torch(info: OptimInfo, path: str):
    named_params, plain_params, torch_params = make_params(), make_params(), make_params()
    named = build(info, named_params, named=True, **PATHS[path])
    plain = build(info, plain_params, named=False, **PATHS[path])
    theirs = build(info, torch_params, named=True, torch_cls=True, **torch_flags(info, path))
    assert [g["param_names"] for g in named.param_groups] == [NAMES[:2], NAMES[2:]]
    assert all("param_names" not in g for g in plain.param_groups)
    assert all(isinstance(p, torch.Tensor) for g in named.param_groups for p in g["params"])

    # names do not change the math: bit for bit the same as without them
    for a, b in zip(run(named, named_params, 8), run(plain, plain_params, 8)):
        assert torch.equal(a, b)
    run(theirs, torch_params, 8)
    ours_groups = named.state_dict()["param_groups"]
    their_groups = theirs.state_dict()["param_groups"]
    assert [g["param_names"] for g in ours_groups] == [g["param_names"] for g in their_groups]
    assert [g["params"] for g in ours_groups] == [g["params"] for g in their_groups]
    if path != "fused" or info.torch_fused:
        assert ours_groups == their_groups
    # (same names, same tensors: parity with torch.optim itself is checked in the conformance
    # suite; here: the named runs agree as closely as the unnamed ones do)
    for a, b in zip(named_params, torch_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# (source, target): who saves (named or not, ours or torch), who loads
DIRECTIONS = [
    ("ours-named", "ours-plain"),
    ("ours-plain", "ours-named"),
    ("ours-named", "torch-plain"),
    ("ours-plain", "torch-named"),
    ("torch-named", "ours-plain"),
    ("torch-plain", "ours-named"),
    ("torch-named", "ours-named"),
]


def _make(info: OptimInfo, kind: str, params, path: str):
    owner, naming = kind.split("-")
    if owner == "torch":
        return build(info, params, named=naming == "named", torch_cls=True,
                     **torch_flags(info, path))
    return build(info, params, named=naming == "named", **PATHS[path])


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("source", "target"), DIRECTIONS, ids=[f"{a}->{b}" for a, b in DIRECTIONS])
@pytest.mark.parametrize("info", OPTIMS, ids=IDS)
def test_state_dict_loads_between_named_and_unnamed(info, source, target, path) -> None:
    params = make_params()
    first = _make(info, source, params, path)
    run(first, params, 5)
    saved = first.state_dict()
    at_save = clone_params(params)

    def load_and_continue(kind: str, load_path: str = path):
        resumed = clone_params(at_save)
        opt = _make(info, kind, resumed, load_path)
        opt.load_state_dict(copy.deepcopy(saved))
        # the loaded groups bring the saver's foreach/fused flags: run on this path instead
        flags = torch_flags(info, load_path) if kind.startswith("torch") else PATHS[load_path]
        for group in opt.param_groups:
            for key in ("foreach", "fused"):
                if key in flags or group.get(key):
                    group[key] = flags.get(key)
        return opt, run(opt, resumed, 5, start=5)

    second, continued = load_and_continue(target)
    # torch.optim's own loader on the same dict is the reference: for param_names (the saved
    # names win, else the optimizer keeps its own) and for how the run continues
    owner, naming = target.split("-")
    reference, expected = load_and_continue(f"torch-{naming}", "forloop")
    expected_names = [g.get("param_names") for g in reference.param_groups]
    assert [g.get("param_names") for g in second.param_groups] == expected_names
    assert [g.get("param_names") for g in second.state_dict()["param_groups"]] == expected_names
    # float64 parity with torch, looser where a fused kernel (float32 scalar state, scalars in
    # double) meets torch's forloop
    tolerance = 1e-9 if path == "fused" else info.parity_rtol
    for a, b in zip(continued, expected):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    if owner == "ours":  # names never reach the math: the other naming continues bit for bit
        _, twin = load_and_continue(f"ours-{'plain' if naming == 'named' else 'named'}")
        for a, b in zip(continued, twin):
            assert torch.equal(a, b)


def test_mixed_names_are_refused_like_torch() -> None:
    """Exactly the cases torch.optim refuses, with its message (code may match on it)."""
    a, b = make_params()[:2]
    for cls in (OPTIMS[0].cls, OPTIMS[0].torch_cls):
        with pytest.raises(ValueError, match="Some param names are missing"):
            cls([("a", a), b], lr=0.1)
        with pytest.raises(ValueError, match="cannot add param group with names"):
            cls([{"params": [a]}, {"params": [("b", b)]}], lr=0.1)
        with pytest.raises(ValueError, match="cannot add param group without names"):
            cls([{"params": [("a", a)]}, {"params": [b]}], lr=0.1)
        opt = cls([("a", a)], lr=0.1)
        with pytest.raises(ValueError, match="cannot add param group without names"):
            opt.add_param_group({"params": [b]})
        opt.add_param_group({"params": [("b", b)], "lr": 0.5})
        assert opt.param_groups[1]["param_names"] == ["b"]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("info", OPTIMS, ids=IDS)
def test_torch_save_and_weights_only_load_round_trip(info: OptimInfo, path: str) -> None:
    params = make_params()
    opt = build(info, params, named=True, **PATHS[path])
    run(opt, params, 4)

    def save() -> bytes:
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        return buffer.getvalue()

    blob = save()
    assert blob == save()  # deterministic: the same state saves to the same bytes
    loaded = torch.load(io.BytesIO(blob), weights_only=True)
    assert [g["param_names"] for g in loaded["param_groups"]] == [NAMES[:2], NAMES[2:]]
    # nothing is lost on disk: every state tensor comes back bit for bit
    live = opt.state_dict()
    for index, entries in live["state"].items():
        for key, value in entries.items():
            assert torch.equal(loaded["state"][index][key], value), (index, key)
    assert loaded["param_groups"] == live["param_groups"]

    def continued(state_dict: dict, named: bool) -> list[torch.Tensor]:
        resumed = clone_params(params)
        second = build(info, resumed, named=named, **PATHS[path])
        second.load_state_dict(copy.deepcopy(state_dict))
        # the saved names replace the optimizer's own, or become the group's names
        assert [g["param_names"] for g in second.param_groups] == [NAMES[:2], NAMES[2:]]
        return run(second, resumed, 4, start=4)

    # and a run resumed from the file continues exactly as one resumed from memory (loading
    # itself follows torch.optim: e.g. NAdam's mu_product takes the parameter's dtype)
    from_memory = continued(live, named=True)
    for named in (True, False):
        for a, b in zip(continued(loaded, named), from_memory):
            assert torch.equal(a, b)
