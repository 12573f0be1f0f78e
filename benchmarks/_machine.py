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
