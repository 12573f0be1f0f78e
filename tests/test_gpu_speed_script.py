"""benchmarks/gpu_speed.py measures the GPU path only when a GPU is lent (issue #17); these
checks run its code on the CPU so that a lent GPU's minutes are not spent finding a broken
script, and check that without CUDA it says so instead of failing somewhere inside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speed.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_stops_with_a_message():
    res = _run()
    assert res.returncode == 1
    assert "no CUDA device here" in res.stderr and "--device cpu --small" in res.stderr


def test_bad_sizes_are_refused_before_any_work():
    res = _run("--device", "cpu", "--gpt-width", "100", "--gpt-heads", "6")
    assert res.returncode == 2 and "must be a multiple of --gpt-heads" in res.stderr
    res = _run("--device", "cpu", "--rounds", "0")
    assert res.returncode == 2 and "--rounds must be 1 or more" in res.stderr


def test_the_script_runs_both_families_on_the_cpu():
    res = _run("--device", "cpu", "--small", "--no-compile", "--rounds", "2", "--steps", "1",
               "--warmup", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    for row in ("ours fp32", "transformers fp32", "ours bf16", "transformers bf16",
                "ours fp32 +channels-last", "diffusers bf16 +channels-last"):
        assert f"  {row} " in out, row
    # both families end with a best-against-best line naming a row of each side
    best = [line for line in out.splitlines() if "best against best:" in line]
    assert len(best) == 2
    assert "ours" in best[0] and "transformers" in best[0]
    assert "ours" in best[1] and "diffusers" in best[1]
    # FLOPs were counted (a fraction of the peak needs them)
    assert "FLOPs per training step (torch.utils.flop_counter): ours 0.0 G" not in out
