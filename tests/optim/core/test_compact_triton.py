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
and a partial last one per tensor; one pass), of 96 (not a power of two: masked lanes) and of
256, the latter two wider than the program's lanes (shrunk to 64), so walked twice; AMP runs
one step more, an overflow.

The GPU form of the kernel, which the interpreter never runs, is compiled for sm_90 without a
GPU (triton's bundled ptxas); on a GPU (``-m cuda``, ``benchmarks/gpu_checks.sh``) the same
comparison runs on CUDA tensors.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

import pytest
from helpers.processes import checkout_pythonpath, interpreted_report, script_report

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


def test_cuda_source_compiles_for_sm90() -> None:
    """The GPU spelling of the kernel, which the interpreter never runs (its dequantising
    product is inline assembly there): compiled for sm_90 with triton's bundled ptxas, in a
    process without the interpreter -- no GPU needed."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=checkout_pythonpath(), OMP_NUM_THREADS="1")
    report = script_report(__file__, "--compile-cuda", env, timeout=300)
    if report.get("skip"):
        pytest.skip(report["skip"])
    assert len(report["kernels"]) == 4, report
    for label, (products, flushed) in report["kernels"].items():
        # int8: the dequantising products are their own non-flushing mul.rn.f32
        assert products > 0 if "int8" in label else products == 0, (label, products)
        assert flushed == 0, (label, flushed)


@pytest.mark.cuda
@pytest.mark.parametrize("variant", [*VARIANTS, ("int8", 8192)], ids=lambda v: f"{v[0]}-{v[1]}")
def test_cuda_compact_kernel_is_the_general_path(variant, monkeypatch) -> None:
    """On the GPU (skipped without one): every class, the compact kernel against the general
    path, bit for bit as under the interpreter -- the dequantising product is its own
    instruction, so the compiler's multiply-add contraction sees what the general path's
    kernel sees. Blocks of 8192 are wider than a program's lanes (walked twice)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    spy = Spy()
    for module, name, value in spy.patches:
        monkeypatch.setattr(module, name, value)
    dtype, block = variant
    firsts = _first_configs()
    for info, config in firsts.values():
        for param_dtype in (torch.float32, torch.float64):
            compare(info, config, dtype, block, spy, param_dtype, device="cuda")
    adam, config = firsts["Adam"]
    compare(adam, config, dtype, block, spy, device="cuda", amp=True)
    assert not spy.not_in_kernel, spy.not_in_kernel


# ---------------------------------------------------------------------------------------------
# the checks (run in the subprocess)
# ---------------------------------------------------------------------------------------------
class Spy:
    """Counts, per step, the compact kernel's launches and the general path's expansions."""

    def __init__(self) -> None:
        from torchopt_survey.optim.core import compact_state as C
        from torchopt_survey.optim.core import fused

        self.launches = self.expands = 0
        self.not_in_kernel: list[str] = []
        run_kernel: Any = fused.run_compact_triton
        expand: Any = C.expand

        def spy_kernel(*args: Any, **kwargs: Any) -> None:
            self.launches += 1
            run_kernel(*args, **kwargs)

        def spy_expand(*args: Any, **kwargs: Any) -> None:
            self.expands += 1
            expand(*args, **kwargs)

        self.patches = [(fused, "run_compact_triton", spy_kernel), (C, "expand", spy_expand)]


def _params(dtype: Any, device: str) -> list[Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=generator, dtype=torch.float64).to(device, dtype)
            .requires_grad_(True) for s in SHAPES]


def _run(opt: Any, params: list[Any], label: str, spy: Spy | None, amp: bool = False) -> None:
    """``STEPS`` steps; with ``spy``, every step after the first must be one launch of the
    compact kernel per group and no expansion. ``amp``: gradients scaled by 256 with AMP's
    ``grad_scale``, and one step more, the last but one an overflow (``found_inf``)."""
    import torch

    for step in range(STEPS + amp):
        generator = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = (torch.randn(p.shape, generator=generator, dtype=torch.float64)
                      .to(p.device, p.dtype) + 0.5 * p.detach())
            if amp:
                p.grad.mul_(256.0)
        if amp:
            opt.grad_scale = torch.tensor([256.0], device=params[0].device)
            opt.found_inf = torch.tensor([float(step == STEPS - 1)], device=params[0].device)
        if spy is not None:
            spy.launches = spy.expands = 0
        opt.step()
        if spy is not None and step and (spy.launches != len(opt.param_groups)
                                         or spy.expands):
            spy.not_in_kernel.append(f"{label} step {step}: {spy.launches} launches, "
                                     f"{spy.expands} expansions")


