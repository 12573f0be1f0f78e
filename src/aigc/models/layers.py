"""Small layers shared by model families.

:func:`linear` is ``F.linear`` with the float32 CPU matrix products routed to oneDNN.

Why: PyTorch's CPU wheels multiply float32 matrices with MKL's ``sgemm``. On AMD CPUs MKL does
not run its AVX-512 kernels, and on this project's machines (AMD EPYC with AVX-512) oneDNN's
float32 GEMM is about 2.2x faster at the shapes of our small transformers (measured by
``benchmarks/gpt_speed.py``; both are true float32 products, only the summation order differs).
PyTorch itself sends only bf16/fp16 products to oneDNN. ``torch.ops.mkldnn._linear_pointwise`` is
the oneDNN linear that ``torch.compile`` uses on CPU; it accepts ordinary strided tensors, so the
backward pass is three more such products and no copies:

    y  = x W^T + b          x: (M, K), W: (N, K)  -> (M, N)
    dx = dy W    = linear(dy, W^T)                 (M, N) x (N, K)
    dW = dy^T x  = linear(dy^T, x^T)               (N, M) x (M, K)
    db = sum_M dy

Anything else (fewer than 32 rows, autocast, other dtypes or devices, a PyTorch without oneDNN)
takes ``F.linear``.
:func:`set_onednn_linear` switches the route off (benchmarks measure both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                                       "_linear_pointwise")
_enabled = True
# oneDNN pays ~10 us per call in primitive look-up; below ~32 rows (one-token generation steps)
# MKL's small-matrix path wins (measured on this machine: 1 row 4 us vs 14 us, 64 rows 64 vs 42).
_MIN_ROWS = 32


def set_onednn_linear(enabled: bool) -> bool:
    """Route float32 CPU linear layers through oneDNN (``True``) or ``F.linear``; returns the old
    setting."""
    global _enabled
    old, _enabled = _enabled, bool(enabled)
    return old


def onednn_linear_active() -> bool:
    """Whether :func:`linear` may take the oneDNN route in this process."""
    return _HAS_ONEDNN_LINEAR and _enabled


@torch.library.custom_op("aigc::onednn_mm", mutates_args=())
def _onednn_mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(a, b_t, bias, "none", [], "")


@_onednn_mm.register_fake
def _(a, b_t, bias):
    return a.new_empty(a.shape[0], b_t.shape[0])


def _mm(a: torch.Tensor, b_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``a @ b_t^T + bias`` by oneDNN: ``a (M, K)``, ``b_t (N, K)``, any strides.

    Eager code calls the oneDNN op directly. Under ``torch.compile`` it goes through an opaque
    custom op, because inductor's own lowering of ``_linear_pointwise`` expects frozen weights.
    """
    if torch.compiler.is_compiling():
        return _onednn_mm(a, b_t, bias)
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
        _enabled and _HAS_ONEDNN_LINEAR and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
        and not torch.is_autocast_enabled("cpu")
        and x.dim() >= 2 and x.numel() >= _MIN_ROWS * x.shape[-1] > 0
    ):
        return F.linear(x, weight, bias)
    if x.dim() == 2:
        return _OneDNNLinear.apply(x, weight, bias)
    y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)  # (M, N)
    return y.view(*x.shape[:-1], weight.shape[0])
