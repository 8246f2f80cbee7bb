"""``fused=True`` under FSDP2 (``fully_shard``) on two CPU ranks (gloo): DTensor parameters.

Issue #7 item 5: a DTensor used to reach the C kernel as a raw pointer and kill both processes
(SIGSEGV). The fused path now runs the kernel on each rank's local shard (state made with
``zeros_like`` stays a DTensor). This test starts two worker processes (this file with
``--worker``) on a free 127.0.0.1 port, bounded by a timeout, and checks that every rank exits
cleanly and that the sharded fused run matches an unsharded forloop run on the same data. The
model includes a 1-element bias, whose shard is empty on rank 1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TIMEOUT_S = 300

#: (class name, kwargs): lazy state (SGD momentum), scalar + tensor state, a flag-heavy one
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("Adam", {"lr": 0.01, "weight_decay": 0.01}),
    ("Adagrad", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("NAdam", {"lr": 0.01, "decoupled_weight_decay": True, "weight_decay": 0.1}),
]
STEPS = 4


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_fused_matches_unsharded() -> None:
    pytest.importorskip("torch.distributed.fsdp")
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch built without gloo")
    port = _free_port()
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, __file__, "--worker", str(rank), str(port)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT_S)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:  # (a hung or failed peer must not outlive the test)
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for rank, (rc, _out, err) in enumerate(outputs):
        assert rc == 0, f"rank {rank} exited with {rc} (negative: a signal):\n{err[-3000:]}"
    reports = [json.loads(next(line[7:] for line in out.splitlines() if line.startswith("REPORT ")))
               for _rc, out, _err in outputs]
    for rank, report in enumerate(reports):
        assert report["package"].startswith(str(ROOT)), report["package"]
        assert report["errors"] == [], f"rank {rank}: {report['errors']}"
        assert report["checked"] == len(CONFIGS), report
    assert reports[1]["empty_shards"] >= 1  # the 1-element bias has no elements on rank 1


def _worker(rank: int, port: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    import torchopt_survey
    import torchopt_survey.optim as O

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    mesh = init_device_mesh("cpu", (2,))

    def make_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(),
                                   torch.nn.Linear(10, 1))

    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 6, generator=gen), torch.randn(16, 1, generator=gen))
               for _ in range(STEPS)]
    errors: list[str] = []
    empty = 0
    for name, kwargs in CONFIGS:
        cls = getattr(O, name)
        reference = make_model()
        ref_opt = cls(reference.parameters(), **kwargs, foreach=False)
        model = make_model()
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = cls(model.parameters(), **kwargs, fused=True)
        for x, y in batches:  # the same batch on both ranks: averaged grads = unsharded grads
            for m, o in ((model, opt), (reference, ref_opt)):
                o.zero_grad()
                torch.nn.functional.mse_loss(m(x), y).backward()
                o.step()
        for (pname, p), q in zip(model.named_parameters(), reference.parameters()):
            if not isinstance(p, DTensor):
                errors.append(f"{name}: {pname} is not a DTensor")
                continue
            empty += p.to_local().numel() == 0
            full = p.full_tensor()
            if not torch.allclose(full, q.detach(), atol=1e-6, rtol=1e-5):
                errors.append(f"{name}: {pname} differs by {(full - q).abs().max().item():.3g}")
            for sname, value in opt.state[p].items():
                if value.dim() > 0 and not isinstance(value, DTensor):
                    errors.append(f"{name}: state {sname} of {pname} is not a DTensor")
    dist.barrier()
    dist.destroy_process_group()
    print("REPORT " + json.dumps({"checked": len(CONFIGS), "errors": errors,
                                  "empty_shards": empty, "package": torchopt_survey.__file__}))


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker(int(sys.argv[-2]), int(sys.argv[-1]))
