"""Conformance suite, parametrised over every optimizer (see ``helpers.optim_cases.OPTIMS``).

Each test states one property a torch.optim drop-in must have and checks it for all methods:
same trajectory as torch.optim, forloop == foreach, state_dict round trips (also to and from
torch.optim), complex/zero-size/no-grad parameters, tensor lr with schedulers, hooks,
deepcopy/pickle, capturable (device-tensor scalars), differentiable steps and torch.compile.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from helpers.conformance_problem import groups, loss_fn, make_params, problem, run
from helpers.optim_cases import CASE_IDS, CASES, OPTIMS, OptimInfo

STEPS = 200


def build(info: OptimInfo, config: dict, params, *, ours: bool = True, **flags):
    cls = info.cls if ours else info.torch_cls
    return cls(groups(params), **{**info.base, **config, **flags})


def assert_params_close(actual, expected, **tolerance):
    for index, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a, e, msg=lambda m, i=index: f"param {i}: {m}", **tolerance)


# ------------------------------------------------------------------------------------------
# torch.optim parity
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize(("info", "config"), CASES, ids=CASE_IDS)
def test_same_trajectory_as_torch(info: OptimInfo, config: dict, foreach: bool) -> None:
    targets, weights = problem()
    ours_params, torch_params = make_params(), make_params()
    ours_opt = build(info, config, ours_params, foreach=foreach)
    torch_opt = build(info, config, torch_params, ours=False, foreach=foreach)
    assert_params_close(
        run(ours_opt, ours_params, STEPS, targets, weights),
        run(torch_opt, torch_params, STEPS, targets, weights),
        rtol=info.parity_rtol, atol=info.parity_rtol,
    )
    # same state layout, same values
    for p_ours, p_torch in zip(ours_params, torch_params):
        state_ours, state_torch = ours_opt.state[p_ours], torch_opt.state[p_torch]
        assert list(state_ours) == list(state_torch)
        for key in state_torch:
            torch.testing.assert_close(
                state_ours[key], state_torch[key], rtol=info.parity_rtol, atol=info.parity_rtol
            )


# Largest |ours - torch| after 200 float32 steps (forloop and foreach alike; parameters of
# size ~1-3), measured: 0 for the methods that run torch's operations; Adadelta 2.4e-7;
# Adam, AdamW, AMSGrad 1.2e-7 (bias corrections folded into scalars: 1-ulp differences);
# NAdam 3.9e-5 (mu_product in double, see README). Tolerances: about 4x the measurement.
FLOAT32_ATOL = {
    "SGD": 0.0, "Momentum": 0.0, "Adagrad": 0.0, "RMSprop": 0.0, "Adamax": 0.0,
    "NAG": 2e-6,  # Nesterov in two in-place passes: 7.2e-7 measured after 200 steps
    "Adadelta": 1e-6, "Adam": 5e-7, "AdamW": 5e-7, "AMSGrad": 5e-7, "NAdam": 2e-4,
}


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_float32_trajectory_matches_torch(info: OptimInfo, foreach: bool) -> None:
    targets, weights = problem(dtype=torch.float32)
    ours_params = make_params(torch.float32)
    torch_params = make_params(torch.float32)
    ours_opt = build(info, info.configs[0], ours_params, foreach=foreach)
    torch_opt = build(info, info.configs[0], torch_params, ours=False, foreach=foreach)
    # Near the optimum an adaptive step is about +-lr whatever the gradient's size, so its
    # sign follows the rounding of a tiny gradient: a 1-ulp difference in how the same
    # formula is evaluated (Adam/NAdam fold their bias corrections into scalars) can move an
    # element by a few ulps after 200 float32 steps. float64 runs agree to 1e-12.
    tolerance = FLOAT32_ATOL[info.name]
    assert_params_close(
        run(ours_opt, ours_params, STEPS, targets, weights),
        run(torch_opt, torch_params, STEPS, targets, weights),
        rtol=0, atol=tolerance,
    )


@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_param_groups_and_state_dict_layout_match_torch(info: OptimInfo) -> None:
    targets, weights = problem()
    ours_params, torch_params = make_params(), make_params()
    ours_opt = build(info, info.configs[-1], ours_params)
    torch_opt = build(info, info.configs[-1], torch_params, ours=False)
    assert [set(g) for g in ours_opt.param_groups] == [set(g) for g in torch_opt.param_groups]
    run(ours_opt, ours_params, 3, targets, weights)
    run(torch_opt, torch_params, 3, targets, weights)
    ours_sd, torch_sd = ours_opt.state_dict(), torch_opt.state_dict()
    assert ours_sd["param_groups"] == torch_sd["param_groups"]
    assert list(ours_sd["state"]) == list(torch_sd["state"])
    for index in torch_sd["state"]:
        assert list(ours_sd["state"][index]) == list(torch_sd["state"][index])
        for key, value in torch_sd["state"][index].items():
            assert ours_sd["state"][index][key].dtype == value.dtype
            assert ours_sd["state"][index][key].shape == value.shape


@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_complex_params_match_torch(info: OptimInfo) -> None:
    targets, weights = problem(complex_=True, dtype=torch.complex128)
    weights = [w.real for w in weights]
    ours_params = make_params(torch.complex128, complex_=True)
    torch_params = make_params(torch.complex128, complex_=True)
    for foreach in (False, True):
        ours_opt = build(info, info.configs[-1], ours_params, foreach=foreach)
        torch_opt = build(info, info.configs[-1], torch_params, ours=False, foreach=foreach)
        assert_params_close(
            run(ours_opt, ours_params, 30, targets, weights),
            run(torch_opt, torch_params, 30, targets, weights),
            rtol=info.parity_rtol, atol=info.parity_rtol,
        )


# ------------------------------------------------------------------------------------------
# forloop == foreach, every dtype
# ------------------------------------------------------------------------------------------
DTYPE_TOLERANCE = {
    torch.float64: {"rtol": 0, "atol": 0},
    torch.float32: {"rtol": 1e-6, "atol": 1e-7},  # 1-ulp level
    # half precision: the paths round intermediate results differently (torch.optim's own
    # forloop and foreach differ as much). Largest measured |loop - each| / (1 + |each|) after
    # 10 steps over all cases: bf16 0.022 (8 ulps of 2**-8), fp16 0.0018 -- while dropping
    # any flag in one path moves some case by more than these tolerances (see half_config)
    torch.bfloat16: {"rtol": 2**-5, "atol": 2**-5},
    torch.float16: {"rtol": 2**-8, "atol": 2**-8},
}


def half_config(info: OptimInfo, config: dict) -> dict:
    """The case's flags at values whose effect in 10 half-precision steps is well above the
    rounding noise between the paths, so a path that ignored one fails the comparison."""
    config = dict(config)
    if "eps" in info.cls._hyperparameters:
        # eps=1e-8 is 0 in half precision: 0/0 would make the comparison about NaN placement
        config["eps"] = 1e-3
    if info.base["lr"] <= 0.01:
        config["lr"] = 0.05
    if config.get("weight_decay"):
        config["weight_decay"] = 0.5  # 0.1 * lr 0.01 per step is below a bf16 ulp
    if "lr_decay" in config:
        config["lr_decay"] = 0.2
    if "momentum_decay" in config:
        config["momentum_decay"] = 5.0
    if config.get("amsgrad") or info.base.get("amsgrad"):
        config["betas"] = (0.5, 0.5)  # v must fall below its running max within 10 steps
    return config


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCE), ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize(("info", "config"), CASES, ids=CASE_IDS)
def test_forloop_equals_foreach(info: OptimInfo, config: dict, dtype: torch.dtype) -> None:
    targets, weights = problem(dtype=torch.float64)
    loop_params, each_params = make_params(dtype), make_params(dtype)
    if dtype in (torch.float16, torch.bfloat16):
        config = half_config(info, config)
    loop_opt = build(info, config, loop_params, foreach=False)
    each_opt = build(info, config, each_params, foreach=True)
    steps = 50 if dtype in (torch.float64, torch.float32) else 10
    assert_params_close(
        run(loop_opt, loop_params, steps, targets, weights),
        run(each_opt, each_params, steps, targets, weights),
        **DTYPE_TOLERANCE[dtype],
    )


# ------------------------------------------------------------------------------------------
# state_dict round trips
# ------------------------------------------------------------------------------------------
ROUND_TRIPS = [
    ("ours-forloop", "ours-forloop"),
    ("ours-forloop", "ours-foreach"),
    ("ours-foreach", "torch"),
    ("torch", "ours-foreach"),
    ("torch", "ours-forloop"),
]


def _make(info: OptimInfo, kind: str, params, config):
    if kind == "torch":
        return build(info, config, params, ours=False)
    return build(info, config, params, foreach=kind.endswith("foreach"))


ROUND_TRIP_IDS = [f"{a}->{b}" for a, b in ROUND_TRIPS]


@pytest.mark.parametrize(("source", "target"), ROUND_TRIPS, ids=ROUND_TRIP_IDS)
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_state_dict_round_trip_continues_identically(info, source, target) -> None:
    targets, weights = problem()
    config = info.configs[-1]
    params = make_params()
    first = _make(info, source, params, config)
    run(first, params, 10, targets, weights)
    saved = copy.deepcopy(first.state_dict())
    resumed_params = [p.detach().clone().requires_grad_(True) for p in params]
    expected = run(first, params, 10, targets, weights)

    second = _make(info, target, resumed_params, config)
    second.load_state_dict(saved)
    assert_params_close(run(second, resumed_params, 10, targets, weights), expected,
                        rtol=info.parity_rtol, atol=info.parity_rtol)


# ------------------------------------------------------------------------------------------
# parameters without gradients, zero-size parameters, closures, hooks, copies
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_params_without_grad_and_zero_size(info: OptimInfo, foreach: bool) -> None:
    frozen = torch.randn(3, requires_grad=True)
    empty = torch.zeros(0, 4, requires_grad=True)
    live = torch.randn(4, requires_grad=True)
    opt = info.cls([frozen, empty, live], **info.base, foreach=foreach)
    before, live_before = frozen.detach().clone(), live.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        (live**2).sum().backward()
        empty.grad = torch.zeros_like(empty)
        opt.step()
    assert torch.equal(frozen, before)
    # only torch.optim.Adagrad creates state in its constructor; the others do it lazily
    assert (frozen in opt.state) == (info.name == "Adagrad")
    assert empty.shape == (0, 4)
    # the parameter with a gradient took its steps: it moved, downhill on (live**2).sum()
    assert not torch.equal(live, live_before)
    assert (live**2).sum() < (live_before**2).sum()


@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_closure_and_hooks(info: OptimInfo) -> None:
    param = torch.randn(5, requires_grad=True)
    opt = info.cls([param], **info.base)
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    before = param.detach().clone()
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and calls == ["pre", "post"]
    assert loss.item() == (before**2).sum().item()  # the loss at the point before the step
    # the step used the gradient the closure computed: the parameter moved downhill
    assert not torch.equal(param, before)
    assert (param**2).sum() < loss


COPY_FLAGS = [{}, {"capturable": True}, {"fused": True}]


@pytest.mark.parametrize("flags", COPY_FLAGS, ids=["default", "capturable", "fused"])
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_deepcopy_and_pickle(info: OptimInfo, flags: dict) -> None:
    if flags.get("capturable") and not info.capturable:
        pytest.skip(f"torch.optim.{info.torch_cls.__name__} has no capturable flag")
    targets, weights = problem()
    params = make_params()
    config = info.configs[-1]
    if info.name == "SGD":
        config = {**config, "momentum": 0.9}  # plain SGD keeps no state: give it some to copy
    opt = build(info, config, params, **flags)
    run(opt, params, 3, targets, weights)
    clones = [copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))]
    for clone in clones:
        assert type(clone) is type(opt)
        assert clone.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
        clone_params = [p for group in clone.param_groups for p in group["params"]]
        assert len(clone.state) == len(opt.state) == len(params)
        for param, clone_param in zip(params, clone_params, strict=True):
            assert torch.equal(clone_param, param) and clone_param is not param
            state, clone_state = opt.state[param], clone.state[clone_param]
            assert list(clone_state) == list(state)
            for key, value in state.items():
                copied = clone_state[key]
                assert copied.dtype == value.dtype and copied.device == value.device, key
                assert torch.equal(copied, value), key
                assert copied.data_ptr() != value.data_ptr(), key  # a copy, not shared
    # each copy continues the original's trajectory exactly, independently of it
    expected = run(opt, params, 5, targets, weights)
    for clone in clones:
        clone_params = [p for group in clone.param_groups for p in group["params"]]
        for got, want in zip(run(clone, clone_params, 5, targets, weights), expected):
            assert torch.equal(got, want)


# ------------------------------------------------------------------------------------------
# tensor lr and schedulers
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_tensor_lr_with_scheduler_matches_float_lr(info: OptimInfo, foreach: bool) -> None:
    targets, weights = problem()
    tensor_params, float_params = make_params(), make_params()
    base = dict(info.base)
    lr = base.pop("lr")
    tensor_opt = info.cls(tensor_params, lr=torch.tensor(lr, dtype=torch.float64),
                          foreach=foreach, **base)
    float_opt = info.torch_cls(float_params, lr=lr, **base)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5)
                  for o in (tensor_opt, float_opt)]
    for _ in range(20):
        for opt, params in ((tensor_opt, tensor_params), (float_opt, float_params)):
            run(opt, params, 1, targets, weights)
        for scheduler in schedulers:
            scheduler.step()
    assert isinstance(tensor_opt.param_groups[0]["lr"], torch.Tensor)
    tolerance = max(info.parity_rtol, 1e-10)
    assert_params_close(tensor_params, float_params, rtol=tolerance, atol=tolerance)


# ------------------------------------------------------------------------------------------
# capturable: scalars kept as device tensors, no host reads (checked on CPU here)
# ------------------------------------------------------------------------------------------
CAPTURABLE = [info for info in OPTIMS if info.capturable]


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize("info", CAPTURABLE, ids=[i.name for i in CAPTURABLE])
def test_capturable_matches_default(info: OptimInfo, foreach: bool) -> None:
    # Capturable steps compute bias corrections from the step tensor, whose dtype is the
    # default dtype (float32 would lose ~1e-5 in 1 - beta2**t, as in torch.optim); use float64.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _check_capturable(info, foreach)
    finally:
        torch.set_default_dtype(previous)


def _check_capturable(info: OptimInfo, foreach: bool) -> None:
    targets, weights = problem()
    cap_params, plain_params = make_params(), make_params()
    config = info.configs[-1]
    cap_opt = build(info, config, cap_params, foreach=foreach, capturable=True)
    plain_opt = build(info, config, plain_params, foreach=foreach)
    assert_params_close(
        run(cap_opt, cap_params, 50, targets, weights),
        run(plain_opt, plain_params, 50, targets, weights),
        rtol=1e-9, atol=1e-10,
    )
    step = cap_opt.state[cap_params[0]]["step"]
    assert step.device == cap_params[0].device and step.item() == 50


@pytest.mark.parametrize("flags", [{"foreach": True}, {"capturable": True}, {"fused": True}],
                         ids=["default", "capturable", "fused"])
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_step_under_graph_capture(info: OptimInfo, flags: dict, monkeypatch) -> None:
    # CUDA graph capture simulated on the CPU: what torch.optim refuses (a class with a
    # ``capturable`` option, neither capturable nor fused) is refused; the rest steps
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    if "capturable" in flags and not info.capturable:
        pytest.skip(f"{info.name} has no capturable option")
    params = make_params()
    opt = build(info, info.configs[0], params, **flags)
    for p in params:
        p.grad = torch.ones_like(p)
    if info.capturable and flags == {"foreach": True}:
        with pytest.raises(RuntimeError, match="capturable is False"):
            opt.step()
    else:
        opt.step()


# ------------------------------------------------------------------------------------------
# differentiable: gradients flow through step()
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_differentiable_step_gradcheck(info: OptimInfo) -> None:
    generator = torch.Generator().manual_seed(0)
    start = torch.rand(4, generator=generator, dtype=torch.float64, requires_grad=True)
    grad = torch.rand(4, generator=generator, dtype=torch.float64, requires_grad=True)

    def two_steps(start: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        param = start.clone()  # non-leaf: in-place updates are recorded by autograd
        param.retain_grad()
        opt = info.cls([param], **{**info.base, **info.configs[-1]}, differentiable=True)
        for scale in (1.0, 0.5):
            param.grad = grad * scale
            opt.step()
        return param

    assert torch.autograd.gradcheck(two_steps, (start, grad))
    # and the same values as a plain step
    reference = start.detach().clone().requires_grad_(True)
    plain = info.cls([reference], **{**info.base, **info.configs[-1]})
    for scale in (1.0, 0.5):
        reference.grad = grad.detach() * scale
        plain.step()
    torch.testing.assert_close(two_steps(start, grad).detach(), reference.detach())


# ------------------------------------------------------------------------------------------
# sparse gradients (Adagrad, and SGD without momentum)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Adagrad", "SGD"])
def test_sparse_gradients_match_torch(name: str) -> None:
    info = next(i for i in OPTIMS if i.name == name)
    torch.manual_seed(0)
    ours_emb = torch.nn.Embedding(20, 3, sparse=True).double()
    torch_emb = copy.deepcopy(ours_emb)
    ours_opt = info.cls(ours_emb.parameters(), **info.base)
    torch_opt = info.torch_cls(torch_emb.parameters(), **info.base)
    for step in range(15):
        index = torch.randint(0, 20, (8,), generator=torch.Generator().manual_seed(step))
        for emb, opt in ((ours_emb, ours_opt), (torch_emb, torch_opt)):
            opt.zero_grad()
            (emb(index) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(ours_emb.weight, torch_emb.weight, rtol=1e-12, atol=1e-12)


def test_sparse_gradients_refused_where_unsupported() -> None:
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = OPTIMS[6].cls(emb.parameters())  # Adam
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# ------------------------------------------------------------------------------------------
# torch.compile of the step
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Momentum", "Adam", "NAdam"])
def test_compiled_step_matches_eager(name: str) -> None:
    info = next(i for i in OPTIMS if i.name == name)
    torch._dynamo.reset()
    targets, weights = problem(dtype=torch.float32)
    eager_params, compiled_params = make_params(torch.float32), make_params(torch.float32)
    eager = info.cls(eager_params, **info.base, foreach=True)
    compiled = info.cls(compiled_params, **info.base, foreach=True)

    @torch.compile(fullgraph=False)
    def compiled_step():
        compiled.step()

    for _ in range(4):
        for params, step in ((eager_params, eager.step), (compiled_params, compiled_step)):
            for p in params:
                p.grad = None
            loss_fn(params, targets, weights).backward()
            step()
    assert_params_close(compiled_params, eager_params, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------
# constructor signature: same arguments, same defaults
# ------------------------------------------------------------------------------------------
SWITCHES = {"momentum_form", "lookahead", "eps_inside_sqrt", "bias_correction", "fused",
            "state_dtype", "state_block_size"}


@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_constructor_signature_matches_torch(info: OptimInfo) -> None:
    import inspect

    ours_sig = inspect.signature(info.cls.__init__).parameters
    torch_sig = inspect.signature(info.torch_cls.__init__).parameters
    for name, torch_param in torch_sig.items():
        assert name in ours_sig, f"{info.name} lacks torch's argument {name!r}"
        ours_param = ours_sig[name]
        assert ours_param.kind == torch_param.kind, name
        # the classes that *are* a flag of torch's class default that flag (AMSGrad: amsgrad)
        expected = {**{k: v for k, v in info.base.items() if k != "lr"}}.get(
            name, torch_param.default
        )
        if name == "lr":
            expected = torch_param.default
        assert ours_param.default == expected, (name, ours_param.default, expected)
    extra = set(ours_sig) - set(torch_sig)
    assert extra <= SWITCHES, extra


@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_compiled_step_traces_like_torch(info: OptimInfo) -> None:
    """Dynamo sees one graph and no graph break per step, as for torch.optim's class, on the
    first step (which creates the state) and on the steady second one."""

    def explain(cls) -> list[tuple[int, int]]:
        torch._dynamo.reset()
        params = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
        opt = cls(params, **info.base, foreach=True)
        for param in params:
            param.grad = torch.randn_like(param)
        counts = []
        for _ in range(2):  # the first step creates the state, the second is the steady one
            result = torch._dynamo.explain(opt.step)()
            counts.append((result.graph_count, result.graph_break_count))
        return counts

    assert explain(info.cls) == explain(info.torch_cls) == [(1, 0), (1, 0)]


BITWISE = ["SGD", "Momentum", "Adagrad", "RMSprop", "Adamax"]


def _torch_operations(info: OptimInfo, config: dict) -> bool:
    # Nesterov (NAG, nesterov=True) takes theta -= lr g; theta -= lr mu b in place, where torch
    # rounds g + mu b first (writing it into the gradients on its foreach path): ~1e-16 apart
    return info.name in BITWISE and not {**info.base, **config}.get("nesterov", False)


BITWISE_CASES = [case for case in CASES if _torch_operations(*case)]
BITWISE_IDS = [i for i, case in zip(CASE_IDS, CASES) if _torch_operations(*case)]


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize(("info", "config"), BITWISE_CASES, ids=BITWISE_IDS)
def test_bitwise_equal_to_torch_where_the_operations_are_torchs(
    info: OptimInfo, config: dict, foreach: bool
) -> None:
    """These methods run torch.optim's very operations: not one bit differs over 200 float64
    steps, in every configuration of the table (README claim)."""
    targets, weights = problem()
    ours_params, torch_params = make_params(), make_params()
    ours_opt = build(info, config, ours_params, foreach=foreach)
    torch_opt = build(info, config, torch_params, ours=False, foreach=foreach)
    for ours_final, torch_final in zip(run(ours_opt, ours_params, STEPS, targets, weights),
                                       run(torch_opt, torch_params, STEPS, targets, weights)):
        assert torch.equal(ours_final, torch_final)
    for p_ours, p_torch in zip(ours_params, torch_params):
        for key, value in torch_opt.state[p_torch].items():
            assert torch.equal(ours_opt.state[p_ours][key], value), key


# ------------------------------------------------------------------------------------------
# gradients are read-only
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [{"foreach": False}, {"foreach": True}, {"fused": True}],
                         ids=["forloop", "foreach", "fused"])
@pytest.mark.parametrize(("info", "config"), CASES, ids=CASE_IDS)
def test_step_never_writes_gradients(info: OptimInfo, config: dict, path: dict) -> None:
    """Every path reads ``.grad`` and leaves it bit for bit as it was (torch's foreach Nesterov
    SGD adds into the gradients; ours must not), over steps that create and then use state."""
    params = make_params()
    targets, weights = problem()
    optimizer = build(info, config, params, **path)
    sign = -1.0 if config.get("maximize", False) else 1.0
    for _ in range(3):
        optimizer.zero_grad()
        (sign * loss_fn(params, targets, weights)).backward()
        before = [p.grad.clone() for p in params]
        optimizer.step()
        for index, (param, grad) in enumerate(zip(params, before)):
            assert torch.equal(param.grad, grad), f"step() changed params[{index}].grad"
