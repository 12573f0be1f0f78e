"""CPU kernels aigc compiles on the machine it runs on, used where they are measured faster.

Why: a profile of GPT training on one thread (issue #17; ``python benchmarks/gpt_speed.py``)
spent about a fifth of each step in ATen's tanh-approximated GELU, forward and backward
(0.77 and 0.82 ms for a 768 x 512 activation on an Intel Xeon with AVX-512, where a single
``torch.tanh`` over the same tensor takes 0.13 ms). ``aigc/assets/native/kernels.c`` computes the
same function as ``x * sigmoid(2u)`` in one pass, forward and backward, with its own
vectorizable ``exp``; compiled with ``-O3 -march=native`` it runs about 3x faster there.

How it is chosen, like :func:`aigc.models.layers.linear_route`: not by vendor or ISA flags but
by a measurement on this machine, made once and kept in ``$AIGC_CACHE_DIR/kernels.json`` (the
key names the CPU model, ISA flags, torch version and thread count). The route is
``"native"`` only when all of these hold:

- a C compiler is found (``$CC``, else ``cc``, ``gcc``, ``clang``) and builds the file (into
  ``$AIGC_CACHE_DIR/native/<hash>/``, the hash covering the source, the compiler and the
  machine key, so a changed source or another CPU builds anew);
- the built kernel agrees with ATen's on a fixed set of inputs (forward and backward within
  2e-5, NaN kept NaN);
- it is at least 10% faster than ATen's, forward plus backward, in alternating rounds.

Otherwise ``gelu_tanh`` is ``F.gelu(x, approximate="tanh")``. ``AIGC_GELU_ROUTE=native|torch``
forces it (``native`` raises if the kernel cannot be built). Float32 CPU tensors that are
contiguous and not under ``torch.compile`` (which fuses the activation itself) take the route;
everything else takes ATen. The two differ in the last bits (about 5e-7 absolute), so records
carry ``gelu_route`` (:func:`aigc.records.runtime`) and replays take the recorded one.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROUTE_ENV = "AIGC_GELU_ROUTE"
_SOURCE = Path(__file__).resolve().parent.parent / "assets" / "native" / "kernels.c"
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
          "-std=c11", "-shared", "-fPIC")
_MIN_NUMEL = 4096  # below this the ctypes call costs more than ATen's dispatch saves
_MARGIN = 1.10  # the native kernel must beat ATen by this factor to be chosen
_PROBE_SHAPE = (768, 512)  # a GPT MLP activation: batch 12 x context 64, width 4 x 128

_forced: str | None = None  # set_gelu_route(); None = the measured route
_measured: str | None = None
_lib: ctypes.CDLL | None = None
_build_error: str | None = None


class NativeKernelError(RuntimeError):
    """The native kernel was asked for (``AIGC_GELU_ROUTE=native``) and cannot be used."""


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_root() -> Path:
    return Path(os.environ.get("AIGC_CACHE_DIR") or Path.home() / ".cache" / "aigc")


def _build() -> ctypes.CDLL | None:
    """Compile (once per source, compiler and machine) and load the kernel; ``None`` with
    ``_build_error`` set when that is not possible here."""
    global _lib, _build_error
    if _lib is not None or _build_error is not None:
        return _lib
    from aigc.models.layers import _machine_key

    cc = _compiler()
    if cc is None:
        _build_error = "no C compiler found ($CC, cc, gcc, clang)"
        return None
    try:
        source = _SOURCE.read_bytes()
        version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
        digest = hashlib.sha256(source + repr((cc, version, _FLAGS, _machine_key())).encode())
        out_dir = _cache_root() / "native" / digest.hexdigest()[:16]
        lib_path = out_dir / "libaigc_kernels.so"
        if not lib_path.is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            tmp = out_dir / f".libaigc_kernels.so.tmp-{os.getpid()}"
            done = subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", str(tmp)],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                tmp.unlink(missing_ok=True)
                _build_error = f"{cc} failed on {_SOURCE.name}: {done.stderr.strip()[-500:]}"
                return None
            os.replace(tmp, lib_path)  # whole file or none: a killed build leaves no half .so
        lib = ctypes.CDLL(str(lib_path))
    except (OSError, subprocess.SubprocessError) as exc:
        _build_error = f"could not build or load {_SOURCE.name}: {exc}"
        return None
    p, n = ctypes.c_void_p, ctypes.c_ssize_t
    lib.aigc_gelu_tanh_fwd.argtypes = [p, p, n]
    lib.aigc_gelu_tanh_bwd.argtypes = [p, p, p, n]
    lib.aigc_gelu_tanh_fwd.restype = lib.aigc_gelu_tanh_bwd.restype = None
    problem = _self_check(lib)
    if problem:
        _build_error = problem
        return None
    _lib = lib
    return lib


def _fwd(lib, x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    lib.aigc_gelu_tanh_fwd(x.data_ptr(), y.data_ptr(), x.numel())
    return y


def _bwd(lib, gy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    gx = torch.empty_like(x)
    lib.aigc_gelu_tanh_bwd(gy.data_ptr(), x.data_ptr(), gx.data_ptr(), x.numel())
    return gx


def _self_check(lib) -> str | None:
    """Compare with ATen on values from -60 to 60, random activations and a NaN."""
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-60, 60, 24001), torch.randn(8192, generator=gen) * 3,
                   torch.tensor([float("nan"), 0.0])])
    gy = torch.randn(x.shape, generator=gen)
    y, gx = _fwd(lib, x), _bwd(lib, gy, x)
    ref_y = F.gelu(x.double(), approximate="tanh")
    ref_gx = torch.ops.aten.gelu_backward(gy.double(), x.double(), approximate="tanh")
    if not (y[-2].isnan() and gx[-2].isnan()):
        return "the native GELU does not keep NaN as NaN"
    err_y = (y[:-2].double() - ref_y[:-2]).abs().max().item()
    err_gx = ((gx[:-2].double() - ref_gx[:-2]).abs() / (1 + gy[:-2].abs().double())).max().item()
    if not (err_y <= 2e-5 and err_gx <= 2e-5):
        return f"the native GELU disagrees with ATen (forward {err_y:.2e}, backward {err_gx:.2e})"
    return None


def measure_gelu_routes(rounds: int = 7) -> dict:
    """Time ATen's tanh GELU and the native one (forward + backward on a GPT activation) in
    alternating rounds; the best time of each, their ratio and the route that wins by the
    margin. The native side is ``None`` with the reason when it cannot be built."""
    lib = _build()
    if lib is None:
        return {"route": "torch", "native": None, "reason": _build_error}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBE_SHAPE, generator=gen)
    gy = torch.randn(_PROBE_SHAPE, generator=gen)

    def aten():
        F.gelu(x, approximate="tanh")
        torch.ops.aten.gelu_backward(gy, x, approximate="tanh")

    def native():
        _fwd(lib, x)
        _bwd(lib, gy, x)

    def best_of(fn, repeats=3):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    aten(), native()  # warm-up
    t_aten = t_native = float("inf")
    for _ in range(rounds):
        t_aten = min(t_aten, best_of(aten))
        t_native = min(t_native, best_of(native))
    ratio = t_aten / t_native
    return {"aten_s": t_aten, "native_s": t_native, "aten_over_native": round(ratio, 3),
            "route": "native" if ratio >= _MARGIN else "torch", "margin": _MARGIN,
            "rounds": rounds, "shape": list(_PROBE_SHAPE)}


def set_gelu_route(route: str | None) -> str | None:
    """Force ``"native"`` or ``"torch"``, or back to the measured choice (``None``); returns
    the old setting."""
    global _forced
    if route not in (None, "native", "torch"):
        raise ValueError(f"gelu route must be 'native', 'torch' or None, got {route!r}")
    old, _forced = _forced, route
    return old


@torch.compiler.assume_constant_result  # torch.compile asks once, eagerly, and bakes it in
def gelu_route() -> str:
    """``"native"`` or ``"torch"``: the route :func:`gelu_tanh` takes in this process."""
    global _measured
    route = _forced or os.environ.get(ROUTE_ENV, "auto").strip().lower()
    if route == "torch":
        return "torch"
    if route == "native":
        if _build() is None:
            raise NativeKernelError(f"{ROUTE_ENV}=native, but {_build_error}")
        return "native"
    if route not in ("", "auto"):
        raise ValueError(f"{ROUTE_ENV} must be 'native', 'torch' or 'auto', got {route!r}")
    if _measured is None:
        _measured = _cached_or_measured()
    return _measured


def _cached_or_measured() -> str:
    from aigc.models.layers import _cache_file, _machine_key

    path, key = _cache_file(), "gelu_tanh|" + _machine_key()
    try:
        cached = json.loads(path.read_text())
        if not isinstance(cached, dict):
            cached = {}
    except (OSError, ValueError):
        cached = {}
    route = cached.get(key, {}).get("route") if isinstance(cached.get(key), dict) else None
    if route == "torch" or (route == "native" and _build() is not None):
        return route
    result = measure_gelu_routes()
    cached[key] = result
    try:  # best effort: an unwritable cache only means measuring again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return result["route"]


@torch.library.custom_op("aigc::gelu_tanh", mutates_args=())
def _gelu_op(x: torch.Tensor) -> torch.Tensor:
    return _fwd(_lib, x)


@torch.library.custom_op("aigc::gelu_tanh_backward", mutates_args=())
def _gelu_backward_op(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _bwd(_lib, grad.contiguous(), x)


@_gelu_op.register_fake
def _(x):
    return torch.empty_like(x)


@_gelu_backward_op.register_fake
def _(grad, x):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _gelu_backward_op(grad, x)


# A custom op, not an autograd.Function, so that torch.compile keeps the kernel as one opaque
# call (and fuses what is around it) instead of tracing into ctypes.
_gelu_op.register_autograd(_backward, setup_context=_setup)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")`` (GPT-2's ``gelu_new``), by the native kernel where it
    is measured faster (see the module notes)."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()
            and x.numel() >= _MIN_NUMEL and gelu_route() == "native"):
        return _gelu_op(x)
    return F.gelu(x, approximate="tanh")
