"""Slow tier: the feedback-loop benchmark runs end to end on the real MNIST diffusion starter
(simulated raters through the HTTP API, export, Diffusion-DPO, held-out comparison, gate), at a
size that finishes in a few minutes. The figures themselves come from the full run in
docs/loop.md; this checks the path still works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_feedback_loop_benchmark_runs_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "feedback_loop.py"), "--work",
         str(tmp_path / "work"), "--out", str(out), "--jobs", "4", "--steps", "2",
         "--eval-pairs", "20", "--gate-n", "50"],
        capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dataset"]["pairs"] > 0 and result["feedback"]["comparisons"] == 32
    assert 0.0 <= result["held_out"]["win_rate"] <= 1.0 and result["held_out"]["pairs"] == 20
    assert set(result["gate"]["base"]) == {"fid", "conditional_accuracy"}
    if result["promoted"]:
        assert result["served_after_promotion"] == "diffusion-mnist@v2"
