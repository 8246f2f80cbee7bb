"""Compact state read and written inside the fused C kernel (``fused=True``, CPU).

From the second step on (once the state is compact), a fused compact group's step is one
generated kernel that loads bfloat16 state or int8 codes and block scales, updates, and
stores bfloat16 with stochastic rounding or re-quantises each block. The oracle is the
general path it replaces -- expand the state, run the ordinary fused kernel, compact again --
which must give the same bits: parameters, codes, scales, bfloat16 state, step counts.
Against the forloop compact path (other arithmetic, so not bit for bit) the results agree
within float32 and one-code tolerances.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.compact_cases import check_kernel_quantiser
from helpers.optim_cases import CASE_IDS, CASES

import torchopt_survey.optim as O
from torchopt_survey.optim.core import compact_state as C
from torchopt_survey.optim.core import (
    emit_c,
    fused,
)

#: sizes: several int8 blocks with a partial last one, a one-element tensor, an exact block
SHAPES = [(1000,), (37, 5), (1,), (64,)]
STEPS = 4
VARIANTS = ["bfloat16", "int8", "int8/32"]


def _params(dtype: torch.dtype) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype)
            .requires_grad_(True) for s in SHAPES]


def _grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    # gradients that depend on the parameters too (a trajectory, not just noise)
    return [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
            + 0.5 * p.detach() for p in params]


def _build(info, config, params, variant, **flags):
    state_dtype, _, block = variant.partition("/")
    options = {"state_block_size": int(block)} if block else {}
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]
    return info.cls(groups, **{**info.base, **config, **flags}, state_dtype=state_dtype,
                    **options)


def _run(optimizer, params, steps, first=0):
    for step in range(first, first + steps):
        for p, g in zip(params, _grads(params, step)):
            p.grad = g
        optimizer.step()


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many times the in-kernel compact path ran (it must, or the test checks nothing)."""
    calls = []
    original = fused.run_compact_cpu

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "run_compact_cpu", spy)
    return calls


def _general_path(monkeypatch):
    monkeypatch.setattr(C, "_step_in_kernel", lambda *args: False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("info", "config"), CASES, ids=CASE_IDS)
def test_in_kernel_compact_step_is_the_general_path_bit_for_bit(
        info, config, variant, dtype, kernel_calls, monkeypatch) -> None:
    params = _params(dtype)
    opt = _build(info, config, params, variant, fused=True)
    _run(opt, params, STEPS)
    if not opt.state:  # plain SGD keeps no state: nothing compact to step
        assert not kernel_calls
        return
    # every step but the first (state made there), once per group
    assert len(kernel_calls) == len(opt.param_groups) * (STEPS - 1)

    _general_path(monkeypatch)
    ref_params = _params(dtype)
    ref = _build(info, config, ref_params, variant, fused=True)
    _run(ref, ref_params, STEPS)
    for index, (p, q) in enumerate(zip(params, ref_params)):
        assert torch.equal(p, q), f"param {index}: {(p - q).abs().max().item()}"
        state, expected = opt.state[p], ref.state[q]
        assert state.keys() == expected.keys()
        for name, value in expected.items():
            assert state[name].dtype == value.dtype, name
            assert torch.equal(state[name], value), (index, name)


@pytest.mark.parametrize("variant", ["bfloat16", "int8"])
def test_work_split_across_threads_changes_nothing(variant, kernel_calls, monkeypatch) -> None:
    """Blocks are the unit of work: with a grain of one element every block may go to
    another thread, and the result is bitwise the one-thread result."""
    results = []
    for threads, grain in ((1, emit_c.GRAIN), (2, 1)):
        monkeypatch.setattr(emit_c, "GRAIN", grain)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            params = _params(torch.float32)
            opt = O.Adam(params, lr=0.01, fused=True, state_dtype=variant,
                         **({"state_block_size": 32} if variant == "int8" else {}))
            _run(opt, params, STEPS)
        finally:
            torch.set_num_threads(previous)
        results.append((params, opt))
    assert kernel_calls
    (p1, o1), (p2, o2) = results
    for p, q in zip(p1, p2):
        assert torch.equal(p, q)
        for name, value in o1.state[p].items():
            assert torch.equal(o2.state[q][name], value), name


