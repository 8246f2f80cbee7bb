"""Compact state read and written inside the generated Triton kernel, under ``TRITON_INTERPRET=1``.

From the second step on (once the state is compact), a fused compact group on the Triton
backend is one launch of the compact kernel: bfloat16 state loaded as its bits and stored
with the seeded stochastic rounding, int8 codes and block scales decoded, the update run,
each quantisation block (one program) re-quantised with its new largest magnitude. The
oracle is the general path it replaces on the same backend -- expand the state, run the
ordinary Triton kernel, compact again with the tensor code -- which it must equal bit for
bit: parameters, codes, scales, bfloat16 state, step counts.

As in ``test_fused_triton.py`` the checks run in a subprocess (the interpreter must be set
before triton is imported); the pytest tests only read its report. Tiny tensors, three steps;
the bfloat16 unit of work is shrunk so that tensors span several programs (which exercises
the "last program writes the step" counter), and int8 runs with blocks of 32 (several blocks
and a partial last one per tensor) and of 96 (not a power of two: masked lanes).
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

import pytest
from helpers.processes import interpreted_report

#: sizes: several blocks with a partial last one, a one-element tensor, an exact block, empty
SHAPES = [(100,), (7, 5), (1,), (64,), (0,)]
STEPS = 3
#: (state_dtype, state_block_size) of every class's check
VARIANTS = [("bfloat16", None), ("int8", 32)]


@pytest.fixture(scope="module")
def report() -> dict:
    pytest.importorskip("triton")
    return interpreted_report(__file__)


def test_every_class_in_the_triton_kernel_is_the_general_path(report) -> None:
    from helpers.optim_cases import OPTIMS

    names = {info.name for info in OPTIMS}
    assert len(names) == 11
    checked = {tuple(label.split()[:2]) for label in report["checked"]}
    assert checked >= {(name, dtype) for name in names for dtype, _ in VARIANTS}, checked
    assert not report["failures"], "\n\n".join(report["failures"])


def test_the_compact_triton_kernel_ran(report) -> None:
    """Not the general path in disguise: the compact kernel was compiled, launched on every
    step after the first, and the expand-step-compact path never ran after the first."""
    assert report["compiled"] >= 2 * len(VARIANTS), report["compiled"]
    assert not report["not_in_kernel"], report["not_in_kernel"]


# ---------------------------------------------------------------------------------------------
# the checks (run in the subprocess)
# ---------------------------------------------------------------------------------------------
def _checks() -> dict[str, Any]:
    import torch
    from helpers.optim_cases import CASES, OPTIMS

    from torchopt_survey.optim.core import compact_state as C
    from torchopt_survey.optim.core import emit_triton as TF
    from torchopt_survey.optim.core import fused
    from torchopt_survey.optim.core.kernel_cache import COMPILE_LOG

    assert fused.BACKEND == "triton"
    torch.set_num_threads(1)
    TF.BF16_UNIT = 32  # bfloat16: the 100- and 64-element tensors take several programs
    failures: list[str] = []
    checked: list[str] = []
    not_in_kernel: list[str] = []
    launches: list[int] = []
    expands: list[int] = []
    run_kernel, expand = fused.run_compact_triton, C.expand

    def spy_kernel(*args: Any, **kwargs: Any) -> None:
        launches.append(1)
        run_kernel(*args, **kwargs)

    def spy_expand(*args: Any, **kwargs: Any) -> None:
        expands.append(1)
        expand(*args, **kwargs)

    fused.run_compact_triton, C.expand = spy_kernel, spy_expand

    def params(dtype: Any) -> list[Any]:
        generator = torch.Generator().manual_seed(0)
        return [torch.randn(s, generator=generator, dtype=torch.float64).to(dtype)
                .requires_grad_(True) for s in SHAPES]

    def run(opt: Any, ps: list[Any], label: str, watch: bool) -> None:
        for step in range(STEPS):
            generator = torch.Generator().manual_seed(100 + step)
            for p in ps:
                p.grad = (torch.randn(p.shape, generator=generator, dtype=torch.float64)
                          .to(p.dtype) + 0.5 * p.detach())
            del launches[:], expands[:]
            opt.step()
            if watch and step and (len(launches) != len(opt.param_groups) or expands):
                not_in_kernel.append(f"{label} step {step}: {len(launches)} launches, "
                                     f"{len(expands)} expansions")

    def build(info: Any, config: dict, ps: list[Any], dtype: str, block: int | None) -> Any:
        groups = [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.02}]
        extra = {"state_block_size": block} if block else {}
        return info.cls(groups, **{**info.base, **config}, fused=True, state_dtype=dtype,
                        **extra)

    def compare(info: Any, config: dict, dtype: str, block: int | None,
                param_dtype: Any = torch.float32) -> None:
        label = f"{info.name} {dtype} {config} block={block} {param_dtype}"
        ps = params(param_dtype)
        opt = build(info, config, ps, dtype, block)
        run(opt, ps, label, watch=True)
        in_kernel = C._step_in_kernel
        C._step_in_kernel = lambda *args: False  # the general path
        try:
            qs = params(param_dtype)
            ref = build(info, config, qs, dtype, block)
            run(ref, qs, label, watch=False)
        finally:
            C._step_in_kernel = in_kernel
        for index, (p, q) in enumerate(zip(ps, qs)):
            assert torch.equal(p, q), (index, (p - q).abs().max().item())
            assert opt.state[p].keys() == ref.state[q].keys(), index
            for name, value in ref.state[q].items():
                mine = opt.state[p][name]
                assert mine.dtype == value.dtype and torch.equal(mine, value), (index, name)
        checked.append(label)

    def check(fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 -- every failure is reported, the run goes on
            failures.append(f"{fn.__name__}{args}:\n{traceback.format_exc(limit=6)}")

    # every class (the first configuration with tensor state) with both state dtypes
    firsts = {}
    for info, config in CASES:
        if info.name not in firsts and (info.name != "SGD" or config.get("momentum")):
            firsts[info.name] = (info, config)
    assert len(firsts) == len(OPTIMS)
    for info, config in firsts.values():
        for dtype, block in VARIANTS:
            check(compare, info, config, dtype, block)
    # float64 parameters; the default block size; one that is not a power of two; the
    # remaining configurations of the Adam family (amsgrad's read-only max, decoupled decay)
    adam = next(info for info in OPTIMS if info.name == "Adam")
    for dtype, block in VARIANTS:
        check(compare, adam, {}, dtype, block, torch.float64)
    check(compare, adam, {"amsgrad": True}, "int8", None)
    check(compare, adam, {"weight_decay": 0.1}, "int8", 96)
    for info, config in CASES:
        if info.name in ("AdamW", "NAdam", "RMSprop") and (info, config) not in firsts.values():
            check(compare, info, config, "int8", 32)

    def midpoints(signed: bool) -> None:
        """The quantiser on every midpoint between codes and its float32 neighbours (see
        test_compact_fused_kernel.py): the kernel stores what ``quantize_int8`` stores."""
        from test_compact_fused_kernel import _hard_values

        import torchopt_survey.optim as O

        values = _hard_values(signed)
        param = torch.zeros(values.numel(), requires_grad=True)
        if signed:
            opt = O.SGD([param], lr=0.0, momentum=0.9, fused=True, state_dtype="int8")
            name = "momentum_buffer"
        else:
            opt = O.Adamax([param], lr=0.0, eps=0.0, fused=True, state_dtype="int8")
            name = "exp_inf"
        param.grad = torch.ones_like(param)
        opt.step()  # creates the state (general path)
        state = opt.state[param]
        state[name].zero_()
        state[name + C.SCALE].zero_()  # a zero buffer: the new state is the gradient itself
        param.grad = values.clone()
        del launches[:]
        opt.step()
        assert launches, "the compact kernel did not run"
        codes, absmax = C.quantize_int8(values, 256, non_negative=not signed)
        assert torch.equal(state[name + C.SCALE], absmax)
        wrong = (state[name] != codes).nonzero().flatten()
        assert not wrong.numel(), (values[wrong][:5], state[name][wrong][:5], codes[wrong][:5])

    for signed in (True, False):
        check(midpoints, signed)
    compiled = sum(1 for label, _seconds, _disk in COMPILE_LOG if label.endswith(" compact"))
    return {"checked": checked, "failures": failures, "not_in_kernel": not_in_kernel,
            "compiled": compiled}


if __name__ == "__main__" and "--interpret" in sys.argv:
    print("REPORT " + json.dumps(_checks()))
