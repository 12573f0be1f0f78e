"""The C allocator's settings for CPU training and sampling (issue #17).

PyTorch on CPU allocates every activation and gradient with ``malloc`` and frees it when the
step no longer needs it. glibc serves blocks above its mmap threshold (128 KiB at first, moving
up to 32 MiB as it sees them freed) with fresh ``mmap`` calls, and gives memory at the top of
its heap back to the system once more than the trim threshold (twice the mmap threshold) lies
free there. A training step then asks the kernel for the same memory again every step, and
every page it touches is a page fault the kernel has to zero: tens of thousands a step for the
MNIST diffusion UNet, hundreds for the 0.8M-parameter GPT of ``benchmarks/gpt_speed.py``
(``python benchmarks/allocator_check.py`` prints them; sampling 32 images from the same UNet:
over 100,000). Keeping it: bare training steps 1.02-1.16x faster, ``aigc train`` end to end
1.01-1.06x, sampling 1.10-1.22x (docs/performance.md, "Keeping freed memory").

:func:`keep_freed_memory` fixes the mmap threshold at 32 MiB (the largest glibc's own
adjustment reaches) and the trim threshold above any heap (``mallopt``): blocks up to 32 MiB
come from the heap and freed memory stays in the process for the next step, so a step no
longer faults its memory in again (the process's peak memory within 3% of before). Blocks above
32 MiB keep their own mappings, as glibc gives them by default: a threshold of 1 GiB saved no
more time here, and repeated large blocks leave holes in the heap that the next request of the
same size does not fit, so the memory grew (quick probes). The cost of keeping freed
memory is that a training process holds its peak memory between steps instead of returning it,
which it needs again at every step anyway; a long-running studio keeps the memory of its
largest request. Every ``aigc`` command calls it first, and ``aigc.train.Trainer`` for CPU runs
started from Python. Setting only the trim threshold would be worse than nothing: it also
freezes the mmap threshold at 128 KiB, so every activation goes through ``mmap`` (much slower
steps in a quick probe).

Only glibc has ``mallopt`` with these meanings; elsewhere (musl, macOS) nothing is changed.
``AIGC_KEEP_FREED_MEMORY=0`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
# systems, which every glibc accepts (before 2.35 it refuses more).
MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = (1 << 31) - 1  # the largest int: never trim

_lock = threading.Lock()
_state: str | None = None  # None: not tried; else what keep_freed_memory() returned


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> str:
    """Keep freed memory in the process (see the module notes). Idempotent; returns what was
    done: ``"on"`` (thresholds set, or already set by an earlier call), ``"off"``
    (``AIGC_KEEP_FREED_MEMORY=0``) or ``"unsupported"`` (not glibc, or refused)."""
    global _state
    with _lock:
        if _state is not None:
            return _state
        if os.environ.get("AIGC_KEEP_FREED_MEMORY", "1").strip() in ("0", "false", "no", "off"):
            _state = "off"
            return _state
        libc = _glibc()
        if libc is None:
            _state = "unsupported"
            return _state
        # the mmap threshold first: a trim threshold alone would pin it at 128 KiB
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1)
        _state = "on" if ok else "unsupported"
        return _state
