"""CPU kernels aigc compiles on the machine it runs on, used where they are measured faster.

Six families, all in ``aigc/assets/native/kernels.c``:

- ``gelu``: GPT-2's tanh GELU, forward and backward. A profile of GPT training on one thread
  (issue #17; ``python benchmarks/gpt_speed.py``) spent about a fifth of each step in ATen's
  (0.77 and 0.82 ms for a 768 x 512 activation on an Intel Xeon with AVX-512, where a single
  ``torch.tanh`` over the same tensor takes 0.13 ms). The kernel computes ``x * sigmoid(2u)``
  in one pass with its own vectorizable ``exp``.
- ``attention``: GPT's causal self-attention over whole sequences of up to 256 positions,
  forward and backward, read from and written to the fused ``qkv`` projection, so the head
  split, the merge and the gradients' concatenation around ATen's flash kernel are not copied
  (:func:`causal_attention`).
- ``decode``: the small operations of one Llama decoding step (RMSNorm, rotary positions with
  the key/value cache writes, SiLU product), one call each instead of five to ten ATen
  operations, which at one token are dispatch more than arithmetic
  (:mod:`aigc.models.llama_decode`); and a GPT layer's attention for one token with a
  key/value cache (the cache writes and the attention over it, :func:`gpt_decode_attention`).
- ``conv``: the diffusion UNets' and the autoencoder's 3x3 convolutions (stride 1, padding 1,
  channels-last float32, channel counts multiples of 16 up to 256), forward and both gradients,
  by Winograd's F(4x4, 3x3): 4x fewer multiply-adds than the direct convolution oneDNN runs,
  which on a CPU without spare arithmetic is where a diffusion step goes (:func:`conv2d`,
  :class:`aigc.models.layers.Conv2d`).
- ``groupnorm``: the same UNets' GroupNorm with its affine weight, the block's scale and shift
  and the SiLU after it, one pass per statistic instead of three to five ATen operations over
  the whole activation (:func:`group_norm_silu`).
- ``mlp``: a GPT block's MLP (first linear layer, GELU, second linear layer) as register-blocked
  matrix products with the biases, the GELU and its derivative applied to each output tile
  while it is in registers, so the activations make fewer trips through memory
  (:func:`gpt_mlp`; the GELU family's kernel is what runs where this one does not).

The measured ratios against ATen are in docs/performance.md (``aigc kernels --measure``).
Where the process runs GNU OpenMP (torch's Linux wheels), the file is built with ``-fopenmp``
and shares torch's runtime and thread count; the work is split by whole heads and whole blocks,
so no result depends on the thread count.

How a family's route is chosen, like :func:`aigc.models.layers.linear_route`: not by vendor or
ISA flags but by a measurement on this machine, made once and kept in
``$AIGC_CACHE_DIR/kernels.json`` (the key names the CPU model, ISA flags, torch version and
thread count). The route is ``"native"`` only when all of these hold:

- a C compiler is found (``$CC``, else ``cc``, ``gcc``, ``clang``) and builds the file (into
  ``$AIGC_CACHE_DIR/native/<hash>/``, the hash covering the source, the compiler and the
  machine key, so a changed source or another CPU builds anew);
- every kernel agrees with its ATen twin on fixed inputs (GELU forward and backward within
  2e-5 and NaN kept NaN; attention and the MLP against float64 within 1e-5; the decoding
  kernels within 2e-6 relative);
- the family is at least 10% faster than ATen's in alternating rounds (for the MLP: the work
  the kernels replace, the products both routes share left out).

Otherwise ATen's operations run. ``AIGC_GELU_ROUTE``, ``AIGC_ATTENTION_ROUTE``,
``AIGC_DECODE_ROUTE``, ``AIGC_CONV_ROUTE``, ``AIGC_GROUPNORM_ROUTE`` and ``AIGC_MLP_ROUTE``
(``native``, ``torch`` or ``auto``) force a family (``native`` raises if the kernels cannot be
built). For GELU, attention and the MLP, contiguous float32 CPU tensors of any size take the
route, so a result does not depend on the batch size that carried it; under
``torch.compile`` the kernels are operators the compiler calls as they are (the GELU's custom
op; attention and the MLP as plain operators inside an ``autograd.Function`` the compiler
traces, which skips the custom ops' Python autograd kernel on every call), under eager autograd
an ``autograd.Function`` around the same calls (cheaper than the ops' dispatch), and elsewhere
(scoring under ``no_grad``) a direct call. (GPT
decoding steps of one position keep ATen's GELU and linear layers: :class:`aigc.models.gpt.MLP`.)
The routes differ from ATen in the last bits (about 5e-7), so records carry ``gelu_route``,
``attention_route``, ``decode_route``, ``conv_route``, ``groupnorm_route`` and ``mlp_route``
(:func:`aigc.records.runtime`; ``undecided`` where the process never needed them, as for models
that use none of them, whose records are written without building or timing anything); image
replays take the recorded ``conv_route`` and ``groupnorm_route``.

The GELU, attention and MLP kernels have first derivatives only: code that differentiates twice
through a GPT (a gradient penalty, Hessian-vector products) needs ``AIGC_GELU_ROUTE=torch``,
``AIGC_ATTENTION_ROUTE=torch`` and ``AIGC_MLP_ROUTE=torch`` (the MLP's refuses with that
advice). The convolution and GroupNorm kernels take ATen's
differentiable operations for a backward that builds a graph, so second derivatives through a
UNet come out right on either route. Under ``torch.compile`` these two stay ATen's.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROUTE_ENVS = {"gelu": "AIGC_GELU_ROUTE", "decode": "AIGC_DECODE_ROUTE",
              "attention": "AIGC_ATTENTION_ROUTE", "conv": "AIGC_CONV_ROUTE",
              "groupnorm": "AIGC_GROUPNORM_ROUTE", "mlp": "AIGC_MLP_ROUTE"}
ROUTE_ENV = ROUTE_ENVS["gelu"]
_SOURCE = Path(__file__).resolve().parent.parent / "assets" / "native" / "kernels.c"
# -ffp-contract=fast: a * b + c as one fused multiply-add (in ISO C mode, -std=c11, gcc otherwise
# keeps them apart, and the attention kernels' inner loops slow down markedly)
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast",
          "-std=c11", "-shared", "-fPIC")
_MARGIN = 1.10  # a native kernel must beat ATen by this factor to be chosen
_PROBE_SHAPE = (768, 512)  # a GPT MLP activation: batch 12 x context 64, width 4 x 128

_forced: dict[str, str] = {}  # set_route(); absent = the measured route
_measured: dict[str, str] = {}
_seen_in_cache: dict[str, str] = {}  # current_route(): what a kernels.json said, per file + key
_lib: ctypes.CDLL | None = None
_lib_path: Path | None = None  # where the built library is (aigc kernels prints it)
_build_error: str | None = None
_threaded: bool = False  # built with -fopenmp (torch's OpenMP runtime), else one thread
_source_digest: str | None = None  # sha256 of kernels.c: part of every cached decision's key
# One build and one measurement at a time in a process (studio threads start together); the
# file system side is safe across processes (a private temporary file, then os.replace).
_lock = threading.RLock()


class NativeKernelError(RuntimeError):
    """A native kernel was asked for (``AIGC_GELU_ROUTE=native``, ``AIGC_DECODE_ROUTE=native``)
    and cannot be used."""


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_root() -> Path:
    return Path(os.environ.get("AIGC_CACHE_DIR") or Path.home() / ".cache" / "aigc")


def _is_gcc(compiler_version: str) -> bool:
    """Whether ``cc --version`` output names GCC (``cc`` names it only on its copyright line)."""
    about = compiler_version.lower()
    return "gcc" in about or "free software foundation" in about


def _shares_torchs_openmp(compiler_version: str) -> bool:
    """Whether kernels built with -fopenmp would run on torch's own OpenMP runtime: the process
    already has GNU OpenMP loaded under its usual name ``libgomp.so.1`` (torch's Linux wheels
    bring it) and the compiler is GCC, whose -fopenmp links that name, so the loader binds the
    kernels to the copy in memory. Otherwise (clang links libomp; a wheel's renamed
    ``libgomp-<hash>.so.1``) a second pool of threads would start, deaf to
    ``torch.set_num_threads``: the kernels are then built for one thread."""
    if not _is_gcc(compiler_version):
        return False
    try:
        with open("/proc/self/maps") as maps:
            return any(line.rstrip().endswith("/libgomp.so.1") for line in maps)
    except OSError:
        return False


def _build() -> ctypes.CDLL | None:
    """Compile (once per source, compiler and machine) and load the kernels; ``None`` with
    ``_build_error`` set when that is not possible here."""
    with _lock:
        if _lib is None and _build_error is None:
            _build_locked()
        return _lib


_SIGNATURES = {"aigc_gelu_tanh_fwd": "ppni", "aigc_gelu_tanh_bwd": "pppni",
               "aigc_mlp_fwd": "ppppppppnnnni", "aigc_mlp_bwd": "pppppnnni",
               "aigc_rms_norm": "pppnnf", "aigc_silu_mul": "ppnn",
               "aigc_rope_cache": "ppppppnnnnnn", "aigc_gpt_decode_attn": "ppppnnnnnf",
               "aigc_attn_fwd": "ppppnnnnfi", "aigc_attn_bwd": "ppppppnnnnfi",
               "aigc_conv3x3_fwd": "ppppnnnnnii", "aigc_conv3x3_wgrad": "ppppnnnnnii",
               "aigc_conv3x3_weights": "ppnnii",
               "aigc_gn_silu_fwd": "ppppppnnnnfi", "aigc_gn_silu_bwd": "pppppppppnnnni"}
# 0, or -1: out of memory
_RETURNS_STATUS = ("aigc_attn_fwd", "aigc_attn_bwd", "aigc_mlp_fwd", "aigc_mlp_bwd",
                   "aigc_conv3x3_fwd", "aigc_conv3x3_wgrad")


def _build_locked() -> None:
    global _lib, _lib_path, _build_error, _threaded
    from aigc.models.layers import _machine_key

    cc = _compiler()
    if cc is None:
        _build_error = "no C compiler found ($CC, cc, gcc, clang)"
        return
    try:
        source = _SOURCE.read_bytes()
        about = subprocess.run([cc, "--version"], capture_output=True, text=True,
                               timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        _build_error = f"could not run {cc}: {exc}"
        return
    version = about.splitlines()[:1]
    variants = [("-fopenmp",)] if _shares_torchs_openmp(about) else []
    variants.append(("-fopenmp-simd",))  # one thread: no OpenMP runtime needed
    for extra in variants:  # threaded first; any failure (build, load, self-check): the next
        problem, lib, lib_path = _build_variant(cc, version, source, (*_FLAGS, *extra),
                                                _machine_key())
        if lib is not None:
            _lib, _lib_path, _threaded, _build_error = lib, lib_path, extra == ("-fopenmp",), None
            return
        _build_error = problem


def _build_variant(cc: str, version, source: bytes, flags: tuple, machine: str):
    """``(problem, library, path)``: build (unless already built) with ``flags``, load, check."""
    digest = hashlib.sha256(source + repr((cc, version, flags, machine)).encode())
    out_dir = _cache_root() / "native" / digest.hexdigest()[:16]
    lib_path = out_dir / "libaigc_kernels.so"
    try:
        if not lib_path.is_file():
            out_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".libaigc_kernels.", suffix=".tmp", dir=out_dir)
            os.close(fd)
            tmp = Path(tmp_name)
            done = subprocess.run([cc, *flags, str(_SOURCE), "-o", str(tmp), "-lm"],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                tmp.unlink(missing_ok=True)
                return f"{cc} failed on {_SOURCE.name}: {done.stderr.strip()[-500:]}", None, None
            os.replace(tmp, lib_path)  # whole file or none: a killed build leaves no half .so
        lib = ctypes.CDLL(str(lib_path))
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not build or load {_SOURCE.name}: {exc}", None, None
    kinds = {"p": ctypes.c_void_p, "n": ctypes.c_ssize_t, "f": ctypes.c_float, "i": ctypes.c_int}
    for name, sig in _SIGNATURES.items():
        getattr(lib, name).argtypes = [kinds[c] for c in sig]
        getattr(lib, name).restype = ctypes.c_int if name in _RETURNS_STATUS else None
    problem = _self_check(lib)
    return (problem, None, None) if problem else (None, lib, lib_path)


def _threads() -> int:
    """The thread count the kernels use: torch's (set process-wide; OpenMP's own setting is per
    thread, and a fresh thread's is every core until its first ATen operation)."""
    return torch.get_num_threads()


