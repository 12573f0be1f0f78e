"""What machine a benchmark ran on: CPU model, the ISA flags that decide kernels, torch's
chosen kernel family and thread count. Every benchmark prints this line and stores it."""

from __future__ import annotations

import platform
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma")


def machine() -> dict:
    import torch

    model, flags = platform.processor() or "unknown", set()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    return {"cpu": model, "isa": [f for f in FLAGS if f in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def machine_line() -> str:
    m = machine()
    return (f"machine: {m['cpu']}; ISA {' '.join(m['isa']) or '-'}; torch {m['torch']} "
            f"kernels {m['torch_cpu_capability']}, {m['threads']} thread(s)")


def matmul_peak(dtype: str = "float32", n: int = 1024, repeats: int = 5,
                device: str = "cpu") -> float:
    """The measured matmul peak of this machine at the current thread count, GFLOP/s: the best
    of ``repeats`` timings of ``n x n @ n x n`` in ``dtype`` (``float32`` or ``bfloat16``), after
    one warm-up. The denominator of "fraction of the peak" in the benchmarks' rows. On a CUDA
    ``device`` each timing waits for the GPU (and float32 follows torch's TF32 setting)."""
    import time

    import torch

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, device=device).to(dt), torch.randn(n, n, device=device).to(dt)

    def sync():
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def step_flops(fn) -> int:
    """The FLOPs of one call of ``fn`` (matmuls, convolutions, attention: what
    ``torch.utils.flop_counter`` counts, forward and backward), counted by running it once."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def keep_freed_memory_line() -> str:
    """Set the C allocator the way ``aigc train`` does on CPU (aigc.allocator: freed memory kept
    in the process; ``AIGC_KEEP_FREED_MEMORY=0`` leaves glibc's defaults) and say so. The setting
    is per process, so in a benchmark that times two libraries in one process both get it."""
    from aigc import allocator

    state = allocator.keep_freed_memory()
    return (f"allocator: freed memory kept in the process: {state} (aigc.allocator, as `aigc "
            f"train` sets it on CPU; per process, so every side of this run has it)")
