"""Our optimizers under torch.distributed, two CPU processes (gloo), against one process.

Each scenario of ``dist_worker.py`` trains every configuration of ``helpers/optim_cases.py`` for
a few float64 steps and measures the largest parameter difference from the same steps taken in a
single plain process on the whole batch: DistributedDataParallel, ZeroRedundancyOptimizer,
FSDP2 (DTensor parameters, an empty shard on one rank; forloop, foreach and fused paths) and
torch.distributed.checkpoint (save on 2 ranks, load on 2 and on 1, and a state dict read before
the first step changing nothing). Compact optimizer state (``state_dtype``) is checked under
DDP and under FSDP2 against the one-process run with the same compact state (FSDP2's shards
keep the unsharded layout: int8 blocks of the whole tensor, bfloat16 rounding bits by global
element index), through DCP (save, load on 2 ranks and on 1, continue: equal to the run never
interrupted), through full and per-rank state dicts saved with ``torch.save`` and read with
``weights_only=True``, and its refusal for DTensor layouts other than dim-0 shards is checked
for every class; see ``dist_worker.py``. The two ranks run once for the whole module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
from helpers.processes import checkout_pythonpath, free_port

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("dist_worker.py")
SCENARIOS = ("ddp", "zero", "fsdp", "dcp", "compact", "fsdp-compact")
TIMEOUT_S = 300
#: float64; the only difference from one process is the order of the gradient all-reduce
TOL = 1e-10

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _env(rank: int, world: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
               PYTHONPATH=checkout_pythonpath(env))
    return env


def _launch(args: list[str], world: int, out: Path) -> None:
    """Start ``world`` ranks of the worker, wait (bounded), kill what is left, check exits."""
    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), *args], env=_env(rank, world, port),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(world)
    ]
    logs: list[str] = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        pytest.fail(f"distributed worker {args} did not finish in {TIMEOUT_S} s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{log[-4000:]}"


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("dist")
    _launch([",".join(SCENARIOS), str(out)], 2, out)
    _launch(["dcp-load1", str(out)], 1, out)
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*-rank*.json")):
        for record in json.loads(path.read_text()):
            found.setdefault(record["check"].split("/")[0], []).append(
                {**record, "rank": path.stem.rsplit("rank", 1)[1]})
    return found


@pytest.mark.parametrize("kind", [
    "ddp", "zero", "fsdp-forloop", "fsdp-foreach", "fsdp-fused", "dcp-lazy", "dcp-2to2", "dcp-2to1",
    "ddp-compact", "dcp-compact-lazy", "dcp-compact-2to2", "dcp-compact-2to1",
    "fsdp-compact-refused",
    "fsdp-compact", "fsdp-dcp-compact-lazy", "fsdp-dcp-compact-2to2", "fsdp-dcp-compact-2to1",
    "fsdp-compact-full", "fsdp-compact-full-to1", "fsdp-compact-rank-dict",
    "fsdp-compact-from-plain", "fsdp-compact-hsdp",
])
def test_matches_one_process(results: dict[str, list[dict[str, Any]]], kind: str) -> None:
    records = results.get(kind)
    assert records, f"no {kind} checks ran"
    bad = [r for r in records if "error" in r or r["diff"] > TOL]
    assert not bad, "\n".join(
        f"rank {r['rank']} {r['check']}: " + (r.get("traceback") or f"differs by {r['diff']:.3g}")
        for r in bad[:5])