def _loaded():
    """The library, for the kernels' wrappers (which run only once a route chose it)."""
    lib = _lib or _build()
    if lib is None:
        raise NativeKernelError(f"the native kernels are not available: {_build_error}")
    return lib


def _measurement(measure):
    """A family's route measurement, ``measure(lib, rounds)``, called with the built library; where
    it cannot be built: ATen's route and the reason (``native`` None: nothing to keep)."""
    @functools.wraps(measure)
    def run(rounds: int = 7) -> dict:
        lib = _build()
        if lib is None:
            return {"route": "torch", "native": None, "reason": _build_error}
        return measure(lib, rounds)
    return run


def _fwd(lib, x: torch.Tensor) -> torch.Tensor:
    y = torch.empty_like(x)
    lib.aigc_gelu_tanh_fwd(x.data_ptr(), y.data_ptr(), x.numel(), _threads())
    return y


def _bwd(lib, gy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    gx = torch.empty_like(x)
    lib.aigc_gelu_tanh_bwd(gy.data_ptr(), x.data_ptr(), gx.data_ptr(), x.numel(), _threads())
    return gx


def _self_check(lib) -> str | None:
    """Compare every kernel with ATen's on fixed inputs (GELU: values from -60 to 60, random
    activations and a NaN; the decoding kernels: random rows)."""
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
    h = torch.randn(3, 96, generator=gen) * 4
    w = torch.randn(96, generator=gen)
    gu = torch.randn(3, 2 * 80, generator=gen) * 4
    qkv = torch.randn(3, (4 + 2 * 2) * 16, generator=gen)
    angle = torch.arange(3.0)[:, None] * torch.rand(8, generator=gen)[None, :]
    cos, sin = torch.cat([angle, angle], -1).cos(), torch.cat([angle, angle], -1).sin()
    checks = {"RMSNorm": (rms_norm(h, w, 1e-5, lib), rms_norm_aten(h, w, 1e-5)),
              "SiLU product": (silu_mul(gu, lib), silu_mul_aten(gu))}
    ours = rope_cache(qkv, cos, sin, *_empty_caches(2, 5, 16), 4, 2, 16, 1, lib)
    ref = rope_cache_aten(qkv, cos, sin, *_empty_caches(2, 5, 16), 4, 2, 16, 1)
    checks.update({f"rotary {name}": (a, b) for name, a, b in zip(("q", "k", "v"), ours, ref)})
    for B, H, d, pos in ((2, 3, 16, 0), (1, 2, 32, 20)):  # GPT's one-token attention
        cache = torch.randn(2, B, H, 24, d, generator=gen)
        step = torch.randn(B, 1, 3 * H * d, generator=gen) * 2
        mine, twin = cache.clone(), cache.clone()
        y = gpt_decode_attention(step, mine[0], mine[1], H, pos, lib)
        checks[f"GPT decoding attention (d={d})"] = (
            torch.cat([y.flatten(), mine.flatten()]),
            torch.cat([gpt_decode_attention_aten(step, twin[0], twin[1], H, pos).flatten(),
                       twin.flatten()]))
    for name, (a, b) in checks.items():
        err = (a - b).abs().max().item() / (1 + b.abs().max().item())
        if not err <= 2e-6:
            return f"the native {name} disagrees with ATen ({err:.2e})"
    return (_attention_self_check(lib) or _mlp_self_check(lib) or _conv_self_check(lib)
            or _groupnorm_self_check(lib))


def _empty_caches(kv: int, cap: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(kv, cap, d), torch.zeros(kv, cap, d)


# ---------------------------------------------------------------- Llama decoding kernels
# Each has an ATen twin (the ``torch`` route) computing the same thing with the same operation
# order; aigc.models.llama_decode calls one pair or the other by decode_route().


def rms_norm_aten(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm in float32, ``x (T, D)``, ``w (D,)``, as one ATen kernel."""
    return F.rms_norm(x, w.shape, w, eps)


def _check_rows(name: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"native {name} takes contiguous float32 CPU tensors, got "
                             f"{t.dtype} on {t.device}, contiguous={t.is_contiguous()}")


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float, lib=None) -> torch.Tensor:
    lib = lib or _loaded()
    _check_rows("rms_norm", x, w)
    if x.dim() != 2 or w.shape != (x.shape[1],):
        raise ValueError(f"native rms_norm takes x (T, D) and w (D,), got {tuple(x.shape)} and "
                         f"{tuple(w.shape)}")
    y = torch.empty_like(x)
    lib.aigc_rms_norm(x.data_ptr(), w.data_ptr(), y.data_ptr(), x.shape[0], x.shape[1], eps)
    return y


def silu_mul_aten(gu: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gu = gate | up``, ``(T, 2N) -> (T, N)``."""
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_mul(gu: torch.Tensor, lib=None) -> torch.Tensor:
    lib = lib or _loaded()
    _check_rows("silu_mul", gu)
    if gu.dim() != 2 or gu.shape[1] % 2:
        raise ValueError(f"native silu_mul takes gu (T, 2N), got {tuple(gu.shape)}")
    n = gu.shape[1] // 2
    out = gu.new_empty(gu.shape[0], n)
    lib.aigc_silu_mul(gu.data_ptr(), out.data_ptr(), gu.shape[0], n)
    return out


def rope_cache_aten(qkv, cos, sin, k_cache, v_cache, H: int, KV: int, d: int, pos: int):
    """Rotate the queries and keys of ``qkv (T, (H + 2 KV) d)`` by ``cos, sin (T, d)`` and write
    keys and values into ``k_cache, v_cache (KV, cap, d)`` at ``pos..``; returns
    ``(q (H, T, d), k_cache, v_cache)``."""
    T = qkv.shape[0]
    qk, v = qkv.split([(H + KV) * d, KV * d], dim=-1)
    qk = qk.view(T, H + KV, d).transpose(0, 1)  # (H + KV, T, d): rotated together
    half = d // 2
    qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
    k_cache[:, pos:pos + T] = qk[H:]
    v_cache[:, pos:pos + T] = v.view(T, KV, d).transpose(0, 1)
    return qk[:H], k_cache, v_cache


def rope_cache(qkv, cos, sin, k_cache, v_cache, H: int, KV: int, d: int, pos: int, lib=None):
    lib = lib or _loaded()
    _check_rows("rope_cache", qkv, cos, sin, k_cache, v_cache)
    T = qkv.shape[0]
    if (d % 2 or qkv.shape != (T, (H + 2 * KV) * d) or cos.shape != (T, d) or sin.shape != (T, d)
            or k_cache.shape != v_cache.shape or k_cache.dim() != 3
            or k_cache.shape[0] != KV or k_cache.shape[2] != d or pos < 0
            or pos + T > k_cache.shape[1]):
        raise ValueError(f"native rope_cache: qkv {tuple(qkv.shape)}, cos/sin {tuple(cos.shape)}, "
                         f"caches {tuple(k_cache.shape)} do not fit H={H}, KV={KV}, d={d} (even), "
                         f"positions {pos}..{pos + T - 1}")
    q = qkv.new_empty(H, T, d)
    lib.aigc_rope_cache(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), q.data_ptr(),
                        k_cache.data_ptr(), v_cache.data_ptr(), T, H, KV, d, k_cache.shape[1], pos)
    return q, k_cache, v_cache


# GPT's attention for one new token with a key/value cache (generation): the kernel writes the
# token's key and value into the cache and attends over it in one call; gpt.py takes it on the
# decode route, for learned positions, float32 on the CPU.
_DECODE_MAX_S = 4096  # kernels.c DECODE_MAX_S


def gpt_decode_attention_aten(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              heads: int, pos: int) -> torch.Tensor:
    """``qkv (B, 1, 3C)``: write the new key and value into ``k_cache, v_cache (B, H, cap, d)``
    at ``pos``, attend over positions ``0..pos``; returns ``y (B, 1, C)`` (what gpt.py's
    attention runs for one token with a cache)."""
    B, _, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (t.view(B, 1, heads, C // heads).transpose(1, 2) for t in qkv.split(C, dim=2))
    k_cache[:, :, pos:pos + 1] = k
    v_cache[:, :, pos:pos + 1] = v
    y = F.scaled_dot_product_attention(q, k_cache[:, :, :pos + 1], v_cache[:, :, :pos + 1])
    return y.transpose(1, 2).reshape(B, 1, C)


def gpt_decode_fits(qkv: torch.Tensor, k_cache: torch.Tensor, heads: int, pos: int) -> bool:
    """Whether the kernel takes this step: float32 CPU tensors, contiguous, one token, a head
    width that is a multiple of 16 up to 128, the position inside the cache."""
    if qkv.dim() != 3 or qkv.shape[1] != 1 or qkv.shape[2] % (3 * heads):
        return False
    d = qkv.shape[2] // (3 * heads)
    return (qkv.dtype == torch.float32 and qkv.device.type == "cpu" and qkv.is_contiguous()
            and k_cache.dtype == torch.float32 and k_cache.is_contiguous()
            and k_cache.shape[:2] == (qkv.shape[0], heads) and k_cache.shape[3] == d
            and d % 16 == 0 and 16 <= d <= _ATTN_MAX_D and 0 <= pos < k_cache.shape[2]
            and pos < _DECODE_MAX_S)


def gpt_decode_attention(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         heads: int, pos: int, lib=None) -> torch.Tensor:
    """:func:`gpt_decode_attention_aten` as one native call (see :func:`gpt_decode_fits`)."""
    lib = lib or _loaded()
    if not (gpt_decode_fits(qkv, k_cache, heads, pos) and v_cache.shape == k_cache.shape
            and v_cache.dtype == torch.float32 and v_cache.is_contiguous()):
        raise ValueError(f"native gpt_decode_attention: qkv {tuple(qkv.shape)} {qkv.dtype}, caches "
                         f"{tuple(k_cache.shape)} do not fit {heads} heads at position {pos}")
    return gpt_decode_attention_fitted(qkv, k_cache, v_cache, heads, pos, lib)


def gpt_decode_attention_fitted(qkv: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                heads: int, pos: int, lib=None) -> torch.Tensor:
    """The call itself, for a caller that has just checked :func:`gpt_decode_fits` (gpt.py, once
    per layer and token) and whose value cache is its key cache's twin (a :class:`KVCache`)."""
    B, _, C3 = qkv.shape
    C = C3 // 3
    y = qkv.new_empty(B, 1, C)
    (lib or _loaded()).aigc_gpt_decode_attn(
        qkv.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), y.data_ptr(), B, heads,
        C // heads, k_cache.shape[2], pos, 1.0 / float(C // heads) ** 0.5)
    return y


# ------------------------------------------------------------------- causal self-attention
# GPT's attention over the fused projection qkv (B, T, 3C): aigc.models.gpt calls
# causal_attention(), which takes the native kernels where they fit and are measured faster,
# else causal_attention_aten (the head split, ATen's SDPA and the merge, as gpt.py wrote it).

# Past 256 positions the probabilities kept for the backward pass (B x H x T x T floats, as in
# the written-out formula) grow too large; ATen's flash kernel keeps O(T) there.
_ATTN_MAX_T = 256
_ATTN_MAX_D = 128
_ATTN_PROBE = (12, 63, 3 * 128, 4)  # gpt_speed's training shape: B, T, 3C, heads


def _padded(t: int) -> int:
    return (t + 15) // 16 * 16


def attention_fits(qkv: torch.Tensor, heads: int) -> bool:
    """Whether the native kernels take this ``qkv (B, T, 3C)``: contiguous float32 on the CPU,
    at most 256 positions, a head width ``C / heads`` that is a multiple of 16 up to 128."""
    if qkv.dim() != 3 or qkv.dtype != torch.float32 or qkv.device.type != "cpu":
        return False
    B, T, C3 = qkv.shape
    if C3 % 3 or (C3 // 3) % heads or not qkv.is_contiguous():
        return False
    return B >= 1 and attention_shape_fits(T, C3 // 3 // heads)


def attention_shape_fits(T: int, d: int) -> bool:
    """Whether ``T`` positions of head width ``d`` are within the native kernels' reach."""
    return 1 <= T <= _ATTN_MAX_T and d % 16 == 0 and 16 <= d <= _ATTN_MAX_D


def causal_attention_aten(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + causal mask) v`` for ``qkv (B, T, 3C)``, heads merged back
    to ``(B, T, C)``, by ATen's scaled_dot_product_attention."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in qkv.split(C, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).contiguous().view(B, T, C)


def _attn_check(qkv: torch.Tensor, heads: int) -> tuple[int, int, int, int]:
    if not attention_fits(qkv, heads):
        raise ValueError(f"native causal_attention takes a contiguous float32 CPU qkv "
                         f"(B, T <= {_ATTN_MAX_T}, 3C) with C / heads a multiple of 16 up to "
                         f"{_ATTN_MAX_D}, got {tuple(qkv.shape)} {qkv.dtype} on {qkv.device}, "
                         f"contiguous={qkv.is_contiguous()}, heads={heads}")
    B, T, C3 = qkv.shape
    return B, T, heads, C3 // 3 // heads


def bias_fits(qkv: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``bias`` can go into the attention kernels with this ``qkv (B, T, 3C)``: None, or
    a float32 CPU tensor of shape ``(3C,)`` (the fused projection's bias)."""
    return bias is None or (bias.dtype == torch.float32 and bias.device.type == "cpu"
                            and bias.shape == (qkv.shape[-1],))


def _attn_bias(qkv: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    if not bias_fits(qkv, bias):
        raise ValueError(f"native causal_attention takes a float32 CPU bias of shape "
                         f"({qkv.shape[-1]},) for qkv {tuple(qkv.shape)}, got "
                         f"{tuple(bias.shape)} {bias.dtype} on {bias.device}")
    return None if bias is None else bias.contiguous()


def _attn_fwd(lib, qkv: torch.Tensor, heads: int,
              bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, p)`` for ``qkv`` (plus ``bias`` where given: qkv computed without it)."""
    B, T, H, d = _attn_check(qkv, heads)
    bias = _attn_bias(qkv, bias)
    y = qkv.new_empty(B, T, H * d)
    p = qkv.new_empty(B, H, T, _padded(T))
    if lib.aigc_attn_fwd(qkv.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
                         p.data_ptr(), B, T, H, d, d ** -0.5, _threads()):
        raise MemoryError("native causal_attention: no memory for its scratch buffers")
    return y, p


def _attn_bwd(lib, gy: torch.Tensor, qkv: torch.Tensor, p: torch.Tensor, heads: int,
              bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, gb)``: the gradients of qkv and of the bias; ``gb`` is ``g`` summed over batch
    and positions, computed whether or not a bias was given."""
    B, T, H, d = _attn_check(qkv, heads)
    bias = _attn_bias(qkv, bias)
    _check_rows("causal_attention backward", gy, p)
    if gy.shape != (B, T, H * d) or p.shape != (B, H, T, _padded(T)):
        raise ValueError(f"native causal_attention backward: gradient {tuple(gy.shape)} and "
                         f"probabilities {tuple(p.shape)} do not fit qkv {tuple(qkv.shape)}")
    g, gb = torch.empty_like(qkv), qkv.new_empty(3 * H * d)
    if lib.aigc_attn_bwd(gy.data_ptr(), qkv.data_ptr(), None if bias is None else bias.data_ptr(),
                         p.data_ptr(), g.data_ptr(), gb.data_ptr(), B, T, H, d, d ** -0.5,
                         _threads()):
        raise MemoryError("native causal_attention backward: no memory for its scratch buffers")
    return g, gb


@torch.library.custom_op("aigc::causal_attention", mutates_args=())
def _attention_op(qkv: torch.Tensor, heads: int,
                  bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return _attn_fwd(_loaded(), qkv.contiguous(), heads, bias)


@torch.library.custom_op("aigc::causal_attention_backward", mutates_args=())
def _attention_backward_op(grad: torch.Tensor, qkv: torch.Tensor, p: torch.Tensor,
                           heads: int, bias: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    return _attn_bwd(_loaded(), grad.contiguous(), qkv.contiguous(), p.contiguous(), heads, bias)


@_attention_op.register_fake
def _attention_op_fake(qkv, heads, bias=None):
    B, T, C3 = qkv.shape
    return (qkv.new_empty(B, T, C3 // 3),
            qkv.new_empty(B, heads, T, _padded(T)))


@_attention_backward_op.register_fake
def _attention_backward_op_fake(grad, qkv, p, heads, bias=None):
    return torch.empty_like(qkv), qkv.new_empty(qkv.shape[-1])


def _attention_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output[1], inputs[2])
    ctx.heads = inputs[1]
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the probabilities


def _attention_backward(ctx, grad_y, _grad_p):
    if grad_y is None:
        return None, None, None
    qkv, p, bias = ctx.saved_tensors
    g, gb = _attention_backward_op(grad_y, qkv, p, ctx.heads, bias)
    return g, None, None if bias is None else gb


_attention_op.register_autograd(_attention_backward, setup_context=_attention_setup)


def _constant_when_compiled(fn):
    """``torch.compiler.assume_constant_result(fn)`` without its import of ``torch._dynamo``
    (2-3 s, which every ``aigc`` command paid at start through this module): that decorator only
    marks ``fn`` for the compiler to read when it traces a call, and this marks it the same way
    (tests/test_native_kernels.py checks that both leave the same marks on a function)."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_when_compiled
def attention_route() -> str:
    """``"native"`` or ``"torch"``: the route :func:`causal_attention` takes in this process."""
    return route("attention")


def _call_path(*tensors: torch.Tensor | None) -> str:
    """How the native kernels are called on their ``tensors`` (inputs and parameters; None
    skipped): ``"op"`` while ``torch.compile`` traces (the GELU's custom op; attention and MLP:
    their plain operators inside the ``autograd.Function`` the compiler traces, see
    ``_AttentionFunction``), ``"function"`` (an ``autograd.Function`` around the ctypes calls,
    cheaper than the op's dispatch) where eager autograd records a gradient for any of them,
    else ``"direct"``."""
    if torch.compiler.is_compiling():
        return "op"
    needs_grad = any(t is not None and t.requires_grad for t in tensors)
    return "function" if needs_grad and torch.is_grad_enabled() else "direct"


def attention_takes(qkv: torch.Tensor, heads: int) -> bool:
    """Whether :func:`causal_attention` runs the native kernels on this ``qkv``: it fits them
    and this machine measured them faster."""
    return attention_fits(qkv, heads) and attention_route() == "native"


def native_causal_attention(qkv: torch.Tensor, heads: int,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    """The native kernels on a ``qkv`` that :func:`attention_takes` (plus ``bias``, the fused
    projection's, where qkv was computed without it: the kernels add it to each head's rows
    in cache and return its gradient, instead of ATen's addmm writing it into the whole
    output first): :class:`_AttentionFunction` under the compiler (plain operators) and under
    eager autograd (direct calls), else a direct call."""
    path = _call_path(qkv, bias)
    if path in ("op", "function"):
        return _AttentionFunction.apply(qkv, heads, bias)
    return _attn_fwd(_loaded(), qkv, heads, bias)[0]


def causal_attention(qkv: torch.Tensor, heads: int,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """Causal self-attention of ``qkv (B, T, 3C)`` (queries | keys | values, ``heads`` heads;
    plus ``bias (3C,)`` where given) to ``(B, T, C)``, no dropout: the native kernels where
    they fit and are measured faster, else :func:`causal_attention_aten`."""
    if attention_takes(qkv, heads) and bias_fits(qkv, bias):
        return native_causal_attention(qkv, heads, bias)
    return causal_attention_aten(qkv if bias is None else qkv + bias, heads)


def _attention_self_check(lib) -> str | None:
    """The attention kernels against float64 ATen on odd and padded lengths."""
    gen = torch.Generator().manual_seed(2)
    with torch.inference_mode(False), torch.enable_grad():  # the build may start under no_grad
        for B, T, H, d in ((2, 37, 2, 32), (1, 1, 1, 16), (1, 48, 3, 16), (1, 20, 1, 64)):
            qkv = torch.randn(B, T, 3 * H * d, generator=gen) * 2
            gy = torch.randn(B, T, H * d, generator=gen)
            y, p = _attn_fwd(lib, qkv, H)
            g = _attn_bwd(lib, gy, qkv, p, H)[0]
            ref_in = qkv.double().requires_grad_()
            ref = causal_attention_aten(ref_in, H)
            (ref_g,) = torch.autograd.grad(ref, ref_in, gy.double())
            err_y = (y.double() - ref).abs().max().item()
            err_g = (g.double() - ref_g).abs().max().item() / (1 + ref_g.abs().max().item())
            if not (err_y <= 1e-5 and err_g <= 1e-5):
                return (f"the native attention disagrees with ATen at B={B} T={T} H={H} d={d} "
                        f"(forward {err_y:.2e}, backward {err_g:.2e})")
            # the projection's bias added inside: the same numbers as on qkv + bias
            bias = torch.randn(3 * H * d, generator=gen)
            y_in, p_in = _attn_fwd(lib, qkv - bias, H, bias)
            g_in, gb = _attn_bwd(lib, gy, qkv - bias, p_in, H, bias)
            ref_y, ref_p = _attn_fwd(lib, (qkv - bias) + bias, H)
            ref_g = _attn_bwd(lib, gy, (qkv - bias) + bias, ref_p, H)[0]
            err_b = (gb.double() - ref_g.double().sum((0, 1))).abs().max().item()
            if not (torch.equal(y_in, ref_y) and torch.equal(g_in, ref_g)
                    and err_b <= 1e-5 * (1 + ref_g.abs().sum((0, 1)).max().item())):
                return (f"the native attention with its bias inside disagrees with itself on "
                        f"qkv + bias at B={B} T={T} H={H} d={d} (bias gradient {err_b:.2e})")
    return None


# ------------------------------------------------------------------- GPT MLP
# The MLP of a GPT block, y = gelu(x W1^T + b1) W2^T + b2, forward in one kernel (each 12-row
# tile: its rows of u and h with the bias and the GELU applied while the output tile is in
# registers, then its rows of y while those rows of h are in L1), and of the backward the
# product dy W2 with the GELU's derivative and the first bias's gradient the same way
# (kernels.c, aigc_mlp_fwd/bwd). What ATen does instead writes each bias into its product's
# output before the GEMM, reads u back for the GELU and h back for the second product, writes
# dy W2 and reads it back, and reads du again for the bias gradient: in a training step whole
# passes over (rows x 4 width) values that come from and go to memory, not cache. dx and the
# weight gradients stay ATen's products.

_MLP_PROBE = (768, 128, 512)  # rows (batch 12 x 64 positions), width, hidden: gpt_speed's MLP
_MLP_COLS = 32  # the kernels' register tile is 32 columns wide: the hidden width is a multiple


def _mlp_shapes_fit(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor | None,
                    w2: torch.Tensor) -> bool:
    """float32 ``x (..., K)``, ``W1 (N, K)`` with N a multiple of 32, ``b1 (N,)``, ``W2 (K2, N)``."""
    return (b1 is not None and x.dtype == w1.dtype == b1.dtype == w2.dtype == torch.float32
            and x.dim() >= 2 and w1.dim() == 2 and w1.shape[1] == x.shape[-1]
            and w1.shape[0] % _MLP_COLS == 0 and b1.shape == (w1.shape[0],)
            and w2.dim() == 2 and w2.shape[1] == w1.shape[0])


def mlp_fits(x: torch.Tensor, fc: torch.nn.Linear, proj: torch.nn.Linear) -> bool:
    """Whether the fused MLP kernels take ``x (..., K)`` through ``fc (K -> N)``, GELU and
    ``proj (N -> K2)``: float32 CPU tensors, ``x`` contiguous with at least one row, ``fc``
    with a bias, ``N`` a multiple of 32, no autocast."""
    return (x.device.type == "cpu" and _mlp_shapes_fit(x, fc.weight, fc.bias, proj.weight)
            and (proj.bias is None or proj.bias.dtype == torch.float32)
            and x.is_contiguous() and x.numel() > 0 and not torch.is_autocast_enabled("cpu"))


def _mlp_check(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> None:
    if not (x.dim() == 2 and _mlp_shapes_fit(x, w1, b1, w2)):
        raise ValueError(f"native gpt_mlp takes float32 x (M, K), W1 (N, K) with N a multiple "
                         f"of {_MLP_COLS}, b1 (N,), W2 (K2, N); got x {tuple(x.shape)} "
                         f"{x.dtype}, W1 {tuple(w1.shape)}, b1 {tuple(b1.shape)}, "
                         f"W2 {tuple(w2.shape)}")


def _mlp_fwd(lib, x, w1, b1, w2, b2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, u, h)`` for a 2-D ``x``: ``u = x W1^T + b1`` (kept for the backward),
    ``h = gelu(u)``, ``y = h W2^T + b2``; y by the same kernel where W2's rows are a multiple
    of 32, else by ATen's product."""
    _mlp_check(x, w1, b1, w2)
    fused = w2.shape[0] % _MLP_COLS == 0
    u, h, y = _mlp_kernel(lib, x, w1, b1, w2 if fused else None, b2 if fused else None)
    if not fused:
        y = torch.mm(h, w2.t()) if b2 is None else torch.addmm(b2, h, w2.t())
    return y, u, h


def _mlp_kernel(lib, x, w1, b1, w2=None, b2=None):
    """``(u, h, y)`` from the forward kernel; ``y`` is None without ``w2``."""
    x, w1, b1 = x.contiguous(), w1.contiguous(), b1.contiguous()
    M, K = x.shape
    N = w1.shape[0]
    u, h = x.new_empty(M, N), x.new_empty(M, N)
    y, K2, ptrs = None, 0, (None, None, None)
    if w2 is not None:
        w2 = w2.contiguous()
        K2 = w2.shape[0]
        y = x.new_empty(M, K2)
        b2 = b2.contiguous() if b2 is not None else None
        ptrs = (w2.data_ptr(), b2.data_ptr() if b2 is not None else None, y.data_ptr())
    if lib.aigc_mlp_fwd(x.data_ptr(), w1.data_ptr(), b1.data_ptr(), ptrs[0], ptrs[1],
                        u.data_ptr(), h.data_ptr(), ptrs[2], M, N, K, K2, _threads()):
        raise MemoryError("native gpt_mlp: no memory to pack the weights")
    return u, h, y


def _mlp_du(lib, gy: torch.Tensor, w2: torch.Tensor, u: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(du, db1)``: ``du = (gy W2) * gelu'(u)``, the gradient at the first product's output,
    and its sum over the rows, the first bias's gradient."""
    gy, w2, u = gy.contiguous(), w2.contiguous(), u.contiguous()
    M, K2 = gy.shape
    N = w2.shape[1]
    if w2.shape[0] != K2 or u.shape != (M, N) or N % _MLP_COLS:
        raise ValueError(f"native gpt_mlp backward: gradient {tuple(gy.shape)}, W2 "
                         f"{tuple(w2.shape)} and u {tuple(u.shape)} do not fit")
    du, db = torch.empty_like(u), u.new_empty(N)
    if lib.aigc_mlp_bwd(gy.data_ptr(), w2.data_ptr(), u.data_ptr(), du.data_ptr(),
                        db.data_ptr(), M, N, K2, _threads()):
        raise MemoryError("native gpt_mlp backward: no memory to pack the weight")
    return du, db


def _mlp_grads(du_db, gy, x, w1, h, has_b2: bool):
    """The gradients of x, W1, b1, W2, b2 from the fused backward's ``(du, db1)`` (the rest by
    ATen's products and sums)."""
    du, db1 = du_db
    return (du @ w1, du.t() @ x, db1, gy.t() @ h, gy.sum(0) if has_b2 else None)


@torch.library.custom_op("aigc::gpt_mlp", mutates_args=())
def _mlp_op(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
            b2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _mlp_fwd(_loaded(), x, w1, b1, w2, b2)


@torch.library.custom_op("aigc::gpt_mlp_backward", mutates_args=())
def _mlp_du_op(grad: torch.Tensor, w2: torch.Tensor, u: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    return _mlp_du(_loaded(), grad, w2, u)


@_mlp_op.register_fake
def _mlp_op_fake(x, w1, b1, w2, b2):
    M, N = x.shape[0], w1.shape[0]
    return x.new_empty(M, w2.shape[0]), x.new_empty(M, N), x.new_empty(M, N)


@_mlp_du_op.register_fake
def _mlp_du_op_fake(grad, w2, u):
    return torch.empty_like(u), u.new_empty(u.shape[1])


def _mlp_setup(ctx, inputs, output):
    x, w1, _, w2, b2 = inputs
    ctx.save_for_backward(x, w1, w2, output[1], output[2])
    ctx.has_b2 = b2 is not None
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)


def _mlp_backward(ctx, gy, _gu, _gh):
    if gy is None:
        return None, None, None, None, None
    x, w1, w2, u, h = ctx.saved_tensors
    gy = gy.contiguous()
    return _mlp_grads(_mlp_du_op(gy, w2, u), gy, x, w1, h, ctx.has_b2)


_mlp_op.register_autograd(_mlp_backward, setup_context=_mlp_setup)


class _MLPFunction(torch.autograd.Function):
    """The fused MLP under autograd: in eager mode direct calls, like :class:`_EagerGelu`; under
    ``torch.compile`` the plain operators below, in a Function the compiler traces."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        if torch.compiler.is_compiling():
            y, u, h = torch.ops.aigc.mlp_fwd(x, w1, b1, w2, b2)
        else:
            y, u, h = _mlp_fwd(_loaded(), x, w1, b1, w2, b2)
        ctx.save_for_backward(x, w1, w2, u, h)
        ctx.has_b2 = b2 is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        compiling = torch.compiler.is_compiling()
        if torch.is_grad_enabled() and not compiling:
            # create_graph: the saved pre-activation u does not carry x's graph, so a second
            # derivative would come out missing rather than wrong-signed; refuse instead
            raise RuntimeError(
                "aigc's fused MLP kernels have no autograd formula for a second derivative "
                f"(create_graph=True); set {ROUTE_ENVS['mlp']}=torch for double backward")
        x, w1, w2, u, h = ctx.saved_tensors
        gy = gy.contiguous()
        du_db = torch.ops.aigc.mlp_du(gy, w2, u) if compiling else _mlp_du(_loaded(), gy, w2, u)
        return _mlp_grads(du_db, gy, x, w1, h, ctx.has_b2)


# ------------------------------------------------------------------- under torch.compile
# The attention and MLP kernels as plain operators with no autograd kernel of their own, and
# autograd.Functions around them that dynamo traces into the graph: the compiled forward and
# backward then call the operators directly (_AttentionFunction and _MLPFunction, which eager
# autograd uses with direct calls). The custom ops above (kept for callers that want
# one operator with its gradient) carry a Python autograd kernel that every call passes
# through, even inside a compiled graph where no gradient is recorded (a GPT step calls each
# family twice per layer; the compiled step both ways: benchmarks/native_dispatch.py --compiled).
_PLAIN = torch.library.Library("aigc", "FRAGMENT")
_PLAIN.define("attention_fwd(Tensor qkv, int heads, Tensor? bias) -> (Tensor, Tensor)")
_PLAIN.define("attention_bwd(Tensor grad, Tensor qkv, Tensor p, int heads, Tensor? bias)"
              " -> (Tensor, Tensor)")
_PLAIN.define("mlp_fwd(Tensor x, Tensor w1, Tensor b1, Tensor w2, Tensor? b2)"
              " -> (Tensor, Tensor, Tensor)")
_PLAIN.define("mlp_du(Tensor grad, Tensor w2, Tensor u) -> (Tensor, Tensor)")
_PLAIN.impl("attention_fwd", lambda qkv, heads, bias: _attn_fwd(
    _loaded(), qkv.contiguous(), heads, bias), "CPU")
_PLAIN.impl("attention_bwd", lambda grad, qkv, p, heads, bias: _attn_bwd(
    _loaded(), grad.contiguous(), qkv.contiguous(), p.contiguous(), heads, bias), "CPU")
_PLAIN.impl("mlp_fwd", lambda x, w1, b1, w2, b2: _mlp_fwd(_loaded(), x, w1, b1, w2, b2), "CPU")
_PLAIN.impl("mlp_du", lambda grad, w2, u: _mlp_du(_loaded(), grad, w2, u), "CPU")
# the same shapes as the custom ops': their fake implementations serve both
for _name, _fake in (("attention_fwd", _attention_op_fake),
                     ("attention_bwd", _attention_backward_op_fake),
                     ("mlp_fwd", _mlp_op_fake), ("mlp_du", _mlp_du_op_fake)):
    torch.library.register_fake(f"aigc::{_name}")(_fake)


@_constant_when_compiled
def mlp_route() -> str:
    """``"native"`` or ``"torch"``: the route :func:`gpt_mlp` takes in this process."""
    return route("mlp")


def mlp_takes(x: torch.Tensor, fc: torch.nn.Linear, proj: torch.nn.Linear) -> bool:
    """Whether :func:`gpt_mlp` runs the fused kernels on ``x``: they fit and this machine
    measured them faster."""
    return mlp_fits(x, fc, proj) and mlp_route() == "native"


def gpt_mlp(x: torch.Tensor, fc: torch.nn.Linear, proj: torch.nn.Linear) -> torch.Tensor:
    """``proj(gelu_tanh(fc(x)))`` by the fused kernels, for an ``x`` that :func:`mlp_takes`:
    the custom op under the compiler, the eager Function under autograd, else a direct call."""
    x2 = x.reshape(-1, x.shape[-1])
    args = (x2, fc.weight, fc.bias, proj.weight, proj.bias)
    path = _call_path(*args)  # the weights count too: x may need no gradient while they do
    if path in ("op", "function"):
        y = _MLPFunction.apply(*args)
    else:
        y = _mlp_fwd(_loaded(), *args)[0]
    return y.view(*x.shape[:-1], y.shape[-1])


def _mlp_reference(x, w1, b1, w2, b2):
    h = F.gelu(F.linear(x, w1, b1), approximate="tanh")
    return F.linear(h, w2, b2)


def _mlp_self_check(lib) -> str | None:
    """The fused MLP kernels against float64 ATen: rows that do not fill a 12-row tile, one
    row, widths that are and are not multiples of 16, hidden widths of one and several 32-column
    panels, with and without the second bias."""
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode(False), torch.enable_grad():
        for M, K, N, K2, b2 in ((37, 16, 32, 32, True), (1, 20, 64, 8, False),
                                (24, 128, 512, 128, True)):
            x = torch.randn(M, K, generator=gen)
            w1 = torch.randn(N, K, generator=gen) * K ** -0.5
            b1 = torch.randn(N, generator=gen)
            w2 = torch.randn(K2, N, generator=gen) * N ** -0.5
            bias2 = torch.randn(K2, generator=gen) if b2 else None
            gy = torch.randn(M, K2, generator=gen)
            y, u, h = _mlp_fwd(lib, x, w1, b1, w2, bias2)
            got = (y, *_mlp_grads(_mlp_du(lib, gy, w2, u), gy, x, w1, h, b2))
            ref_in = [t.double().requires_grad_() for t in (x, w1, b1, w2)]
            ref_b2 = bias2.double().requires_grad_() if b2 else None
            ref_y = _mlp_reference(*ref_in, ref_b2)
            ref = (ref_y, *torch.autograd.grad(ref_y, ref_in + ([ref_b2] if b2 else []),
                                               gy.double()))
            for name, a, b in zip(("y", "dx", "dW1", "db1", "dW2", "db2"), got, ref):
                err = (a.double() - b).abs().max().item() / (1 + b.abs().max().item())
                if not err <= 1e-5:
                    return (f"the native MLP's {name} disagrees with ATen at M={M} K={K} N={N} "
                            f"({err:.2e})")
    return None


# ------------------------------------------------------------------- 3x3 convolution
# The UNets' 3x3 convolutions (stride 1, padding 1) over channels-last float32 images, by
# Winograd's F(4x4, 3x3) (kernels.c): 4x fewer multiply-adds than the direct convolution oneDNN
# runs. aigc.models.layers.Conv2d calls conv2d(), which takes them where they fit and are
# measured faster, else F.conv2d.

# Up to 256 channels a side and 32,768 kernels: a block's tiles and U_p fit a 2 MB L2 cache
# and the kernel gradient's 36 Ci Co partial sums stay a few MB (at 256 x 256 they are 9.4 MB,
# and with two threads the kernels fell behind oneDNN's: benchmarks/unet_kernels.py).
_CONV_MAX_CHANNELS = 256
_CONV_MAX_KERNELS = 32768
# F(4x4, 3x3): 4x fewer multiply-adds than the direct convolution, against 2.25x for F(2x2, 3x3)
# (which kernels.c also has, with about 10x finer rounding: within 1e-6 of float64 like oneDNN,
# F(4x4) within about 1e-5). F(4x4) was faster at every shape of benchmarks/unet_kernels.py,
# 7 x 7 images included, so it is the one used.
_WINO_M = 4
_CONV_PROBE = (16, 64, 14, 14, 64)  # batch, in channels, height, width, out channels


def _both(v, n: int) -> bool:
    """Whether a convolution's stride, padding or dilation (an int or a pair) is ``n`` both ways."""
    return (v, v) == (n, n) if isinstance(v, int) else tuple(v) == (n, n)


def conv3x3_fits(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=1, dilation=1,
                 groups: int = 1) -> bool:
    """Whether the native 3x3 convolution takes ``F.conv2d(x, weight, ...)``: float32 CPU
    tensors, ``x`` 4-d and channels-last, a 3x3 kernel of stride 1, padding 1, dilation 1, one
    group, input and output channels multiples of 16 up to 256 (and at most 32,768 kernels),
    no autocast."""
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32
            or weight.device.type != "cpu" or x.dim() != 4 or weight.dim() != 4):
        return False
    co, ci = weight.shape[:2]
    return (tuple(weight.shape[2:]) == (3, 3) and x.shape[1] == ci and groups == 1
            and _both(stride, 1) and _both(padding, 1) and _both(dilation, 1)
            and ci % 16 == 0 and co % 16 == 0 and max(ci, co) <= _CONV_MAX_CHANNELS
            and ci * co <= _CONV_MAX_KERNELS
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu"))


def winograd_weights(lib, weight: torch.Tensor, flipped: bool = False,
                     m: int = _WINO_M) -> torch.Tensor:
    """``U (P, Ci, Co)``, ``P = (m + 2)^2``, the transformed kernels ``G g G^T`` of
    ``weight (Co, Ci, 3, 3)`` for F(m x m, 3 x 3); ``flipped``: ``(P, Co, Ci)``, those of the
    kernels turned by 180 degrees with their channels swapped, which carry the output's
    gradient back to the input."""
    co, ci = weight.shape[:2]
    w = weight.detach().contiguous()
    P = (m + 2) ** 2
    u = w.new_empty(P, co, ci) if flipped else w.new_empty(P, ci, co)
    lib.aigc_conv3x3_weights(w.data_ptr(), u.data_ptr(), co, ci, int(flipped), m)
    return u


def _conv_fwd(lib, x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None,
              m: int = _WINO_M) -> torch.Tensor:
    B, ci, H, W = x.shape
    co = u.shape[2]
    y = torch.empty((B, co, H, W), memory_format=torch.channels_last)
    b = bias.detach().contiguous() if bias is not None else None
    if lib.aigc_conv3x3_fwd(x.data_ptr(), u.data_ptr(), b.data_ptr() if b is not None else None,
                            y.data_ptr(), B, H, W, ci, co, m, _threads()):
        raise MemoryError("native conv3x3: no memory for its scratch buffers")
    return y


def _conv_wgrad(lib, x: torch.Tensor, gy: torch.Tensor, bias: bool = True,
                m: int = _WINO_M) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernels' gradient ``(Co, Ci, 3, 3)`` and the bias's ``(Co,)`` (``None`` unless
    ``bias``) from the input and the output's gradient, both channels-last."""
    B, ci, H, W = x.shape
    co = gy.shape[1]
    gw = x.new_empty(co, ci, 3, 3)
    gb = x.new_empty(co) if bias else None
    if lib.aigc_conv3x3_wgrad(x.data_ptr(), gy.data_ptr(), gw.data_ptr(),
                              gb.data_ptr() if bias else None, B, H, W, ci, co, m, _threads()):
        raise MemoryError("native conv3x3 backward: no memory for its scratch buffers")
    return gw, gb


class _EagerConv3x3(torch.autograd.Function):
    """The native 3x3 convolution under autograd: the input's gradient is the same forward
    kernel on the output's gradient (:func:`winograd_weights` ``flipped``), the kernel's from
    ``aigc_conv3x3_wgrad``, with the bias's. A backward that builds a graph
    (``create_graph=True``) takes ATen's differentiable operations instead."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        lib = _loaded()
        return _conv_fwd(lib, x, winograd_weights(lib, weight), bias)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: ATen's differentiable ops, so a second
            # derivative (a gradient penalty, Hessian-vector products) comes out right
            gx = F.conv_transpose2d(gy, weight, padding=1) if ctx.needs_input_grad[0] else None
            gw = (torch.nn.grad.conv2d_weight(x, weight.shape, gy, padding=1)
                  if ctx.needs_input_grad[1] else None)
            gb = gy.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
            return gx, gw, gb
        lib = _loaded()
        gy = gy.contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _conv_fwd(lib, gy, winograd_weights(lib, weight, flipped=True), None)
        if ctx.needs_input_grad[1] or ctx.has_bias and ctx.needs_input_grad[2]:
            gw, gb = _conv_wgrad(lib, x, gy, bias=ctx.has_bias and ctx.needs_input_grad[2])
        return gx, gw, gb


def native_conv3x3(x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """The native 3x3 convolution (stride 1, padding 1) of a channels-last ``x`` that
    :func:`conv3x3_fits`, as ``F.conv2d(x, weight, bias, padding=1)``; channels-last output."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _EagerConv3x3.apply(x, weight, bias)
    lib = _loaded()
    return _conv_fwd(lib, x, _cached_weights(lib, weight), bias)


def _cached_weights(lib, weight: torch.Tensor) -> torch.Tensor:
    """:func:`winograd_weights` of ``weight``, kept on the tensor with a copy of the values it
    was made from and reused while they are equal: sampling calls a UNet tens of times with the
    same weights, and for small batches the transform (36 Ci Co values) is most of a call. The
    values themselves are compared (about 10 us for 64 x 64 kernels), not the tensor's version
    counter, which fused AdamW and ``.data`` writes leave as it was."""
    cached = getattr(weight, "_aigc_winograd", None)
    if (cached is not None and cached[0].shape == weight.shape
            and torch.equal(cached[0], weight.detach())):
        return cached[1]
    u = winograd_weights(lib, weight)
    try:
        weight._aigc_winograd = (weight.detach().clone(), u)
    except AttributeError:  # a tensor that takes no attributes: no cache
        pass
    return u


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with the same arguments, by :func:`native_conv3x3` where it fits and this
    machine measured it faster (under ``torch.compile``: always ``F.conv2d``)."""
    if (not torch.compiler.is_compiling()
            and conv3x3_fits(x, weight, stride, padding, dilation, groups)
            and route("conv") == "native"):
        return native_conv3x3(x, weight, bias)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _conv_self_check(lib) -> str | None:
    """The 3x3 convolution, forward and both gradients, against float64 ATen on odd sizes."""
    gen = torch.Generator().manual_seed(3)
    for B, ci, H, W, co in ((2, 16, 5, 7, 32), (1, 32, 1, 1, 16), (3, 48, 6, 3, 80)):
        x = torch.randn(B, ci, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.randn(co, ci, 3, 3, generator=gen) * 0.2
        bias = torch.randn(co, generator=gen)
        gy = torch.randn(B, co, H, W, generator=gen).contiguous(
            memory_format=torch.channels_last)
        with torch.inference_mode(False), torch.enable_grad():
            xd, wd, bd = (t.double().requires_grad_() for t in (x, w, bias))
            ref = F.conv2d(xd, wd, bd, padding=1)
            ref_gx, ref_gw, ref_gb = torch.autograd.grad(ref, (xd, wd, bd), gy.double())
        for m in (2, 4):
            y = _conv_fwd(lib, x, winograd_weights(lib, w, m=m), bias, m)
            gx = _conv_fwd(lib, gy, winograd_weights(lib, w, flipped=True, m=m), None, m)
            gw, gb = _conv_wgrad(lib, x, gy, m=m)
            problem = _disagreement({"forward": (y, ref), "input gradient": (gx, ref_gx),
                                     "kernel gradient": (gw, ref_gw),
                                     "bias gradient": (gb, ref_gb)}, 5e-5)
            if problem:
                return (f"the native 3x3 convolution F({m}x{m}, 3x3) disagrees with ATen at "
                        f"{B}x{ci}x{H}x{W} -> {co} ({problem})")
    return None


def _disagreement(pairs: dict, tol: float) -> str | None:
    """``"name error"`` of the first of ``pairs`` (name: (ours, float64 reference)) whose largest
    difference, relative to 1 + the reference's largest value, is over ``tol``; else None."""
    for name, (ours, theirs) in pairs.items():
        err = (ours.double() - theirs).abs().max().item() / (1 + theirs.abs().max().item())
        if not err <= tol:  # NaN fails
            return f"{name} {err:.2e}"
    return None


@_measurement
def measure_conv_routes(lib, rounds: int) -> dict:
    """The same for a 3x3 convolution, forward + both gradients, channels-last, at a UNet's
    middle shape (batch 16, 64 channels in and out, 14 x 14): the native Winograd kernels
    against ``F.conv2d`` (oneDNN's)."""
    B, ci, H, W, co = _CONV_PROBE
    with torch.inference_mode(False), torch.enable_grad():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(B, ci, H, W, generator=gen).contiguous(
            memory_format=torch.channels_last).requires_grad_()
        w = (torch.randn(co, ci, 3, 3, generator=gen) * 0.05).requires_grad_()
        bias = torch.zeros(co, requires_grad=True)
        gy = torch.randn(B, co, H, W, generator=gen).contiguous(
            memory_format=torch.channels_last)

        def aten():
            torch.autograd.grad(F.conv2d(x, w, bias, padding=1), (x, w, bias), gy)

        def native():
            torch.autograd.grad(_EagerConv3x3.apply(x, w, bias), (x, w, bias), gy)

        return _compare(aten, native, rounds,
                        shape=f"{B}x{ci}x{H}x{W} -> {co}, 3x3, channels-last")


# --------------------------------------------------------------------- GroupNorm + SiLU
# silu(GroupNorm(x) (1 + scale) + shift), the diffusion UNets' ResBlocks (scale and shift from
# the timestep embedding, or none) and their output, in one kernel (kernels.c) over a
# channels-last float32 x. aigc.models.unet calls group_norm_silu().

_GN_MAX_C = 1024
_GN_PROBE = (32, 64, 14, 14, 8)  # batch, channels, height, width, groups


def group_norm_silu_fits(x: torch.Tensor, norm: torch.nn.GroupNorm) -> bool:
    """Whether the native kernel takes ``silu(norm(x) ...)``: a float32 CPU ``x`` (B, C, H, W)
    in channels-last, C a multiple of 16 up to 1024, an affine float32 GroupNorm, no autocast."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.shape[1] == norm.num_channels and x.shape[1] % 16 == 0
            and x.shape[1] <= _GN_MAX_C and norm.affine and norm.weight.dtype == torch.float32
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.is_autocast_enabled("cpu"))


def _group_norm_silu_aten(x, norm, scale, shift):
    h = norm(x)
    return F.silu(h * (1 + scale) + shift)


def _gn_fwd(lib, x, a, s, groups: int, eps: float):
    B, C, H, W = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    mean, rstd = x.new_empty(B, groups), x.new_empty(B, groups)
    lib.aigc_gn_silu_fwd(x.data_ptr(), a.data_ptr(), s.data_ptr(), y.data_ptr(), mean.data_ptr(),
                         rstd.data_ptr(), B, H * W, C, groups, eps, _threads())
    return y, mean, rstd


def _gn_bwd(lib, gy, x, a, s, mean, rstd, groups: int):
    B, C, H, W = x.shape
    gx = torch.empty_like(x, memory_format=torch.channels_last)
    ga, gs = a.new_empty(B, C), a.new_empty(B, C)
    lib.aigc_gn_silu_bwd(gy.data_ptr(), x.data_ptr(), a.data_ptr(), s.data_ptr(),
                         mean.data_ptr(), rstd.data_ptr(), gx.data_ptr(), ga.data_ptr(),
                         gs.data_ptr(), B, H * W, C, groups, _threads())
    return gx, ga, gs


class _EagerGroupNormSiLU(torch.autograd.Function):
    """``silu(xhat a + s)`` with ``xhat`` the group-normalised channels-last ``x`` and ``a``,
    ``s`` (B, C); the gradients of ``x``, ``a`` and ``s`` (autograd takes them on to the
    GroupNorm's weight and bias and the block's scale and shift). A backward that builds a
    graph takes ATen's operations, as in :class:`_EagerConv3x3`."""

    @staticmethod
    def forward(ctx, x, a, s, groups, eps):
        y, mean, rstd = _gn_fwd(_loaded(), x, a, s, groups, eps)
        ctx.save_for_backward(x, a, s, mean, rstd)
        ctx.groups, ctx.eps = groups, eps
        return y

    @staticmethod
    def backward(ctx, gy):
        x, a, s, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: through ATen's differentiable operations
            y = F.silu(F.group_norm(x, ctx.groups, eps=ctx.eps) * a[:, :, None, None]
                       + s[:, :, None, None])
            wanted = [t for t, need in zip((x, a, s), ctx.needs_input_grad) if need]
            grads = iter(torch.autograd.grad(y, wanted, gy, create_graph=True))
            return (*(next(grads) if need else None for need in ctx.needs_input_grad[:3]),
                    None, None)
        gy = gy.contiguous(memory_format=torch.channels_last)
        gx, ga, gs = _gn_bwd(_loaded(), gy, x, a, s, mean, rstd, ctx.groups)
        return gx, ga, gs, None, None


def group_norm_silu_takes(x: torch.Tensor, norm: torch.nn.GroupNorm) -> bool:
    """Whether :func:`group_norm_silu` runs on ``x``: it fits and this machine measured the
    kernel faster (under ``torch.compile``: never)."""
    return (not torch.compiler.is_compiling() and group_norm_silu_fits(x, norm)
            and route("groupnorm") == "native")


def group_norm_silu(x: torch.Tensor, norm: torch.nn.GroupNorm, scale: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(norm(x) * (1 + scale) + shift)`` (``scale``, ``shift``: ``(B, C, 1, 1)`` or
    both ``None``) by the native kernel, for an ``x`` that :func:`group_norm_silu_fits`."""
    B, C = x.shape[:2]
    gamma, beta = norm.weight[None], norm.bias[None]  # (1, C)
    if scale is None:
        a, s = gamma.expand(B, C), beta.expand(B, C)
    else:
        k = 1 + scale.reshape(B, C)
        a, s = gamma * k, beta * k + shift.reshape(B, C)
    a, s = a.contiguous(), s.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or s.requires_grad):
        return _EagerGroupNormSiLU.apply(x, a, s, norm.num_groups, norm.eps)
    return _gn_fwd(_loaded(), x, a, s, norm.num_groups, norm.eps)[0]


def _groupnorm_self_check(lib) -> str | None:
    """GroupNorm + SiLU, forward and gradients, against float64 ATen."""
    gen = torch.Generator().manual_seed(4)
    for B, C, H, W, G in ((2, 32, 5, 3, 8), (1, 16, 1, 1, 1), (3, 48, 4, 7, 3)):
        x = (torch.randn(B, C, H, W, generator=gen) * 3 + 1).contiguous(
            memory_format=torch.channels_last)
        a, s = torch.randn(B, C, generator=gen), torch.randn(B, C, generator=gen)
        gy = torch.randn(B, C, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
        y, mean, rstd = _gn_fwd(lib, x, a, s, G, 1e-5)
        gx, ga, gs = _gn_bwd(lib, gy, x, a, s, mean, rstd, G)
        with torch.inference_mode(False), torch.enable_grad():
            xd, ad, sd = (t.double().requires_grad_() for t in (x, a, s))
            ref = F.silu(F.group_norm(xd, G, eps=1e-5) * ad[:, :, None, None]
                         + sd[:, :, None, None])
            refs = torch.autograd.grad(ref, (xd, ad, sd), gy.double())
        problem = _disagreement({"forward": (y, ref), "input gradient": (gx, refs[0]),
                                 "scale gradient": (ga, refs[1]),
                                 "shift gradient": (gs, refs[2])}, 1e-5)
        if problem:
            return (f"the native GroupNorm + SiLU disagrees with ATen at {B}x{C}x{H}x{W}, "
                    f"{G} groups ({problem})")
    return None


@_measurement
def measure_groupnorm_routes(lib, rounds: int) -> dict:
    """The same for GroupNorm + scale-shift + SiLU, forward + backward, channels-last, at a
    UNet's middle shape (batch 32, 64 channels in 8 groups, 14 x 14)."""
    B, C, H, W, G = _GN_PROBE
    with torch.inference_mode(False), torch.enable_grad():
        gen = torch.Generator().manual_seed(0)
        norm = torch.nn.GroupNorm(G, C)
        x = torch.randn(B, C, H, W, generator=gen).contiguous(
            memory_format=torch.channels_last).requires_grad_()
        scale = (torch.randn(B, C, 1, 1, generator=gen) * 0.1).requires_grad_()
        shift = (torch.randn(B, C, 1, 1, generator=gen) * 0.1).requires_grad_()
        gy = torch.randn(B, C, H, W, generator=gen).contiguous(memory_format=torch.channels_last)
        leaves = (x, scale, shift, norm.weight, norm.bias)

        def aten():
            torch.autograd.grad(_group_norm_silu_aten(x, norm, scale, shift), leaves, gy)

        def native():
            k = 1 + scale.reshape(B, C)
            a = (norm.weight[None] * k).contiguous()
            s = (norm.bias[None] * k + shift.reshape(B, C)).contiguous()
            torch.autograd.grad(_EagerGroupNormSiLU.apply(x, a, s, G, norm.eps), leaves, gy)

        return _compare(aten, native, rounds,
                        shape=f"{B}x{C}x{H}x{W}, {G} groups, scale-shift, channels-last")


# ---------------------------------------------------------------------------- the routes


def _best_of(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _compare(aten, native, rounds: int, **extra) -> dict:
    from aigc.models.layers import alternating_best

    t_aten, t_native = alternating_best(lambda: _best_of(aten), lambda: _best_of(native), rounds)
    ratio = t_aten / t_native
    return {"aten_s": t_aten, "native_s": t_native, "aten_over_native": round(ratio, 3),
            "route": "native" if ratio >= _MARGIN else "torch", "margin": _MARGIN,
            "rounds": rounds, **extra}


@_measurement
def measure_gelu_routes(lib, rounds: int) -> dict:
    """Time ATen's tanh GELU and the native one (forward + backward on a GPT activation) in
    alternating rounds; the best time of each, their ratio and the route that wins by the
    margin. The native side is ``None`` with the reason when it cannot be built."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(_PROBE_SHAPE, generator=gen)
    gy = torch.randn(_PROBE_SHAPE, generator=gen)

    def aten():
        F.gelu(x, approximate="tanh")
        torch.ops.aten.gelu_backward(gy, x, approximate="tanh")

    def native():
        _fwd(lib, x)
        _bwd(lib, gy, x)

    return _compare(aten, native, rounds, shape=list(_PROBE_SHAPE))


@_measurement
def measure_decode_routes(lib, rounds: int) -> dict:
    """The same for one token of a SmolLM2-135M layer's small operations (two RMSNorms, the
    rotary positions and cache writes, the SiLU product) and a GPT layer's cached attention,
    50 times over."""
    gen = torch.Generator().manual_seed(0)
    H, KV, d, D, N = 9, 3, 64, 576, 1536
    h, w = torch.randn(1, D, generator=gen), torch.randn(D, generator=gen)
    gu, qkv = torch.randn(1, 2 * N, generator=gen), torch.randn(1, (H + 2 * KV) * d, generator=gen)
    cos, sin = torch.rand(1, d, generator=gen), torch.rand(1, d, generator=gen)
    kc, vc = _empty_caches(KV, 64, d)
    # and a GPT layer's attention at gpt_speed's generation shape (4 heads of 32, 40 positions)
    gqkv = torch.randn(1, 1, 3 * 4 * 32, generator=gen)
    gk, gv = torch.zeros(1, 4, 64, 32), torch.zeros(1, 4, 64, 32)

    def aten():
        for _ in range(50):
            rms_norm_aten(h, w, 1e-5), rms_norm_aten(h, w, 1e-5), silu_mul_aten(gu)
            rope_cache_aten(qkv, cos, sin, kc, vc, H, KV, d, 3)
            gpt_decode_attention_aten(gqkv, gk, gv, 4, 40)

    def native():
        for _ in range(50):
            rms_norm(h, w, 1e-5, lib), rms_norm(h, w, 1e-5, lib), silu_mul(gu, lib)
            rope_cache(qkv, cos, sin, kc, vc, H, KV, d, 3, lib)
            gpt_decode_attention(gqkv, gk, gv, 4, 40, lib)

    return _compare(aten, native, rounds,
                    shape="SmolLM2-135M layer and a GPT layer's attention, 1 token, x50")


@_measurement
def measure_attention_routes(lib, rounds: int) -> dict:
    """The same for GPT attention, forward + backward, at gpt_speed's training shape (batch 12,
    63 positions, width 128, 4 heads): the native kernels against the head split, ATen's SDPA
    and the merge they replace."""
    B, T, C3, H = _ATTN_PROBE
    with torch.inference_mode(False), torch.enable_grad():  # first asked under no_grad, maybe
        gen = torch.Generator().manual_seed(0)
        qkv = torch.randn(B, T, C3, generator=gen).requires_grad_()
        gy = torch.randn(B, T, C3 // 3, generator=gen)

        def aten():
            torch.autograd.grad(causal_attention_aten(qkv, H), qkv, gy)

        def native():
            torch.autograd.grad(_attention_op(qkv, H)[0], qkv, gy)

        return _compare(aten, native, rounds, shape=f"qkv {B}x{T}x{C3}, {H} heads")


@_measurement
def measure_mlp_routes(lib, rounds: int) -> dict:
    """The same for what the fused MLP kernels replace in a GPT block, at gpt_speed's shape (768
    rows, width 128, hidden 512): the forward (both linear layers and the GELU) and, of the
    backward, the product ``dy W2`` with the GELU's backward and the first bias's gradient,
    against the same as the model runs them otherwise (its linear and GELU routes). The
    weight gradients and ``dx``, ATen's products on both routes, are left out. Each timed call
    goes through eight different inputs and keeps the forward's outputs until the backward, as
    a training step keeps its activations, so they come from memory rather than from the cache
    of the call before (in a loop over one input most of the gain disappears: it is memory
    traffic that the kernels save)."""
    from aigc.models.layers import linear

    M, K, N = _MLP_PROBE
    gen = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(N, K, generator=gen) * K ** -0.5, torch.randn(N, generator=gen)
    w2, b2 = torch.randn(K, N, generator=gen) * N ** -0.5, torch.randn(K, generator=gen)
    xs = [torch.randn(M, K, generator=gen) for _ in range(8)]
    gys = [torch.randn(M, K, generator=gen) for _ in range(8)]
    native_gelu = gelu_route() == "native"

    def aten():
        kept = []
        for x in xs:
            u = linear(x, w1, b1)
            h = gelu_tanh(u)
            kept.append((u, h, linear(h, w2, b2)))
        for (u, _, _), gy in zip(kept, gys):
            dh = gy @ w2
            du = (_bwd(lib, dh, u) if native_gelu
                  else torch.ops.aten.gelu_backward(dh, u, approximate="tanh"))
            du.sum(0)

    def native():
        kept = [_mlp_fwd(lib, x, w1, b1, w2, b2) for x in xs]
        for (_, u, _), gy in zip(kept, gys):
            _mlp_du(lib, gy, w2, u)

    return _compare(aten, native, rounds, shape=f"{M}x{K} -> {N} -> {K}, 8 inputs")


_MEASURE = {"gelu": "measure_gelu_routes", "decode": "measure_decode_routes",
            "attention": "measure_attention_routes", "conv": "measure_conv_routes",
            "groupnorm": "measure_groupnorm_routes", "mlp": "measure_mlp_routes"}


def set_route(kind: str, route: str | None) -> str | None:
    """Force ``kind``'s kernels (``"gelu"`` or ``"decode"``) to ``"native"`` or ``"torch"``, or
    back to the measured choice (``None``); returns the old setting."""
    if kind not in ROUTE_ENVS:
        raise ValueError(f"kernel kind must be one of {sorted(ROUTE_ENVS)}, got {kind!r}")
    if route not in (None, "native", "torch"):
        raise ValueError(f"{kind} route must be 'native', 'torch' or None, got {route!r}")
    old = _forced.pop(kind, None)
    if route is not None:
        _forced[kind] = route
    return old


@contextlib.contextmanager
def routes(**kinds: str | None):
    """Force kernel families for the ``with`` block (``routes(conv="torch", groupnorm="torch")``;
    ``None``: the measured route), then put back what was forced before."""
    old = {kind: set_route(kind, route) for kind, route in kinds.items()}
    try:
        yield
    finally:
        for kind, route in old.items():
            set_route(kind, route)


def set_gelu_route(route: str | None) -> str | None:
    return set_route("gelu", route)


def route(kind: str) -> str:
    """``"native"`` or ``"torch"``: the kernels ``kind`` (``"gelu"``, ``"decode"``) takes in
    this process (forced, from its environment variable, or measured once per machine)."""
    env = ROUTE_ENVS[kind]
    choice = _forced.get(kind) or os.environ.get(env, "auto").strip().lower()
    if choice == "torch":
        return "torch"
    if choice == "native":
        if _build() is None:
            raise NativeKernelError(f"{env}=native, but {_build_error}")
        return "native"
    if choice not in ("", "auto"):
        raise ValueError(f"{env} must be 'native', 'torch' or 'auto', got {choice!r}")
    if kind not in _measured:
        _measured[kind] = _cached_or_measured(kind)
    return _measured[kind]


@_constant_when_compiled  # torch.compile asks once, eagerly, and bakes it in
def gelu_route() -> str:
    """``"native"`` or ``"torch"``: the route :func:`gelu_tanh` takes in this process."""
    return route("gelu")


def decode_route() -> str:
    """``"native"`` or ``"torch"``: the small-operation kernels of Llama decoding."""
    return route("decode")


def cache_key(kind: str) -> str:
    """The ``kernels.json`` key of ``kind``'s measurement on this machine and for this
    ``kernels.c`` (an edited kernel is measured again)."""
    global _source_digest
    from aigc.models.layers import _machine_key

    if _source_digest is None:
        try:
            _source_digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:12]
        except OSError:
            _source_digest = "missing"
    name = {"gelu": "gelu_tanh", "decode": "llama_decode", "attention": "causal_attention",
            "conv": "conv3x3", "groupnorm": "group_norm_silu", "mlp": "gpt_mlp"}[kind]
    return f"{name}|{_machine_key()}|kernels.c {_source_digest}"


def _cached_or_measured(kind: str) -> str:
    from aigc.models.layers import cached_measurement, store_measurement

    with _lock:
        entry = cached_measurement(cache_key(kind))
        chosen = entry.get("route") if entry else None
        if chosen == "torch" or (chosen == "native" and _build() is not None):
            return chosen
        result = globals()[_MEASURE[kind]]()
        # A build that failed here (no compiler yet, a full disk) is not a measurement: keep
        # nothing, so a later process builds and measures again.
        if result.get("native", True) is not None:
            store_measurement(cache_key(kind), result)
        return result["route"]


def current_route(kind: str) -> str:
    """The route ``kind`` takes if it is already decided (forced, by the environment, measured in
    this process or kept in kernels.json), else ``"undecided"``; never builds or measures (the
    records of models that do not use the kernel call this)."""
    from aigc.models.layers import _cache_file, cached_measurement

    choice = (_forced.get(kind) or os.environ.get(ROUTE_ENVS[kind], "auto")).strip().lower()
    if choice in ("native", "torch"):
        return choice
    if kind in _measured:
        return _measured[kind]
    key = f"{_cache_file()}|{cache_key(kind)}"
    if key not in _seen_in_cache:  # one read of kernels.json per key, not one per record
        entry = cached_measurement(cache_key(kind))
        _seen_in_cache[key] = (entry["route"] if entry and entry.get("route") in
                               ("native", "torch") else "undecided")
    return _seen_in_cache[key]


@torch.library.custom_op("aigc::gelu_tanh", mutates_args=())
def _gelu_op(x: torch.Tensor) -> torch.Tensor:
    x = x.contiguous()
    _check_rows("gelu_tanh", x)
    return _fwd(_loaded(), x)


@torch.library.custom_op("aigc::gelu_tanh_backward", mutates_args=())
def _gelu_backward_op(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    grad, x = grad.contiguous(), x.contiguous()
    _check_rows("gelu_tanh backward", grad, x)
    return _bwd(_loaded(), grad, x)


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


class _EagerGelu(torch.autograd.Function):
    """The GELU kernels under eager autograd: the same calls as the custom op's without its
    dispatch (a GPT's eager training step 1.05x faster, benchmarks/native_dispatch.py); the op
    stays for ``torch.compile``, which keeps it opaque. A backward that builds a graph
    (``create_graph=True``) goes through the op's backward, so a second derivative raises as it
    does there instead of coming out silently missing."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _fwd(_loaded(), x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: the op's backward, which refuses to go twice
            return _gelu_backward_op(grad, x)
        return _bwd(_loaded(), grad.contiguous(), x)


class _AttentionFunction(torch.autograd.Function):
    """The attention kernels under autograd: in eager mode direct calls, like
    :class:`_EagerGelu`; under ``torch.compile`` the plain operators (see ``_PLAIN``), in a
    Function the compiler traces."""

    @staticmethod
    def forward(ctx, qkv, heads, bias):
        if torch.compiler.is_compiling():
            y, p = torch.ops.aigc.attention_fwd(qkv, heads, bias)
        else:
            y, p = _attn_fwd(_loaded(), qkv, heads, bias)
        ctx.save_for_backward(qkv, p, bias)
        ctx.heads = heads
        return y

    @staticmethod
    def backward(ctx, grad):
        qkv, p, bias = ctx.saved_tensors
        if torch.compiler.is_compiling():
            g, gb = torch.ops.aigc.attention_bwd(grad, qkv, p, ctx.heads, bias)
        elif torch.is_grad_enabled():  # create_graph: as in _EagerGelu
            g, gb = _attention_backward_op(grad, qkv, p, ctx.heads, bias)
        else:
            g, gb = _attn_bwd(_loaded(), grad.contiguous(), qkv, p, ctx.heads, bias)
        return g, None, None if bias is None else gb


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")`` (GPT-2's ``gelu_new``), by the native kernel where it
    is measured faster (see the module notes)."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()
            and gelu_route() == "native"):
        path = _call_path(x)
        if path == "op":
            return _gelu_op(x)
        return _EagerGelu.apply(x) if path == "function" else _fwd(_loaded(), x)
    return F.gelu(x, approximate="tanh")
