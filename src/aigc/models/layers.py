"""Small layers shared by model families.

:func:`linear` is ``F.linear``, with the float32 CPU matrix products routed to oneDNN on the
machines where that is measured to be faster.

Why: PyTorch's CPU wheels multiply float32 matrices with MKL's ``sgemm``. On some CPUs oneDNN's
float32 GEMM is much faster at the shapes of our small transformers (about 2.2x on an AMD EPYC
with AVX-512, where MKL does not run its AVX-512 kernels); on others it is slower (19-25% on an
Intel Xeon with AVX512-BF16 and AMX, issue #17). So the route is not chosen by vendor or by ISA
flags but by a measurement on this machine (:func:`linear_route`), made once and kept in
``$AIGC_CACHE_DIR/kernels.json`` keyed by CPU model, ISA flags, torch version and thread count,
so that every later process on the machine takes the same route (and so the same low bits).
``AIGC_LINEAR_ROUTE=onednn|torch|auto`` overrides it; records carry the route taken
(:func:`aigc.records.runtime`).

Both are true float32 products; only the summation order differs.
``torch.ops.mkldnn._linear_pointwise`` is the oneDNN linear that ``torch.compile`` uses on CPU;
it accepts ordinary strided tensors, so the backward pass is three more such products and no
copies:

    y  = x W^T + b          x: (M, K), W: (N, K)  -> (M, N)
    dx = dy W    = linear(dy, W^T)                 (M, N) x (N, K)
    dW = dy^T x  = linear(dy^T, x^T)               (N, M) x (M, K)
    db = sum_M dy

Anything else (fewer than 32 rows, autocast, other dtypes or devices, a PyTorch without oneDNN,
code being compiled by ``torch.compile``, which should see the matmul and choose itself) takes
``F.linear``. :func:`set_onednn_linear` forces a route (benchmarks measure both).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from aigc.models import native

_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                                       "_linear_pointwise")
_forced: bool | None = None  # set_onednn_linear(); None = the measured route
_measured: str | None = None  # "onednn" | "torch", once decided in this process
# oneDNN pays ~10 us per call in primitive look-up; below ~32 rows (one-token generation steps)
# MKL's small-matrix path wins (measured on an EPYC: 1 row 4 us vs 14 us, 64 rows 64 vs 42).
_MIN_ROWS = 32
# oneDNN must beat F.linear by this factor to be chosen: a near tie is not worth a second route
# whose choice could flip between two measurements on a noisy machine.
_MARGIN = 1.10
# (M, K, N) of the products timed: a GPT block's qkv/fc (K -> 3K, 4K) and proj (4K -> K) at a
# training batch of 1,024 tokens.
_PROBE_SHAPES = ((1024, 256, 768), (1024, 1024, 256))
ROUTE_ENV = "AIGC_LINEAR_ROUTE"


def set_onednn_linear(enabled: bool | None) -> bool | None:
    """Force the float32 CPU linear route: oneDNN (``True``), ``F.linear`` (``False``), or back to
    the measured choice (``None``); returns the old setting."""
    global _forced
    old, _forced = _forced, (None if enabled is None else bool(enabled))
    return old


@functools.cache
def _cpu_key() -> str:
    """CPU model and the ISA flags that matter here, read once per process."""
    model, flags = "unknown", ""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma")
                flags = ",".join(f for f in line.split(":", 1)[1].split() if f in wanted)
    return f"{model}|{flags}"


def _machine_key() -> str:
    # the thread count stays live: a process may change it (replay, --threads)
    return f"{_cpu_key()}|torch {torch.__version__}|{torch.get_num_threads()} threads"


def _cache_file() -> Path:
    return Path(os.environ.get("AIGC_CACHE_DIR") or Path.home() / ".cache" / "aigc") / \
        "kernels.json"


def _time_products(fn, shapes=_PROBE_SHAPES, repeats: int = 3) -> float:
    """Seconds for one pass over ``shapes`` with ``fn(a, b_t)``: the fastest of ``repeats``
    passes (the minimum is the least disturbed by other work on the machine)."""
    gen = torch.Generator().manual_seed(0)
    pairs = [(torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen))
             for m, k, n in shapes]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for a, b in pairs:
            fn(a, b)
        best = min(best, time.perf_counter() - t0)
    return best


def alternating_best(first, second, rounds: int) -> tuple[float, float]:
    """The least time each of two timers reports over ``rounds`` alternating rounds, after one
    untimed call of each (library initialisation, first-touch pages). A timer is a callable
    returning seconds; the minimum is the figure least disturbed by other work on the machine."""
    first(), second()
    best_first = best_second = float("inf")
    for _ in range(rounds):
        best_first = min(best_first, first())
        best_second = min(best_second, second())
    return best_first, best_second


def measure_linear_routes(rounds: int = 7) -> dict:
    """Time float32 products of GPT shapes by ``F.linear`` (MKL) and by oneDNN on this machine,
    in alternating rounds after a warm-up of each; returns the best time of each, their ratio
    and the route that wins by at least the margin."""
    def by_torch(a, b):
        return F.linear(a, b)

    def by_onednn(a, b):
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")

    t_torch, t_onednn = alternating_best(lambda: _time_products(by_torch),
                                         lambda: _time_products(by_onednn), rounds)
    ratio = t_torch / t_onednn
    return {"torch_s": t_torch, "onednn_s": t_onednn, "torch_over_onednn": round(ratio, 3),
            "route": "onednn" if ratio >= _MARGIN else "torch", "margin": _MARGIN,
            "rounds": rounds, "shapes": [list(s) for s in _PROBE_SHAPES]}


def linear_route() -> str:
    """The float32 CPU route :func:`linear` takes in this process: ``"onednn"`` or ``"torch"``.

    Forced by :func:`set_onednn_linear` or ``AIGC_LINEAR_ROUTE``; otherwise measured once per
    machine (:func:`measure_linear_routes`, about 0.2 s) and kept in ``kernels.json``.
    """
    global _measured
    if not _HAS_ONEDNN_LINEAR:
        return "torch"
    if _forced is not None:
        return "onednn" if _forced else "torch"
    env = os.environ.get(ROUTE_ENV, "auto").strip().lower()
    if env in ("onednn", "torch"):
        return env
    if env not in ("", "auto"):
        raise ValueError(f"{ROUTE_ENV} must be 'onednn', 'torch' or 'auto', got {env!r}")
    if _measured is None:
        _measured = _cached_or_measured_route()
    return _measured


def cached_measurement(key: str) -> dict | None:
    """The measurement kept in ``kernels.json`` under ``key`` (see :func:`_machine_key`), or
    ``None``."""
    try:
        entry = json.loads(_cache_file().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) else None


def store_measurement(key: str, result: dict) -> None:
    """Keep ``result`` in ``kernels.json`` under ``key`` (atomically; best effort: an unwritable
    cache only means measuring again next time)."""
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
        if not isinstance(cached, dict):
            cached = {}
    except (OSError, ValueError):
        cached = {}
    cached[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def _cached_or_measured_route() -> str:
    key = _machine_key()
    cached = cached_measurement(key)
    if cached and cached.get("route") in ("onednn", "torch"):
        return cached["route"]
    result = measure_linear_routes()
    store_measurement(key, result)
    return result["route"]


def onednn_linear_active() -> bool:
    """Whether :func:`linear` takes the oneDNN route in this process."""
    return _HAS_ONEDNN_LINEAR and linear_route() == "onednn"


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ b_t^T + bias`` by oneDNN: ``a (M, K)``, ``b_t (N, K)``, any strides."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)  # (M, N)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()  # (M, N)
        grad_x = _mm(grad, weight.t(), None) if ctx.needs_input_grad[0] else None  # (M, K)
        grad_w = _mm(grad.t(), x.t(), None) if ctx.needs_input_grad[1] else None  # (N, K)
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None  # (N,)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x: (..., K)``, ``weight: (N, K)``; see the module notes.

    Example:
        >>> layer = torch.nn.Linear(8, 4)
        >>> y = linear(torch.randn(2, 3, 8), layer.weight, layer.bias)  # (2, 3, 4)
    """
    if not (
        _HAS_ONEDNN_LINEAR and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and not torch.is_autocast_enabled("cpu")
        and x.dim() >= 2 and x.numel() >= _MIN_ROWS * x.shape[-1] > 0
        and not torch.compiler.is_compiling()
        and linear_route() == "onednn"
    ):
        return F.linear(x, weight, bias)
    if x.dim() == 2:
        return _OneDNNLinear.apply(x, weight, bias)
    y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)  # (M, N)
    return y.view(*x.shape[:-1], weight.shape[0])


class Conv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state-dict keys) whose 3x3 convolutions of stride
    1 and padding 1 over channels-last float32 CPU images take aigc's Winograd kernels where
    this machine measured them faster (:func:`aigc.models.native.conv2d`,
    ``AIGC_CONV_ROUTE``); every other case is ``nn.Conv2d``'s."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super().forward(x)
        return native.conv2d(x, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, self.groups)