def _build(info: Any, config: dict, params: list[Any], dtype: str, block: int | None) -> Any:
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]
    extra = {"state_block_size": block} if block else {}
    return info.cls(groups, **{**info.base, **config}, fused=True, state_dtype=dtype, **extra)


def compare(info: Any, config: dict, dtype: str, block: int | None, spy: Spy,
            param_dtype: Any = None, device: str = "cpu", amp: bool = False) -> str:
    """The compact kernel's run against the general path's (``_step_in_kernel`` off), bit
    for bit: parameters, gradients (unscaled under ``amp``), every state entry (codes,
    scales, bfloat16 state, step)."""
    import torch

    from torchopt_survey.optim.core import compact_state as C

    param_dtype = param_dtype or torch.float32
    label = f"{info.name} {dtype} {config} block={block} {param_dtype}" + " amp" * amp
    params = _params(param_dtype, device)
    opt = _build(info, config, params, dtype, block)
    _run(opt, params, label, spy, amp)
    in_kernel = C._step_in_kernel
    C._step_in_kernel = lambda *args: False  # the general path
    try:
        ref_params = _params(param_dtype, device)
        ref = _build(info, config, ref_params, dtype, block)
        _run(ref, ref_params, label, None, amp)
    finally:
        C._step_in_kernel = in_kernel
    for index, (p, q) in enumerate(zip(params, ref_params)):
        assert torch.equal(p, q), (index, (p - q).abs().max().item())
        assert torch.equal(p.grad, q.grad), index
        assert opt.state[p].keys() == ref.state[q].keys(), index
        for name, value in ref.state[q].items():
            mine = opt.state[p][name]
            assert mine.dtype == value.dtype and torch.equal(mine, value), (index, name)
    return label


def _first_configs() -> dict[str, Any]:
    """Each class's first configuration that keeps tensor state (plain SGD keeps none)."""
    from helpers.optim_cases import CASES

    firsts: dict[str, Any] = {}
    for info, config in CASES:
        if info.name not in firsts and (info.name != "SGD" or config.get("momentum")):
            firsts[info.name] = (info, config)
    return firsts


def _checks() -> dict[str, Any]:
    import torch
    from helpers.optim_cases import CASES, OPTIMS

    from torchopt_survey.optim.core import emit_triton as TF
    from torchopt_survey.optim.core import fused
    from torchopt_survey.optim.core.kernel_cache import COMPILE_LOG

    assert fused.BACKEND == "triton"
    torch.set_num_threads(1)
    TF.BF16_UNIT = 32  # bfloat16: the 100- and 64-element tensors take several programs
    TF.MAX_LANES = 64  # int8 blocks of 96 and 256 are walked in steps (blocks of 32 are not)
    failures: list[str] = []
    checked: list[str] = []
    spy = Spy()
    for module, name, value in spy.patches:
        setattr(module, name, value)

    def check(fn: Any, *args: Any, **kwargs: Any) -> None:
        try:
            label = fn(*args, **kwargs)
            if label:
                checked.append(label)
        except Exception:  # noqa: BLE001 -- every failure is reported, the run goes on
            failures.append(f"{fn.__name__}{args}:\n{traceback.format_exc(limit=6)}")

    firsts = _first_configs()
    assert len(firsts) == len(OPTIMS)
    for info, config in firsts.values():  # every class with both state dtypes
        for dtype, block in VARIANTS:
            check(compare, info, config, dtype, block, spy)
    # float64 parameters; the default block size; one that is not a power of two; the
    # remaining configurations of the Adam family (amsgrad's read-only max, decoupled decay)
    adam = next(info for info in OPTIMS if info.name == "Adam")
    for dtype, block in VARIANTS:
        check(compare, adam, {}, dtype, block, spy, torch.float64)
    check(compare, adam, {"amsgrad": True}, "int8", None, spy)
    check(compare, adam, {"weight_decay": 0.1}, "int8", 96, spy)
    for info, config in CASES:
        if info.name in ("AdamW", "NAdam", "RMSprop") and (info, config) not in firsts.values():
            check(compare, info, config, "int8", 32, spy)
    # AMP: gradients unscaled inside the kernel, an overflow step changing nothing
    for name in ("Adam", "Momentum"):  # (Momentum keeps no step: its own rounding counter)
        for dtype, block in VARIANTS:
            check(compare, *firsts[name], dtype, block, spy, amp=True)

    def midpoints(signed: bool) -> None:
        """The quantiser on every midpoint between codes and its float32 neighbours, and on
        blocks of subnormals: the kernel stores what ``quantize_int8`` stores."""
        from helpers.compact_cases import check_kernel_quantiser

        def kernel_step(step) -> None:
            spy.launches = 0
            step()
            assert spy.launches, "the compact kernel did not run"

        check_kernel_quantiser(signed, kernel_step)

    for signed in (True, False):
        check(midpoints, signed)
    compiled = sum(1 for label, _seconds, _disk in COMPILE_LOG if label.endswith(" compact"))
    return {"checked": checked, "failures": failures, "not_in_kernel": spy.not_in_kernel,
            "compiled": compiled}


