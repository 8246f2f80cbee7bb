"""The CUDA fused kernels (generated Triton) run on CPU under ``TRITON_INTERPRET=1``.

The interpreter must be switched on before triton is imported, and it would turn every other
Triton use in the session into the slow interpreter, so the checks run in a subprocess: this file
re-executes itself with ``--interpret``, and the pytest test only checks the report. Tensors are
tiny (a few dozen elements) and the block size is shrunk so every tensor spans several programs,
which exercises the per-tensor "last program writes the step" counter.
"""

from __future__ import annotations

import copy
import json
import sys
import traceback
from typing import Any

import pytest
from helpers.processes import ROOT, interpreted_report


def test_triton_kernels_under_interpreter() -> None:
    pytest.importorskip("triton")
    report = interpreted_report(__file__)
    assert report["checked"] >= 80, report
    assert report["package"].startswith(str(ROOT)), report["package"]
    assert not report["failures"], "\n\n".join(report["failures"])


# ---------------------------------------------------------------------------------------------
# the checks (run in the subprocess)
# ---------------------------------------------------------------------------------------------
def _checks() -> dict[str, Any]:
    import torch
    from helpers import fused_cases as F

    import torchopt_survey
    import torchopt_survey.optim as O
    from torchopt_survey.optim.core import emit_triton as TF
    from torchopt_survey.optim.core import fused as _fused

    assert _fused.BACKEND == "triton"
    torch.set_num_threads(1)
    TF.BLOCK, TF.ITERS = 16, 2  # 32 elements per program: the 37- and 35-element tensors split
    failures: list[str] = []
    checked = 0

    def check(name: str, fn: Any) -> None:
        nonlocal checked
        checked += 1
        try:
            fn()
        except Exception:  # noqa: BLE001 -- every failure is reported, the run goes on
            failures.append(f"{name}:\n{traceback.format_exc(limit=6)}")

    for case in F.CASES:
        for dtype in F.DTYPES:
            def one(case: Any = case, dtype: Any = dtype) -> None:
                cls, kwargs = case
                ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
                ref_params = [p.detach().to(ref_dtype).requires_grad_()
                              for p in F.make_params(dtype)]
                # The interpreter converts float32 to bfloat16 by truncation (a GPU rounds to
                # nearest even, as torch does): the bias grows with every stored step, so
                # bfloat16 runs fewer steps here; the C test and the CUDA test run them all.
                steps = 3 if dtype == torch.bfloat16 else F.STEPS
                ref = F.run(cls, kwargs, ref_params, steps, round_to=dtype, foreach=False)
                params = F.make_params(dtype)
                opt = F.run(cls, kwargs, params, steps, fused=True)
                F.assert_run_close(params, opt, ref_params, ref, dtype)

            check(f"{F.case_id(case)} {dtype}", one)

    def amp(case: Any) -> None:
        cls, kwargs = case
        params = F.make_params(torch.float32)
        ref_params = F.make_params(torch.float32)
        opt = cls(params, **kwargs, fused=True)
        ref = cls(ref_params, **kwargs, foreach=False)
        scale = torch.tensor([256.0])
        for step in range(2):
            for p, q, g in zip(params, ref_params, F.make_grads(params, step)):
                p.grad, q.grad = g * 256.0, g.clone()
            opt.grad_scale, opt.found_inf = scale, torch.tensor([0.0])
            opt.step()
            ref.step()
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(p.grad, q.grad)  # stored back unscaled
        before = [p.detach().clone() for p in params]
        state = copy.deepcopy(opt.state_dict()["state"])
        for p, g in zip(params, F.make_grads(params, 7)):
            p.grad = g * 256.0
        opt.grad_scale, opt.found_inf = scale, torch.tensor([1.0])  # the skip case
        opt.step()
        assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))
        after = opt.state_dict()["state"]
        for index, entries in state.items():
            for name, value in entries.items():
                assert torch.equal(after[index][name], value), name

    for case in [F.CASES[1], F.CASES[12], F.CASES[17], F.CASES[8]]:
        check(f"amp {F.case_id(case)}", lambda case=case: amp(case))

    def first_step_skipped() -> None:
        params = F.make_params(torch.float32)
        opt = O.SGD(params, lr=0.1, momentum=0.9, fused=True)
        for p, g in zip(params, F.make_grads(params, 0)):
            p.grad = g
        opt.grad_scale, opt.found_inf = torch.tensor([2.0]), torch.tensor([1.0])
        opt.step()
        assert all(len(opt.state[p]) == 0 for p in params)

    check("found_inf on the first step", first_step_skipped)

    def tensor_lr() -> None:
        params = F.make_params(torch.bfloat16)
        ref_params = [p.detach().float().requires_grad_() for p in params]
        lr = torch.tensor(0.05)
        opt = O.NAdam(params, lr=lr, fused=True)
        ref = O.NAdam(ref_params, lr=torch.tensor(0.05), foreach=False)
        for step in range(4):
            for p, q, g in zip(params, ref_params, F.make_grads(ref_params, step)):
                p.grad, q.grad = g.to(torch.bfloat16), g.to(torch.bfloat16).float()
            opt.step()
            ref.step()
            for o in (opt, ref):
                o.param_groups[0]["lr"].mul_(0.5)  # a scheduler editing the tensor in place
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p.float(), q, **F.TOL[torch.bfloat16])

    check("tensor lr changed between steps", tensor_lr)

    def empty_and_mixed() -> None:
        params = [torch.zeros(0, requires_grad=True), torch.randn(40, requires_grad=True),
                  torch.randn(9, dtype=torch.float16, requires_grad=True)]
        opt = O.Adam(params, fused=True)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        opt.step()
        assert all(opt.state[p]["step"].item() == 2.0 for p in params)

    check("empty tensor and mixed dtypes", empty_and_mixed)

    def alignment(offset: int) -> None:
        # parameters that are views ``offset`` float32 elements into their storage: the kernel
        # may assume 16-byte aligned addresses (and vectorise) only when every address is one
        gen = torch.Generator().manual_seed(3)
        params = [torch.randn(n + offset, generator=gen)[offset:].detach().requires_grad_()
                  for n in (37, 64, 5)]
        ref_params = [p.detach().clone().requires_grad_() for p in params]
        opt, ref = O.Adam(params, fused=True), O.Adam(ref_params, foreach=False)
        for step in range(3):
            for p, q, g in zip(params, ref_params, F.make_grads(ref_params, step)):
                p.grad, q.grad = g.clone(), g
            opt.step()
            ref.step()
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p, q, **F.TOL[torch.float32])
        plan = next(reversed(TF._PLANS.values()))
        assert plan.aligned == (offset % 4 == 0), (offset, plan.aligned)

    for offset in (0, 1, 2):
        check(f"parameters {offset} elements into their storage",
              lambda offset=offset: alignment(offset))

    from helpers import replica_cases as R

    def per_replica(case: Any, dtype: Any) -> None:
        # programs of 32 elements: the [3, 4, 5] weight's replicas (20 elements each) straddle
        # program boundaries, so one program reads several replicas' values
        worst = R.stacked_vs_alone(*case, {"fused": True}, dtype, steps=3)
        limit = 1e-10 if dtype == torch.float64 else sum(R.FLOAT32_TOL.values())
        assert worst <= limit, worst

    for case in R.CASES:
        for dtype in (torch.float64, torch.float32):
            check(f"per-replica {R.case_id(case)} {dtype}",
                  lambda case=case, dtype=dtype: per_replica(case, dtype))
    return {"checked": checked, "failures": failures, "package": torchopt_survey.__file__}


if __name__ == "__main__" and "--interpret" in sys.argv:
    print("REPORT " + json.dumps(_checks()))
