"""Interleaved timing of several training-step variants on a shared, noisy machine.

Each round runs every variant for ``steps`` steps, in an order that rotates from round to round,
so load from other processes falls on all variants alike. Two clocks per round: the process's
CPU time (``time.process_time``; with one thread this is the work done, and is what the ratios
use, because wall time on a 2-core machine shared with other jobs mostly measures the other
jobs) and wall time (printed beside it). A variant's figure is the median over rounds. Warm-up
steps (including any ``torch.compile`` compilation) run before the first round and are reported
apart, never timed into the figures.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def warm_up(variants: dict[str, Callable[[], object]], steps: int) -> dict[str, float]:
    """Run each variant ``steps`` times; return the wall seconds each took (compilation included)."""
    seconds = {}
    for name, step in variants.items():
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        seconds[name] = time.perf_counter() - t0
        print(f"  warm-up {name:<44} {seconds[name]:7.1f} s", flush=True)
    return seconds


def interleaved(variants: dict[str, Callable[[], object]], rounds: int,
                steps: int, sync: Callable[[], object] | None = None) -> dict[str, dict]:
    """Median seconds per step, ``{"cpu": ..., "wall": ...}`` per variant, with the per-round
    figures under ``"cpu_rounds"`` / ``"wall_rounds"`` (for :func:`ratio_spread`). ``sync``:
    called before each variant's steps start and before they are read as done
    (``torch.cuda.synchronize`` for a GPU, whose work runs after the Python call returns; its
    time is then the wall time, the CPU time only the host's)."""
    names = list(variants)
    cpu: dict[str, list[float]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            step = variants[name]
            if sync is not None:
                sync()
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                step()
            if sync is not None:
                sync()
            cpu[name].append((time.process_time() - c0) / steps)
            wall[name].append((time.perf_counter() - w0) / steps)
    return {n: {"cpu": statistics.median(cpu[n]), "wall": statistics.median(wall[n]),
                "cpu_rounds": cpu[n], "wall_rounds": wall[n]} for n in names}


def ratio_spread(slow: dict, fast: dict, clock: str = "cpu") -> str:
    """``slow``'s time over ``fast``'s, round by round (the two ran in the same round, so load
    falls on both): ``"x1.23 (rounds 1.10-1.31)"``, the median and the range over rounds."""
    ratios = sorted(a / b for a, b in zip(slow[f"{clock}_rounds"], fast[f"{clock}_rounds"]))
    return f"x{statistics.median(ratios):.2f} (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