def _compile_cuda() -> dict[str, Any]:
    from pathlib import Path

    import torch
    import triton

    import torchopt_survey.optim as O
    from torchopt_survey.optim.core import emit_triton as TF
    from torchopt_survey.optim.core import fused

    try:
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia import compiler as nvidia
        from triton.compiler import ASTSource
    except ImportError as error:
        return {"skip": f"triton without its CUDA backend: {error}"}
    if not (Path(nvidia.__file__).parent / "bin" / "ptxas").exists():
        return {"skip": "triton's bundled ptxas is missing"}
    signature = {name: kind for name, kind in [
        ("table_ptr", "*i64"), ("aux_ptr", "*i64"), ("numel_ptr", "*i64"),
        ("chunk_tensor_ptr", "*i32"), ("chunk_start_ptr", "*i64"), ("counter_ptr", "*i32"),
        ("nchunks_ptr", "*i32"), ("hp_ptr", "*fp64"), ("gs_ptr", "*fp32"), ("fi_ptr", "*fp32"),
        ("UNIT", "constexpr"),
        ("BLOCK", "constexpr")]}
    kernels = {}
    for state_dtype, dtype, unit in (("int8", torch.float32, 256), ("int8", torch.float64, 256),
                                     ("int8", torch.float32, 8192),  # (walked, AMP)
                                     ("bfloat16", torch.float32, TF.BF16_UNIT)):
        opt = O.Adam([torch.zeros(4, dtype=dtype, requires_grad=True)], fused=True,
                     state_dtype=state_dtype)
        group = opt.param_groups[0]
        spec = opt._state_spec(group)
        traced = fused.get_trace(opt, spec, group, ())
        forms = [None if entry.kind == "scalar" else "bfloat16" if state_dtype == "bfloat16"
                 else "uint8" if entry.non_negative else "int8" for entry in spec]
        storage = {None: torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8,
                   "uint8": torch.uint8}
        lanes = min(unit, TF.MAX_LANES)
        source = TF.emit_triton_compact(
            traced, (dtype, dtype, *(storage[form] for form in forms)),
            (None,) * len(traced.graph.hp_nodes), (None, None, *forms), unit,
            looped=lanes < unit, has_grad_scale=unit == 8192, has_found_inf=unit == 8192)
        kernel = TF.load_kernel(source, "sm90 check")
        compiled = triton.compile(ASTSource(kernel, signature, constexprs={"UNIT": unit,
                                                                           "BLOCK": lanes}),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        ptx = compiled.asm["ptx"]
        kernels[f"{state_dtype} {dtype} {unit}"] = (ptx.count("mul.rn.f32"),
                                                    ptx.count("mul.rn.ftz"))
    return {"kernels": kernels}


if __name__ == "__main__" and "--interpret" in sys.argv:
    print("REPORT " + json.dumps(_checks()))
if __name__ == "__main__" and "--compile-cuda" in sys.argv:
    print("REPORT " + json.dumps(_compile_cuda()))
