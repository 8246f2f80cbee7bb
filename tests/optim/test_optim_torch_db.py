"""torch's own optimizer database drives the conformance checks too (issue #7).

torch ships the configurations its optimizer tests use in
``torch.testing._internal.common_optimizers.optim_db``: per optimizer, ``optim_inputs_func``
(the constructor arguments it tests) and ``optim_error_inputs_func`` (inputs that must fail,
with the error type). Every configuration torch tests for a counterpart of ours runs here
against our class (CPU, float64):

* the trajectory is torch.optim's (forloop and foreach, our parameters named);
* forloop, foreach and fused agree;
* state dicts move between named and unnamed optimizers, ours and torch's, and every loaded
  optimizer continues exactly like torch.optim after the same load;
* every error input raises the same error type (warnings: the same warning).

The CUDA-only configurations (``capturable=True``) run too: ours is capturable on CPU, and is
held to torch's non-capturable run. What ours cannot express is listed with the reason.
Runs in well under a minute; it needs ``expecttest`` (a dev dependency), which torch's test
helpers import.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

import torchopt_survey as tos

if importlib.util.find_spec("expecttest") is None and not os.environ.get("CI"):
    pytest.skip("torch's test helpers need expecttest (pip install -e '.[dev]')",
                allow_module_level=True)


def _import_common_optimizers() -> Any:
    """torch's optimizer database, imported without leaking its test-harness settings.

    Importing torch's test helpers freezes ``torch.backends`` flags for the whole process
    (``disable_global_flags``, which would break code that sets ``cudnn.benchmark``, as the
    experiments do), sets environment variables and warning filters: all are put back.
    """
    environ = dict(os.environ)
    # the module whose global flags_frozen() reads (torch.backends' attribute may be another)
    backends = torch.backends.flags_frozen.__globals__
    flag = "__allow_nonbracketed_mutation_flag"
    mutable = backends[flag]
    with warnings.catch_warnings():
        from torch.testing._internal import common_optimizers
    backends[flag] = mutable
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)
    return common_optimizers


_db = _import_common_optimizers()
OPTIM_DB = {info.name: info for info in _db.optim_db}

#: torch optimizers we have no counterpart of (a new torch optimizer fails the test below)
NO_COUNTERPART = {"Adafactor", "ASGD", "LBFGS", "Muon", "RAdam", "Rprop", "SparseAdam"}


def _needs(key: str, reason: str) -> Callable[[dict[str, Any]], str | None]:
    return lambda kwargs: None if kwargs.get(key) else reason


#: torch name -> our classes that are that method, each with a test of whether a torch
#: configuration is expressible (None) or why not
COUNTERPARTS: dict[str, list[tuple[type, Callable[[dict[str, Any]], str | None]]]] = {
    "SGD": [
        (tos.SGD, lambda kwargs: None),
        (tos.Momentum, _needs("momentum", "Momentum is SGD with momentum > 0")),
        (tos.NAG, _needs("nesterov", "NAG is SGD with nesterov=True")),
    ],
    "Adagrad": [(tos.Adagrad, lambda kwargs: None)],
    "Adadelta": [(tos.Adadelta, lambda kwargs: None)],
    "RMSprop": [(tos.RMSprop, lambda kwargs: None)],
    "Adam": [
        (tos.Adam, lambda kwargs: None),
        (tos.AMSGrad, _needs("amsgrad", "AMSGrad is Adam with amsgrad=True")),
    ],
    "AdamW": [(tos.AdamW, lambda kwargs: None)],
    "NAdam": [(tos.NAdam, lambda kwargs: None)],
    "Adamax": [(tos.Adamax, lambda kwargs: None)],
}

#: error inputs whose call ours accepts on purpose (README, "Known, documented differences")
ACCEPTED_ON_PURPOSE = {
    "lr as a Tensor is not supported for capturable=False and foreach=True":
        "a tensor lr works on every path (documented difference)",
    r"betas\[0\] as a Tensor is not supported for capturable=False and foreach=True":
        "tensor betas work on every path (documented difference)",
}


@dataclass(frozen=True)
class Case:
    ours: type
    torch_cls: type
    kwargs: dict[str, Any]
    desc: str
    #: a CUDA-only configuration of torch's: ours runs it capturable on CPU, torch without
    capturable: bool = False

    def ours_kwargs(self, **flags: Any) -> dict[str, Any]:
        kwargs = {**copy.deepcopy(self.kwargs), **flags}
        if kwargs.get("fused"):
            kwargs.pop("capturable", None)  # fused scalars live on the device anyway
        return kwargs

    def torch_kwargs(self, **flags: Any) -> dict[str, Any]:
        kwargs = {**copy.deepcopy(self.kwargs), **flags}
        kwargs.pop("capturable", None)  # torch.optim refuses capturable on CPU
        return kwargs


def _cases() -> list[Any]:
    cases = []
    for name, mapped in COUNTERPARTS.items():
        info = OPTIM_DB[name]
        cpu = info.optim_inputs_func("cpu", torch.float64)
        cpu_descs = {config.desc for config in cpu}
        cuda_only = [config for config in info.optim_inputs_func("cuda", torch.float64)
                     if config.desc not in cpu_descs]
        for configs, capturable in ((cpu, False), (cuda_only, True)):
            for index, config in enumerate(configs):
                for ours, expressible in mapped:
                    reason = expressible(config.kwargs)
                    case = Case(ours, info.optim_cls, config.kwargs, config.desc, capturable)
                    case_id = (f"{ours.__name__}-{config.desc.replace(' ', '_')}-{index}"
                               + ("-cuda_config" if capturable else ""))
                    marks = [pytest.mark.skip(reason=reason)] if reason else []
                    cases.append(pytest.param(case, id=case_id, marks=marks))
    return cases


CASES = _cases()


def test_importing_torchs_test_helpers_left_the_process_as_it_was() -> None:
    # torch's helpers freeze torch.backends flags on import; the experiments set one
    assert not torch.backends.flags_frozen()
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous  # raises while the flags are frozen


def test_every_torch_optimizer_is_mapped_or_listed() -> None:
    assert set(OPTIM_DB) == set(COUNTERPARTS) | NO_COUNTERPART
    assert len([c for c in CASES if not c.marks]) >= 60


# ------------------------------------------------------------------------------------------
# the problem: float64 parameters, gradients of a smooth loss, four named tensors
# ------------------------------------------------------------------------------------------
SHAPES = [(5, 4), (4,), (3, 2, 2), (6,)]
NAMES = ["enc.weight", "enc.bias", "conv.kernel", "head.bias"]
STEPS = 20


def make_params(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=generator, dtype=torch.float64).requires_grad_(True)
            for s in SHAPES]


TARGETS = [t.detach() for t in make_params(seed=1)]


def run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
    for _ in range(steps):
        for p, t in zip(params, TARGETS):
            p.grad = 2 * (p.detach() - t) + 0.1 * torch.sin(3 * p.detach())
        opt.step()
    return [p.detach().clone() for p in params]


def named(params: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return list(zip(NAMES, params))


def clone(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone().requires_grad_(True) for p in params]


@contextlib.contextmanager
def precision_for(case: Case) -> Iterator[None]:
    """Capturable steps compute bias corrections from the step tensor, whose dtype is the
    default dtype (as in torch.optim): float64 for those, so they can be held to float64."""
    previous = torch.get_default_dtype()
    if case.capturable:
        torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], tol: float) -> None:
    for name, a, e in zip(NAMES, actual, expected):
        torch.testing.assert_close(a, e, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


PARITY = 1e-12  # float64, 20 steps: ours follows torch's arithmetic
CAPTURABLE = 1e-9  # device-tensor scalars (capturable) against torch's Python floats
# capturable with float32 tensor hyperparameters (torch.tensor(0.9) betas): the bias
# corrections are then float32 tensor arithmetic, as in torch's own capturable steps
CAPTURABLE_FLOAT32_HP = 1e-6
FUSED = 1e-8  # fused kernels keep scalar state in float32 and compute scalars in double


def parity(case: Case) -> float:
    if not case.capturable:
        return PARITY
    values = [v for value in case.kwargs.values()
              for v in (value if isinstance(value, tuple) else (value,))]
    if any(isinstance(v, torch.Tensor) and v.dtype != torch.float64 for v in values):
        return CAPTURABLE_FLOAT32_HP
    return CAPTURABLE


def keep_path(opt: torch.optim.Optimizer, flags: dict[str, Any]) -> None:
    """A loaded state dict brings its groups' foreach/fused flags along (torch.optim's rule);
    put back the path this optimizer was built for, so the loaded state is run on that path."""
    for group in opt.param_groups:
        group.update({k: v for k, v in flags.items() if k in ("foreach", "fused")})


def _torch_foreach_ok(case: Case) -> bool:
    """Whether torch.optim runs this configuration with foreach=True on CPU."""
    try:
        opt = case.torch_cls(clone(make_params()), **case.torch_kwargs(foreach=True))
        run(opt, opt.param_groups[0]["params"], 1)
    except (ValueError, RuntimeError):
        return False
    return True


# ------------------------------------------------------------------------------------------
# the checks
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_trajectory_matches_torch(case: Case) -> None:
    tolerance = parity(case)
    with precision_for(case):
        reference_params = make_params()
        reference = case.torch_cls(reference_params, **case.torch_kwargs(foreach=False))
        expected = run(reference, reference_params, STEPS)
        for foreach in (False, True):
            params = make_params()
            ours = case.ours(named(params), **case.ours_kwargs(foreach=foreach))
            assert_close(run(ours, params, STEPS), expected, tolerance)
            if foreach and _torch_foreach_ok(case):  # and torch's own foreach path too
                torch_params = make_params()
                theirs = case.torch_cls(torch_params, **case.torch_kwargs(foreach=True))
                ours_state = ours.state_dict()["state"]
                run(theirs, torch_params, STEPS)
                for index, entries in theirs.state_dict()["state"].items():
                    assert list(ours_state[index]) == list(entries)
                    for key, value in entries.items():
                        torch.testing.assert_close(ours_state[index][key], value,
                                                   rtol=tolerance, atol=tolerance,
                                                   check_dtype=not case.capturable,
                                                   msg=lambda m, k=key: f"state {k}: {m}")


@pytest.mark.parametrize("case", CASES)
def test_forloop_foreach_and_fused_agree(case: Case) -> None:
    with precision_for(case):
        results = {}
        for path, flags in (("forloop", {"foreach": False}), ("foreach", {"foreach": True}),
                            ("fused", {"fused": True})):
            params = make_params()
            opt = case.ours(params, **case.ours_kwargs(**flags))
            results[path] = run(opt, params, STEPS)
    # the same ops on the same data: forloop and foreach are bit for bit equal in float64
    # (capturable steps: to rounding -- per-tensor and stacked scalars round differently)
    assert_close(results["foreach"], results["forloop"], parity(case) if case.capturable else 0)
    # (a capturable forloop does tensor-hyperparameter arithmetic in their dtype, as torch's
    # capturable steps do; fused, like the float path, in double)
    assert_close(results["fused"], results["forloop"], max(FUSED, parity(case)))


# who saves (a named optimizer: ours on the forloop path, or torch's) -> who loads
LOADERS = {
    "ours-forloop-unnamed": (False, {"foreach": False}),
    "ours-foreach-named": (True, {"foreach": True}),
    "ours-fused-unnamed": (False, {"fused": True}),
}


@pytest.mark.parametrize("source", ["ours", "torch"])
@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trips_with_named_parameters(case: Case, source: str) -> None:
    with precision_for(case):
        params = make_params()
        if source == "ours":
            first = case.ours(named(params), **case.ours_kwargs(foreach=False))
        else:
            first = case.torch_cls(named(params), **case.torch_kwargs(foreach=False))
        run(first, params, 5)
        saved = first.state_dict()
        assert [g["param_names"] for g in saved["param_groups"]] == [NAMES]

        def resume(make: Callable[..., torch.optim.Optimizer], with_names: bool,
                   state_dict: dict[str, Any], **kwargs: Any):
            resumed = clone(params)
            opt = make(named(resumed) if with_names else resumed, **kwargs)
            opt.load_state_dict(copy.deepcopy(state_dict))
            keep_path(opt, kwargs)
            return opt, run(opt, resumed, 5)

        # torch.optim loading the same dict is the reference: names and the continued run
        # (on CPU, where torch.optim refuses capturable groups: loaded without that flag)
        torch_saved = copy.deepcopy(saved)
        for group in torch_saved["param_groups"]:
            group.pop("capturable", None)
        reference, expected = resume(case.torch_cls, False, torch_saved,
                                     **case.torch_kwargs(foreach=False))
        assert [g.get("param_names") for g in reference.param_groups] == [NAMES]
        for loader, (with_names, flags) in LOADERS.items():
            opt, continued = resume(case.ours, with_names, saved, **case.ours_kwargs(**flags))
            assert [g.get("param_names") for g in opt.param_groups] == [NAMES], loader
            assert [g.get("param_names") for g in opt.state_dict()["param_groups"]] == [NAMES]
            tolerance = parity(case)
            if case.capturable and source == "ours":
                # torch.optim's loader turns a capturable group's step into float32 (the bias
                # corrections follow): float32-level agreement, as torch's own would have
                tolerance = CAPTURABLE_FLOAT32_HP
            if "fused" in loader:
                tolerance = max(FUSED, tolerance)
            try:
                assert_close(continued, expected, tolerance)
            except AssertionError as error:
                raise AssertionError(f"loaded by {loader}: {error}") from None


def _error_cases() -> list[Any]:
    cases = []
    for name, mapped in COUNTERPARTS.items():
        info = OPTIM_DB[name]
        for index, error_input in enumerate(info.optim_error_inputs_func("cpu", torch.float64)):
            for ours, _ in mapped:
                desc = error_input.optimizer_error_input.desc
                reason = next((why for regex, why in ACCEPTED_ON_PURPOSE.items()
                               if regex == error_input.error_regex), None)
                marks = [pytest.mark.skip(reason=reason)] if reason else []
                case_id = f"{ours.__name__}-{desc.replace(' ', '_')}-{index}"
                cases.append(pytest.param(ours, info.optim_cls, error_input, id=case_id,
                                          marks=marks))
    return cases


ERROR_CASES = _error_cases()


@pytest.mark.parametrize(("ours", "torch_cls", "error_input"), ERROR_CASES)
def test_error_inputs_raise_the_same_error_type(ours: type, torch_cls: type, error_input) -> None:
    config = error_input.optimizer_error_input
    expected = error_input.error_type

    # A multi-element tensor lr is our per-replica feature when its length matches every
    # parameter's dim 0 (torch's default (2, 3) parameter with its [2] lr would be two
    # replicas): on a parameter that cannot be split that way ours must refuse it as torch does.
    rows = 3 if config.desc == "Tensor lr must be 1-element" else 2

    def attempt(cls: type) -> None:
        params = config.params
        if params is None:
            params = [torch.nn.Parameter(torch.randn(rows, 3, dtype=torch.float64))]
        opt = cls(copy.deepcopy(params) if cls is torch_cls else params,
                  **copy.deepcopy(config.kwargs))
        if error_input.error_on == _db.OptimizerErrorEnum.STEP_ERROR:
            for group in opt.param_groups:
                for p in group["params"]:
                    p.grad = torch.rand_like(p)
            opt.step()

    for cls in (torch_cls, ours):  # torch first: the database itself is checked, then ours
        if issubclass(expected, Warning):
            with pytest.warns(expected):
                attempt(cls)
        else:
            with pytest.raises(expected):
                attempt(cls)


SPARSE_CASES = [case for case in CASES
                if OPTIM_DB[case.values[0].torch_cls.__name__].supports_sparse
                and not case.values[0].capturable]


@pytest.mark.parametrize("case", SPARSE_CASES)
def test_sparse_gradients_like_torch(case: Case) -> None:
    """Each configuration on an nn.Embedding(sparse=True): torch's result, or torch's error."""
    outcomes = []
    for make, kwargs in ((case.torch_cls, case.torch_kwargs(foreach=False)),
                         (case.ours, case.ours_kwargs(foreach=False))):
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(12, 3, sparse=True).double()
        opt = make(embedding.parameters(), **kwargs)
        try:
            for step in range(10):
                index = torch.randint(0, 12, (5,), generator=torch.Generator().manual_seed(step))
                opt.zero_grad()
                (embedding(index) ** 2 + torch.sin(embedding(index))).sum().backward()
                opt.step()
        except (RuntimeError, ValueError) as error:
            outcomes.append(type(error))
        else:
            outcomes.append(embedding.weight.detach().clone())
    theirs, ours = outcomes
    if isinstance(theirs, type):
        assert ours is theirs, f"torch raised {theirs.__name__}, ours gave {ours!r}"
    else:
        assert isinstance(ours, torch.Tensor), f"ours raised {ours.__name__}, torch did not"
        torch.testing.assert_close(ours, theirs, rtol=PARITY, atol=PARITY)


# ------------------------------------------------------------------------------------------
# compact state (state_dtype): every configuration torch tests, held to torch's float64 run
# ------------------------------------------------------------------------------------------
# Largest |ours - torch| over these 20-step runs, relative to how far torch moved the
# parameters (max |x_20 - x_0|), measured on every case and path: bfloat16 state 0.011
# (Adamax, weight decay 0.1), int8 state 0.22 (AdamW maximize: tensors of a few elements form
# one block whose small entries get the coarse codes). Tolerances: about 2x those. The exact
# check of each compact step is tests/optim/core/test_compact_state.py's.
COMPACT_TOLERANCE = {"bfloat16": 0.04, "int8": 0.4}


@pytest.mark.parametrize("state_dtype", list(COMPACT_TOLERANCE))
@pytest.mark.parametrize("case", CASES)
def test_compact_state_tracks_torch(case: Case, state_dtype: str) -> None:
    compact_dtypes = (torch.bfloat16,) if state_dtype == "bfloat16" else (torch.int8, torch.uint8)
    with precision_for(case):
        start = make_params()
        reference_params = make_params()
        reference = case.torch_cls(reference_params, **case.torch_kwargs(foreach=False))
        expected = run(reference, reference_params, STEPS)
        moved = max((e - s).abs().max().item() for e, s in zip(expected, start))
        for flags in ({"foreach": False}, {"foreach": True}, {"fused": True}):
            params = make_params()
            ours = case.ours(named(params), **case.ours_kwargs(**flags, state_dtype=state_dtype))
            actual = run(ours, params, STEPS)
            worst = max((a - e).abs().max().item() for a, e in zip(actual, expected))
            assert worst <= COMPACT_TOLERANCE[state_dtype] * moved, (flags, worst, moved)
            for state in ours.state.values():  # the tensor state really is compact
                for key, value in state.items():
                    if value.dim() and not key.endswith("_blockmax"):
                        assert value.dtype in compact_dtypes, (key, value.dtype)
