"""``state_dtype="bfloat16" | "int8"``: compact optimizer state for every first-order class.

The exact check: one compact step equals the ordinary (float32) step run on the expanded
state, with the result compacted again -- parameters bit for bit, int8 codes and scales bit
for bit, bfloat16 state within one bfloat16 rounding. The code maps and the stochastic
rounding are checked against brute-force transcriptions; memory is counted exactly.
(Accuracy against torch.optim over every torch configuration: tests/test_optim_torch_db.py.)
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from helpers.conformance_problem import groups, loss_fn, make_params, problem
from helpers.optim_cases import CASE_IDS, CASES, OPTIMS

import torchopt_survey.optim as O
from torchopt_survey.optim.core import codes as code_maps
from torchopt_survey.optim.core import compact_state as C

DTYPES = ["bfloat16", "int8"]
PATHS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _step(optimizer, params, targets, weights):
    optimizer.zero_grad()
    sign = -1.0 if optimizer.param_groups[0].get("maximize", False) else 1.0
    (sign * loss_fn(params, targets, weights)).backward()
    optimizer.step()


def _clone(params):
    return [p.detach().clone().requires_grad_(True) for p in params]


def _saved(optimizer):
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ------------------------------------------------------------------------------------------
# one compact step == the ordinary step on the expanded state, compacted
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("state_dtype", [*DTYPES, "int8/32"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("info", "config"), CASES, ids=CASE_IDS)
def test_compact_step_is_the_ordinary_step_on_expanded_state(info, config, path, state_dtype):
    targets, weights = problem(dtype=torch.float32)
    params = make_params(torch.float32)
    flags = {**info.base, **config, **PATHS[path]}
    # (int8/32: blocks of 32, so the 35-element tensor has two blocks and two scales)
    block = 32 if state_dtype == "int8/32" else 256
    state_dtype = state_dtype.split("/")[0]
    options = {"state_block_size": 32} if block == 32 else {}
    opt = info.cls(groups(params), **flags, state_dtype=state_dtype, **options)
    for _ in range(3):
        _step(opt, params, targets, weights)
    # the oracle: an ordinary optimizer holding the expanded state
    ref_params = _clone(params)
    ref = info.cls(groups(ref_params), **flags)
    ref.load_state_dict(_saved(opt))
    for group in ref.param_groups:
        group.update(PATHS[path])
    _step(opt, params, targets, weights)
    _step(ref, ref_params, targets, weights)
    for index, (p, q) in enumerate(zip(params, ref_params)):
        assert torch.equal(p, q), f"param {index}: {(p - q).abs().max().item()}"
    specs = {entry.name: entry for entry in opt._state_spec(opt.param_groups[0])}
    for p, q in zip(params, ref_params):
        state, expected = opt.state[p], ref.state[q]
        for name, value in expected.items():
            if specs[name].kind == "scalar":
                assert torch.equal(state[name].float(), value.float()), name
            elif state_dtype == "int8":
                codes, absmax = C.quantize_int8(value, block, specs[name].non_negative)
                assert state[name].dtype == (
                    torch.uint8 if specs[name].non_negative else torch.int8), name
                assert torch.equal(state[name], codes), name
                assert torch.equal(state[name + C.SCALE], absmax), name
            else:  # stochastic rounding: one of the two bfloat16 neighbours of the value
                _assert_bf16_neighbour(state[name], value)


def _assert_bf16_neighbour(stored: torch.Tensor, value: torch.Tensor) -> None:
    assert stored.dtype == torch.bfloat16
    down = _bf16_toward_zero(value.float())
    # the next bfloat16 away from zero: one more in the bits above float32's low 16
    up = (down.float().view(torch.int32) + 65536).view(torch.float32).bfloat16()
    ok = (stored == down) | (stored == up)
    assert bool(ok.all()), (stored[~ok], value[~ok])


def _bf16_toward_zero(value: torch.Tensor) -> torch.Tensor:
    return (value.view(torch.int32) & -65536).view(torch.float32).bfloat16()


# ------------------------------------------------------------------------------------------
# the code maps and the rounding
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("non_negative", [True, False])
@pytest.mark.parametrize("block", [32, 256])
def test_int8_is_the_nearest_code_per_block(non_negative: bool, block: int) -> None:
    generator = torch.Generator().manual_seed(0)
    # values over 9 decades, with a last partial block and an all-zero block
    value = torch.randn(3 * block + 17, generator=generator) * 10.0 ** torch.randint(
        -8, 1, (3 * block + 17,), generator=generator).float()
    value[block:2 * block] = 0
    if non_negative:
        value = value.abs()
    codes, absmax = C.quantize_int8(value, block, non_negative)
    assert codes.dtype == (torch.uint8 if non_negative else torch.int8)
    assert codes.shape == value.shape and absmax.shape == (4,)
    blocks = list(value.split(block))
    assert torch.equal(absmax, torch.stack([b.abs().max() for b in blocks]))
    table = code_maps.code_map(not non_negative, torch.device("cpu")).values.double()
    restored = C.dequantize_int8(codes, absmax, block, torch.float64)
    for b, chunk in enumerate(blocks):
        scale = absmax[b].double()
        part = restored[b * block:b * block + len(chunk)]
        if scale == 0:
            assert not part.any()
            continue
        # brute force: distance to every code value, the nearest one wins (up to float32
        # rounding of the scaled value: a near tie may go either way)
        distance = (chunk.double()[:, None] / scale - table[None, :]).abs()
        best = distance.min(dim=1).values * scale
        assert bool(((part - chunk.double()).abs() <= best + 1e-6 * scale).all())
    if non_negative:
        assert bool((restored >= 0).all())
    # resolution: the signed map's steps near its top, 2 sqrt(y) / 127 of the block maximum
    # at y, are within 1/(127 sqrt(0.1)) = 2.5 % of values over a tenth of the maximum; the
    # unsigned map's float codes within 1/16 of every value down to 1e-8 of it
    scales = absmax.repeat_interleave(block)[: value.numel()]
    big = value.abs() >= (1e-8 if non_negative else 0.1) * scales
    bound = 0.0626 if non_negative else 0.0249
    assert bool(((restored.float() - value).abs() <= bound * value.abs())[big].all())
    assert int(big.sum()) > block  # (the bound is checked on many values)


def test_code_maps_are_sorted_one_byte_and_their_closed_forms() -> None:
    signed = code_maps.code_map(True, torch.device("cpu")).values.double()
    unsigned = code_maps.code_map(False, torch.device("cpu")).values.double()
    assert signed.numel() == 255 and unsigned.numel() == 256
    assert bool((signed.diff() > 0).all()) and bool((unsigned.diff() > 0).all())
    assert signed[127] == 0 and signed[-1] == 1 and signed[0] == -1
    assert unsigned[0] == 0 and unsigned[-1] == 1 and 0 < unsigned[1] <= 1e-10
    codes = torch.arange(-127, 128, dtype=torch.float64)
    torch.testing.assert_close(signed, codes.sign() * (codes / 127) ** 2, rtol=1e-6, atol=0)
    # unsigned: 3 mantissa bits, 5 exponent bits, the top code (1.875) the block maximum
    c = torch.arange(256)
    exponent, mantissa = c // 8, (c % 8).double()
    floats = torch.where(exponent > 0, 2.0 ** (exponent - 31.0) * (1 + mantissa / 8),
                         2.0 ** -30 * mantissa / 8)
    torch.testing.assert_close(unsigned, floats / 1.875, rtol=1e-6, atol=0)
    # every value within 1/16 of a code: neighbours at most 1/8 apart (relative), from the
    # first normal code up
    assert float((unsigned[9:] / unsigned[8:-1]).max()) <= 1.125 + 1e-6


def test_bfloat16_stochastic_rounding_is_unbiased_and_seeded() -> None:
    value = torch.full((4000,), 1.0 + 2.0**-9)  # a quarter of the way to the next bfloat16
    first = C.round_bfloat16(value, seed=1)
    assert torch.equal(first, C.round_bfloat16(value, seed=1))  # seeded: reproducible
    assert not torch.equal(first, C.round_bfloat16(value, seed=2))
    _assert_bf16_neighbour(first, value)
    ups = (first.float() > 1).float().mean().item()
    assert abs(ups - 0.25) < 0.03  # rounds up with probability 1/4 (std 0.007)
    exact = torch.tensor([0.0, -2.0, 3.5, float("inf"), -float("inf")])
    assert torch.equal(C.round_bfloat16(exact, seed=0).float(), exact)
    assert torch.isnan(C.round_bfloat16(torch.tensor([float("nan")]), seed=0)).all()


def test_a_shard_rounds_and_quantises_as_the_whole_tensor() -> None:
    """What FSDP2's shards rely on (:mod:`.compact_shards`): a range of a tensor's elements,
    rounded with the seed moved to its start, gets the whole tensor's rounding bits; quantised
    with its phase in the first block and the maxima of the blocks it shares combined, it gets
    the whole tensor's codes and scales. (Under torch.distributed: test_distributed.py.)"""
    from torchopt_survey.optim.core import compact_shards

    torch.manual_seed(0)
    value = torch.randn(1000, dtype=torch.float64)
    value[96:128] *= 1e-39  # a block of float32 subnormals: scaled by the smallest scale
    whole = C.round_bfloat16(value, seed=12345)
    for start in (0, 1, 31, 700):
        part = C.round_bfloat16(value[start:], compact_shards.shard_seed(12345, start))
        assert torch.equal(part, whole[start:]), start
    assert not torch.equal(C.round_bfloat16(value[1:], 12345), whole[1:])  # the move matters
    block = 32
    unshared = 0
    for non_negative in (False, True):
        source = value.abs() if non_negative else value
        codes, scales = C.quantize_int8(source, block, non_negative)
        # each block's largest magnitude, as the shards holding parts of it exchange them
        maxima = torch.nn.functional.pad(source.float(), (0, 24)).view(-1, block).abs().amax(1)
        for start, end in ((0, 70), (70, 400), (400, 1000), (5, 7)):
            phase, first = start % block, start // block
            count = -(-(phase + end - start) // block)
            want = scales[first:first + count]

            def combine(peaks: torch.Tensor,
                        others: torch.Tensor = maxima[first:first + count]) -> None:
                peaks.copy_(torch.maximum(peaks, others))  # the other shards' maxima
            part, part_scales = C.quantize_int8(source[start:end], block, non_negative,
                                                phase=phase, combine=combine)
            assert torch.equal(part, codes[start:end]) and torch.equal(part_scales, want)
            expanded = C.dequantize_int8(part, part_scales, block, torch.float64, phase=phase)
            assert torch.equal(expanded, C.dequantize_int8(codes, scales, block,
                                                           torch.float64)[start:end])
            alone, _ = C.quantize_int8(source[start:end], block, non_negative, phase=phase)
            unshared += not torch.equal(alone, codes[start:end])
    assert unshared  # without the shared maxima, some shard's codes are others


@pytest.mark.parametrize("path", list(PATHS))
def test_bfloat16_state_keeps_updates_below_half_a_unit(path) -> None:
    """Increments of a quarter of bfloat16's spacing: round-to-nearest would drop every one
    (the buffer would stay at 1); stochastic rounding keeps them on average."""
    param = torch.zeros(4096, requires_grad=True)
    opt = O.SGD([param], lr=0.0, momentum=1.0, state_dtype="bfloat16", **PATHS[path])
    param.grad = torch.ones(4096)
    opt.step()  # the buffer starts as the first gradient: 1
    for _ in range(64):
        param.grad = torch.full((4096,), 2.0**-10)
        opt.step()
    mean = opt.state[param]["momentum_buffer"].float().mean().item()
    assert abs(mean - (1 + 64 * 2.0**-10)) < 0.004, mean


# ------------------------------------------------------------------------------------------
# memory (exact counts)
# ------------------------------------------------------------------------------------------
def _bytes(optimizer, per_element: bool) -> int:
    """State bytes: all of it, or only the per-element part (not 0-d scalars like step)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for v in state.values() if v.dim() or not per_element)


@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_state_bytes(info) -> None:
    sizes, per_element = {}, {}
    for state_dtype in (None, "bfloat16", "int8"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 64))
        opt = info.cls(model.parameters(), **info.base, state_dtype=state_dtype)
        model(torch.randn(4, 256)).square().sum().backward()
        opt.step()
        sizes[state_dtype] = C.state_bytes(opt)
        per_element[state_dtype] = _bytes(opt, per_element=True)
        assert sizes[state_dtype] == _bytes(opt, per_element=False)
    if sizes[None] == 0:  # SGD without momentum keeps no state
        assert sizes == {None: 0, "bfloat16": 0, "int8": 0}
        return
    assert per_element["bfloat16"] * 2 == per_element[None]
    assert sizes["int8"] <= 0.27 * sizes[None]  # scales and scalars included


# ------------------------------------------------------------------------------------------
# state dicts, copies, reproducibility
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("state_dtype", DTYPES)
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_state_dict_round_trips(info, state_dtype) -> None:
    targets, weights = problem(dtype=torch.float32)
    # uninterrupted compact run
    params = make_params(torch.float32)
    opt = info.cls(groups(params), **info.base, state_dtype=state_dtype)
    for _ in range(6):
        _step(opt, params, targets, weights)
    # 3 steps, saved (weights_only), loaded into a fresh compact optimizer, 3 more: the same
    resumed = make_params(torch.float32)
    first = info.cls(groups(resumed), **info.base, state_dtype=state_dtype)
    for _ in range(3):
        _step(first, resumed, targets, weights)
    saved = _saved(first)
    again = info.cls(groups(resumed), **info.base, state_dtype=state_dtype)
    again.load_state_dict(saved)
    for _ in range(3):
        _step(again, resumed, targets, weights)
    assert all(torch.equal(p, q) for p, q in zip(params, resumed))

    # compact -> full precision: the expanded values, as float32
    full = info.cls(groups(_clone(resumed)), **info.base)
    full.load_state_dict(_saved(again))
    assert "state_dtype" not in full.param_groups[0]
    for p, q in zip(resumed, full.param_groups[0]["params"] + full.param_groups[1]["params"]):
        for name, value in full.state[q].items():
            if value.dim():
                assert value.dtype == torch.float32, name
                if state_dtype == "bfloat16":
                    assert torch.equal(value, again.state[p][name].float()), name
                else:
                    assert torch.equal(value, C.dequantize_int8(
                        again.state[p][name], again.state[p][name + C.SCALE], 256,
                        torch.float32)), name
    # full precision -> compact: compacted (to nearest), and stepping on from there works
    back = info.cls(groups(_clone(resumed)), **info.base, state_dtype=state_dtype)
    back.load_state_dict(_saved(full))
    for q, r in zip(full.param_groups[0]["params"], back.param_groups[0]["params"]):
        for name, value in full.state[q].items():
            if not value.dim():
                continue
            if state_dtype == "bfloat16":
                assert torch.equal(back.state[r][name], value.bfloat16()), name
            else:
                spec = {e.name: e for e in back._state_spec(back.param_groups[0])}
                codes, _ = C.quantize_int8(value, 256, spec[name].non_negative)
                assert torch.equal(back.state[r][name], codes), name


def test_another_block_size_is_converted_not_taken_as_is() -> None:
    targets, weights = problem(dtype=torch.float32)
    params = make_params(torch.float32)
    opt = O.Adam(groups(params), lr=0.01, state_dtype="int8", state_block_size=32)
    for _ in range(2):
        _step(opt, params, targets, weights)
    other = O.Adam(groups(_clone(params)), lr=0.01, state_dtype="int8")
    other.load_state_dict(_saved(opt))
    p, q = params[0], other.param_groups[0]["params"][0]
    expanded = C.dequantize_int8(opt.state[p]["exp_avg"], opt.state[p]["exp_avg" + C.SCALE], 32,
                                 torch.float32)
    codes, absmax = C.quantize_int8(expanded, 256, False)
    assert torch.equal(other.state[q]["exp_avg"], codes)
    assert torch.equal(other.state[q]["exp_avg" + C.SCALE], absmax)


def _legacy_int8(value, block, non_negative):
    """``value`` as version 0.2.0 quantised it: per block, the nearest code of its dynamic
    map (brute force), and the block's largest magnitude."""
    table = code_maps.legacy_code_table(not non_negative).double()
    codes, scales = [], []
    for chunk in value.reshape(-1).double().split(block):
        scale = chunk.abs().max()
        scales.append(scale.float())
        normalised = chunk / scale if scale > 0 else chunk
        index = (normalised[:, None] - table[None, :]).abs().argmin(dim=1)
        codes.append(index if non_negative else index - 127)
    dtype = torch.uint8 if non_negative else torch.int8
    return torch.cat(codes).to(dtype).view(value.shape), torch.stack(scales)


def test_int8_state_dict_of_version_0_2_is_read_with_its_own_code_map() -> None:
    """0.2.0 saved int8 state as codes of its dynamic map with ``<name>_absmax`` scales: a
    loader decodes them with that map (not the current one, whose codes mean other values),
    and an int8 optimizer re-quantises them with the current map."""
    targets, weights = problem(dtype=torch.float32)
    params = make_params(torch.float32)
    opt = O.Adam(groups(params), lr=0.01, state_dtype="int8")
    for _ in range(2):
        _step(opt, params, targets, weights)
    spec = {e.name: e for e in opt._state_spec(opt.param_groups[0])}
    legacy = _saved(opt)
    expected, differs = {}, []
    for index, entries in legacy["state"].items():
        for name in [key for key in entries if key + C.SCALE in entries]:
            full = C.dequantize_int8(entries[name], entries.pop(name + C.SCALE), 256,
                                     torch.float32)
            codes, scales = _legacy_int8(full, 256, spec[name].non_negative)
            entries[name], entries[name + C.LEGACY_SCALE] = codes, scales
            expected[index, name] = C.dequantize_int8(codes, scales, 256, torch.float32,
                                                      legacy=True)
            differs.append(not torch.equal(expected[index, name], C.dequantize_int8(
                codes, scales, 256, torch.float32)))
    assert len(expected) == 2 * len(params)
    assert any(differs)  # (read with the current map, the same codes are other values)

    other = O.Adam(groups(_clone(params)), lr=0.01, state_dtype="int8")
    other.load_state_dict(legacy)
    full = O.Adam(groups(_clone(params)), lr=0.01)
    full.load_state_dict(legacy)
    others = [p for g in other.param_groups for p in g["params"]]
    fulls = [p for g in full.param_groups for p in g["params"]]
    for (index, name), value in expected.items():
        state = other.state[others[index]]
        assert name + C.LEGACY_SCALE not in state
        codes, scales = C.quantize_int8(value, 256, spec[name].non_negative)
        assert torch.equal(state[name], codes), name
        assert torch.equal(state[name + C.SCALE], scales), name
        assert torch.equal(full.state[fulls[index]][name], value), name
    _step(other, others, targets, weights)  # and it steps on
    assert all(torch.isfinite(p).all() for p in others)


@pytest.mark.parametrize("state_dtype", DTYPES)
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_step_in_backward_and_copies_step_like_step(info, path, state_dtype) -> None:
    """Same bits whichever way a compact optimizer steps: step(), inside backward, after a
    deepcopy or a pickle round trip (the stochastic rounding is seeded per parameter)."""
    targets, weights = problem(dtype=torch.float32)
    flags = {**info.base, **PATHS[path], "state_dtype": state_dtype}
    params = make_params(torch.float32)
    opt = info.cls(groups(params), **flags)
    for _ in range(4):
        _step(opt, params, targets, weights)

    other = make_params(torch.float32)
    in_backward = info.cls(groups(other), **flags)
    in_backward.step_in_backward(other)
    for _ in range(2):
        loss_fn(other, targets, weights).mul(
            -1.0 if flags.get("maximize") else 1.0).backward()
    copied = copy.deepcopy(in_backward)
    copied = pickle.loads(pickle.dumps(copied))
    copied_params = copied.param_groups[0]["params"] + copied.param_groups[1]["params"]
    for _ in range(2):
        _step(copied, copied_params, targets, weights)
    assert all(torch.equal(p, q) for p, q in zip(params, copied_params))


def test_declared_non_negative_state_is_non_negative() -> None:
    """What ``StateSpec.non_negative`` promises (the unsigned code relies on it)."""
    for info, config in CASES:
        targets, weights = problem()
        params = make_params()
        opt = info.cls(groups(params), **info.base, **config)
        for _ in range(20):
            _step(opt, params, targets, weights)
            for group in opt.param_groups:
                for entry in opt._state_spec(group):
                    if entry.non_negative:
                        for p in group["params"]:
                            assert bool((opt.state[p][entry.name] >= 0).all()), (
                                info.name, config, entry.name)


# ------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"state_dtype": "fp8"}, ValueError, "state_dtype"),
    ({"state_dtype": "float16"}, ValueError, "state_dtype"),
    ({"state_dtype": torch.bfloat16}, ValueError, "state_dtype"),
    ({"state_dtype": "int8", "state_block_size": 0}, ValueError, "state_block_size"),
    ({"state_dtype": "int8", "state_block_size": 100}, ValueError, "state_block_size"),
    ({"state_dtype": "int8", "state_block_size": 1 << 17}, ValueError, "state_block_size"),
    ({"state_dtype": "int8", "state_block_size": 64.0}, TypeError, "state_block_size"),
    ({"state_dtype": "int8", "state_block_size": True}, TypeError, "state_block_size"),
    ({"state_dtype": "bfloat16", "state_block_size": 64}, ValueError, "state_block_size"),
    ({"state_block_size": 64}, ValueError, "state_block_size"),
    ({"state_dtype": "int8", "differentiable": True}, ValueError, "differentiable"),
])
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_bad_options_are_refused_at_construction(info, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        info.cls(make_params(), **info.base, **kwargs)


def test_sparse_gradients_are_refused_with_compact_momentum() -> None:
    embedding = torch.nn.Embedding(10, 4, sparse=True)
    opt = O.SGD(embedding.parameters(), lr=0.1, momentum=0.9, state_dtype="int8")
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("state_dtype", DTYPES)
def test_complex_parameters(state_dtype) -> None:
    """Complex state is kept as its real view (..., 2) and comes back complex when loaded
    into a full-precision optimizer."""
    torch.manual_seed(0)
    param = torch.randn(40, dtype=torch.complex64, requires_grad=True)
    ref = param.detach().clone().requires_grad_(True)
    opt = O.Adam([param], lr=0.01, state_dtype=state_dtype)
    ref_opt = O.Adam([ref], lr=0.01)
    for _ in range(5):
        for p, o in ((param, opt), (ref, ref_opt)):
            o.zero_grad()
            (p.abs() ** 2).sum().backward()
            o.step()
    assert opt.state[param]["exp_avg"].shape == (40, 2)
    torch.testing.assert_close(param, ref, atol=5e-3, rtol=0)
    full = O.Adam([param], lr=0.01)
    full.load_state_dict(_saved(opt))
    assert full.state[param]["exp_avg"].dtype == torch.complex64
    same = O.Adam([param], lr=0.01, state_dtype=state_dtype)
    same.load_state_dict(_saved(opt))
    assert all(torch.equal(same.state[param][k], v) for k, v in opt.state[param].items())


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_a_block_of_subnormal_values_keeps_its_zeros_and_signs(signed) -> None:
    """A block whose largest magnitude is a float32 subnormal: scaled by the smallest scale
    (1 over it would overflow, every code decoding to +-the block's maximum), so zeros stay
    zero, no sign flips, and every value is within a code step of that scale."""
    values = torch.tensor([2e-39, 0.0, 1e-39, 1e-40, 1e-45, 0.0] * 5 + [0.0, 0.0])
    if signed:
        values[2::3] = -values[2::3]
    codes, absmax = C.quantize_int8(values, 32, non_negative=not signed)
    assert torch.equal(absmax, torch.tensor([code_maps.SMALLEST_SCALE]))
    back = C.dequantize_int8(codes, absmax, 32, torch.float32)
    assert not back[values == 0].any()
    assert (back * values >= 0).all()  # (no sign flipped)
    assert (back - values).abs().max() <= code_maps.SMALLEST_SCALE / 100
