"""The experiments' CPU processes keep freed host memory (host_memory.keep_freed_memory).

Each case runs in a fresh interpreter: the allocator settings are per process.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt",
)

# page faults per allocate-fill-free of a 48 MB tensor (median of 10 rounds: a round now and
# then lands on fresh heap when a small allocation took the front of the kept block), before
# and after the given setup
_PROBE = textwrap.dedent("""
    import json, resource, statistics, sys
    import torch

    def faults_per_round():
        torch.empty(12 << 20).fill_(1.0)  # (first touch of a kept block faults once)
        counts = []
        for _ in range(10):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            torch.empty(12 << 20).fill_(1.0)
            counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return statistics.median(counts)

    default = faults_per_round()
    exec(sys.argv[1])
    print(json.dumps({"default": default, "after": faults_per_round(), "kept": kept}))
""")


def _probe(setup: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    environ.update(env, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PROBE, setup], env=environ, check=True,
                         capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_large_blocks_are_reused_without_page_faults() -> None:
    res = _probe("from torchopt_survey.experiments.runtime.host_memory import keep_freed_memory\n"
                 "kept = keep_freed_memory()")
    assert res["kept"] is True
    # 48 MB is ~12,000 pages: the system default faults through all of them every round
    assert res["default"] > 5000, res
    assert res["after"] < res["default"] / 20, res


def test_a_cpu_run_process_keeps_freed_memory() -> None:
    res = _probe(
        "from torchopt_survey.experiments.runtime import host_memory\n"
        "from torchopt_survey.experiments.runtime.process import RunOptions, prepare_process\n"
        "prepare_process(RunOptions(device='cpu', deterministic=False))\n"
        "kept = host_memory._applied")
    assert res["kept"] is True
    assert res["after"] < res["default"] / 20, res


@pytest.mark.parametrize("env", [{"TORCHOPT_SURVEY_SYSTEM_MALLOC": "1"},
                                 {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_the_users_allocator_settings_are_left_alone(env: dict[str, str]) -> None:
    res = _probe("from torchopt_survey.experiments.runtime.host_memory import keep_freed_memory\n"
                 "kept = keep_freed_memory()", **env)
    assert res["kept"] is False
    assert res["after"] > 5000, res