@pytest.mark.parametrize("state_dtype", ["bfloat16", "int8"])
@pytest.mark.parametrize(("info", "config"), CASES, ids=CASE_IDS)
def test_in_kernel_step_agrees_with_the_forloop_compact_step(info, config, state_dtype,
                                                             kernel_calls) -> None:
    """From the same compact state, one fused step and one forloop step: the same update up
    to float32 rounding (different arithmetic order), so parameters agree to float32
    accuracy and the new state to one bfloat16 unit or one int8 code step of the block."""
    params = _params(torch.float32)
    opt = _build(info, config, params, state_dtype, fused=True)
    _run(opt, params, 2)
    if not opt.state:
        return
    loop_params = [p.detach().clone().requires_grad_(True) for p in params]
    loop = _build(info, config, loop_params, state_dtype, foreach=False)
    # (a copy: loaded tensors are taken as is, and both optimizers update state in place)
    loop.load_state_dict(copy.deepcopy(opt.state_dict()))
    for group in loop.param_groups:  # (a state dict brings its flags: fused=True)
        group.update(fused=False, foreach=False)
    calls = len(kernel_calls)
    _run(opt, params, 1, first=2)
    _run(loop, loop_params, 1, first=2)
    assert len(kernel_calls) == calls + len(opt.param_groups)
    for p, q in zip(params, loop_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        for name, value in loop.state[q].items():
            if name.endswith(C.SCALE) or not value.dim():
                torch.testing.assert_close(opt.state[p][name].float(), value.float(),
                                           rtol=1e-5, atol=1e-7)
                continue
            if state_dtype == "bfloat16":
                torch.testing.assert_close(opt.state[p][name].float(), value.float(),
                                           rtol=2.0**-7, atol=1e-30)
                continue
            ours = C.dequantize_int8(opt.state[p][name], opt.state[p][name + C.SCALE], 256,
                                     torch.float32)
            theirs = C.dequantize_int8(value, loop.state[q][name + C.SCALE], 256,
                                       torch.float32)
            # one code step of the signed map's finest decade: 0.9 / 64 of the block maximum
            scale = loop.state[q][name + C.SCALE].repeat_interleave(256)[: value.numel()]
            bound = (0.9 / 64 + 1e-5) * scale.view(value.shape)
            assert bool(((ours - theirs).abs() <= bound).all()), name


def test_first_step_and_unsupported_layouts_take_the_general_path(kernel_calls) -> None:
    """Fresh state (not compact yet) and a transposed parameter: the general path, same
    results as an optimizer that never uses the kernel path would give."""
    param = torch.randn(40, 30).t().requires_grad_(True)  # not contiguous
    opt = O.Adam([param], lr=0.01, fused=True, state_dtype="int8")
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        param.grad = torch.randn(40, 30, generator=generator).t()
        opt.step()
    assert not kernel_calls
    assert opt.state[param]["exp_avg"].dtype == torch.int8


@pytest.mark.parametrize("variant", ["bfloat16", "int8"])
def test_a_group_larger_than_a_chunk_is_one_kernel_call(variant, kernel_calls,
                                                       monkeypatch) -> None:
    """The general path works through a group a chunk of parameters at a time (to bound its
    full-precision copies); the kernel needs no copies, so a group is one call however many
    chunks it spans -- with the same result as chunk by chunk."""
    results = []
    original = C._step_in_kernel

    def per_chunk(opt, group, params):  # the group-wide attempt refused
        return len(params) < len(group["params"]) and original(opt, group, params)

    monkeypatch.setattr(C, "CHUNK_ELEMENTS", 64)  # chunks: 1000 | 37x5 | 1 and 64
    for whole in (True, False):
        if not whole:
            monkeypatch.setattr(C, "_step_in_kernel", per_chunk)
        kernel_calls.clear()
        params = _params(torch.float32)
        opt = O.Adam([{"params": params}], lr=0.01, fused=True, state_dtype=variant)
        _run(opt, params, STEPS)
        results.append((params, opt, len(kernel_calls)))
    (p1, o1, calls1), (p2, o2, calls2) = results
    assert calls1 == STEPS - 1  # one per step after the first
    assert calls2 == (STEPS - 1) * 3  # (the reference really went chunk by chunk)
    for p, q in zip(p1, p2):
        assert torch.equal(p, q)
        for name, value in o1.state[p].items():
            assert torch.equal(o2.state[q][name], value), name


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_kernel_quantiser_is_the_nearest_code_at_every_midpoint(signed, kernel_calls) -> None:
    """The kernel's quantiser on values placed where a lookup could go wrong (every midpoint
    between codes, blocks of subnormals): it must store what ``quantize_int8`` stores."""
    def kernel_step(step) -> None:
        kernel_calls.clear()
        step()
        assert kernel_calls, "the compact kernel did not run"

    check_kernel_quantiser(signed, kernel_step)


def test_rounding_bits_are_uniform_and_uncorrelated() -> None:
    """The counter hash behind bfloat16's stochastic rounding: uniform 16-bit values, no
    correlation between neighbouring elements or between the streams of neighbouring seeds
    (a weaker hash -- one multiply fewer -- fails the last two). 2^20 samples: a correlation's
    noise is about 0.001."""
    count = 1 << 20
    for seed in (1, 0xDEADBEEF):
        bits = C.rounding_noise(seed, count)
        assert int(bits.min()) >= 0 and int(bits.max()) < 1 << 16
        histogram = torch.bincount(bits.long() >> 8, minlength=256).double()
        chi2 = ((histogram - histogram.mean()) ** 2 / histogram.mean()).sum().item() / 255
        assert 0.7 < chi2 < 1.3, chi2
        u = bits.double()
        for lag in (1, 256):
            corr = torch.corrcoef(torch.stack([u[:-lag], u[lag:]]))[0, 1].item()
            assert abs(corr) < 0.004, (seed, lag, corr)
    a, b = C.rounding_noise(100, count).double(), C.rounding_noise(101, count).double()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.004
