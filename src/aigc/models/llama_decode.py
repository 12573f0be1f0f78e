"""A lean decoding loop over the weights of a transformers ``LlamaForCausalLM`` (SmolLM2).

transformers' Llama forward spends, per generated token, milliseconds in Python (module calls,
mask building, ``DynamicCache`` bookkeeping, output dataclasses): about 8 ms a token for
SmolLM2-135M on one CPU core, against a 46 ms float32 forward and a 21 ms int4 one
(docs/performance.md). :class:`LeanLlama` runs the same maths with nothing but the forward:

* q/k/v fused into one matrix and gate/up into one, so a layer is four matmuls;
* a key/value cache preallocated per layer ``(kv_heads, capacity, head_dim)`` that grows by
  doubling, written in place (no concatenation per token);
* the rotary table computed once, as transformers computes it;
* weights kept as

  - ``float32``: the same numbers as transformers;
  - ``bfloat16``: the weights rounded, activations float32 (no faster without AMX);
  - ``int8``: weight-only, one float32 scale per output channel (``w ~ scale[n] * q[n, k]``,
    symmetric, ``scale = max|w[n]| / 127``), multiplied by ``_weight_int8pack_mm``;
  - ``int4``: the layers with one scale and zero per 32 inputs (``w ~ lo + step * q``,
    ``q`` in 0..15: a GGUF Q4_1 block, so weights de-quantized from Q4_1 come back unchanged,
    up to the bf16 rounding of ``step`` and ``lo``), multiplied by
    ``_weight_int4pack_mm_for_cpu``; the output layer in ``int8``.

  Both integer kernels are vectorized for bf16 activations only (their float32 paths are
  scalar and slower than float32 weights), so in those modes each matmul's input and output are
  rounded to bf16; norms, softmax, rotary embedding, attention and the residual stream stay
  float32 in every mode.

It implements :class:`aigc.generation.CachedLM`, so sampling, stop strings and seeds behave
exactly as with :class:`aigc.models.pretrained.HFCachedLM`::

    lm = LeanLlama(hf_model, end_ids={2}, weights="int8")
    logits = lm.feed([1, 2, 3])  # (V,) next-token logits
"""

from __future__ import annotations

import copy
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from aigc.models import native

Weights = Literal["float32", "bfloat16", "int8", "int4"]
WEIGHTS: tuple[str, ...] = get_args(Weights)
_FIRST_CAPACITY = 256  # cache positions allocated on the first feed; doubled when full
INT4_GROUP = 32  # int4 weights: one scale and zero per 32 consecutive inputs (GGUF Q4_1's block)


def check_weights(weights: str) -> str:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    return weights


class _Linear:
    """``x (T, K) float32 -> (T, N) float32`` with the weight ``(N, K)`` stored as ``weights``
    says (see the module docstring)."""

    def __init__(self, w: torch.Tensor, weights: str):
        w = w.detach().float().contiguous()
        self.weights = weights
        if weights == "int8":
            # symmetric, per output channel: w[n] ~ scale[n] * q[n], q in [-127, 127]
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=torch.finfo(torch.float32).tiny)
            self.w = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            # the kernel wants bf16 scales; ones there and the float32 scale applied after the
            # matmul keep the scale exact (a bf16 scale is off by up to 0.4%)
            self.scale = scale
            self.ones = torch.ones(w.shape[0], dtype=torch.bfloat16)
        elif weights == "int4":
            N, K = w.shape
            if K % INT4_GROUP:
                raise ValueError(f"int4 weights need in_features divisible by {INT4_GROUP}, "
                                 f"got {K}")
            # affine per group of 32 inputs: w ~ lo + step * q, q in [0, 15]; a GGUF Q4_1 block
            # is exactly this, so weights de-quantized from Q4_1 come back unchanged
            groups = w.view(N, K // INT4_GROUP, INT4_GROUP)
            lo, hi = groups.amin(-1), groups.amax(-1)  # (N, K/32)
            step = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny)
            q = torch.round((groups - lo[..., None]) / step[..., None]).clamp(0, 15)
            self.w = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                q.to(torch.int32).view(N, K), 2)
            # the kernel computes (q - 8) * scale + zero, in bf16 (its float32 path is scalar)
            self.scale = torch.stack([step, lo + 8 * step], -1).transpose(0, 1).contiguous() \
                .to(torch.bfloat16)  # (K/32, N, 2)
        elif weights == "bfloat16":
            self.w = w.to(torch.bfloat16).t()  # (K, N) view: x @ w^T without a copy per call
        else:
            self.w = w.t()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weights == "int8":  # bf16 activations: the CPU kernel is vectorized for them
            return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.w,
                                                      self.ones).float() * self.scale
        if self.weights == "int4":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.to(torch.bfloat16), self.w, INT4_GROUP, self.scale).float()
        if self.weights == "bfloat16":
            return (x.to(torch.bfloat16) @ self.w).float()
        return x @ self.w


class _Layer:
    def __init__(self, layer, weights: str):
        a, m = layer.self_attn, layer.mlp
        self.norm_in = layer.input_layernorm.weight.detach().float()
        self.norm_post = layer.post_attention_layernorm.weight.detach().float()
        self.qkv = _Linear(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), weights)
        self.o = _Linear(a.o_proj.weight, weights)
        self.gate_up = _Linear(torch.cat([m.gate_proj.weight, m.up_proj.weight]), weights)
        self.down = _Linear(m.down_proj.weight, weights)


class LeanLlama:
    """:class:`aigc.generation.CachedLM` over a Llama's weights with a lean decoding loop.

    Args:
        model: a transformers ``LlamaForCausalLM`` (its weights are read once; the model itself
            is not called).
        end_ids: token ids that end a generation.
        weights: ``"float32"`` (same numbers as transformers), ``"bfloat16"``, ``"int8"`` or
            ``"int4"`` (see the module docstring).
        context_length: positions the model attends to (default: the config's
            ``max_position_embeddings``).
    """

    def __init__(self, model, end_ids: set[int], *, weights: Weights = "float32",
                 context_length: int | None = None):
        self.weights = check_weights(weights)
        cfg = model.config
        if getattr(cfg, "model_type", None) != "llama":
            raise ValueError(f"LeanLlama needs a Llama model, got model_type={cfg.model_type!r}")
        rope = getattr(cfg, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"LeanLlama supports rope_type 'default' only, got {rope!r}")
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            raise ValueError("LeanLlama supports Llama models without attention/MLP biases only")
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"LeanLlama supports hidden_act 'silu' only, got {cfg.hidden_act!r}")
        self.model = model  # the source of the weights (for parity checks), never called here
        self.context_length = context_length or cfg.max_position_embeddings
        self.prefix_ids: list[int] = []
        self.end_ids = set(end_ids)
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = float(cfg.rms_norm_eps)
        with torch.no_grad():
            self.embed = model.model.embed_tokens.weight.detach().float()  # (V, D)
            self.layers = [_Layer(layer, weights) for layer in model.model.layers]
            self.norm = model.model.norm.weight.detach().float()
            # int4: the layers only (the GGUF's embedding/output matrix is not 4-bit)
            self.head = _Linear(model.lm_head.weight, "int8" if weights == "int4" else weights)
        theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
        # transformers' default rotary embedding: inv_freq_i = theta^(-2i/d), angle = pos * inv_freq
        d = self.head_dim
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        self.cos = self.sin = torch.empty(0, d)
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self.length = 0  # positions the cache holds

    def fresh(self) -> LeanLlama:
        """A decoder sharing these weights with an empty cache of its own (one per conversation
        or thread; the weights are converted once)."""
        lm = copy.copy(self)
        lm.end_ids = set(self.end_ids)
        lm.k_cache, lm.v_cache, lm.length = [], [], 0
        lm.cos = lm.sin = torch.empty(0, self.head_dim)
        return lm

    # -------------------------------------------------------------- the CachedLM contract
    def reset(self) -> None:
        self.length = 0

    @torch.no_grad()
    def feed(self, ids: list[int]) -> torch.Tensor:
        T = len(ids)
        if T == 0:
            raise ValueError("feed needs at least one token id")
        p = self.length
        if p + T > self.context_length:
            raise ValueError(f"feeding {T} tokens after {p} exceeds the context of "
                             f"{self.context_length}")
        self._reserve(p + T)
        cos, sin = self.cos[p:p + T], self.sin[p:p + T]  # (T, d)
        if T == 1:
            mask = None
        else:  # query i (position p+i) sees keys 0..p+i
            mask = torch.arange(p + T)[None, :] <= (p + torch.arange(T))[:, None]  # (T, p+T)
        H, KV, d = self.n_heads, self.n_kv, self.head_dim
        if native.decode_route() == "native":  # one call per small operation (see native)
            norm, rope_cache, silu_mul = native.rms_norm, native.rope_cache, native.silu_mul
        else:
            norm, rope_cache = native.rms_norm_aten, native.rope_cache_aten
            silu_mul = native.silu_mul_aten
        h = self.embed[torch.tensor(ids)]  # (T, D)
        for i, layer in enumerate(self.layers):
            x = norm(h, layer.norm_in, self.eps)
            q, k_cache, v_cache = rope_cache(layer.qkv(x).contiguous(), cos, sin, self.k_cache[i],
                                             self.v_cache[i], H, KV, d, p)  # q (H, T, d)
            att = F.scaled_dot_product_attention(
                q[None], k_cache[None, :, :p + T], v_cache[None, :, :p + T],
                attn_mask=mask, enable_gqa=True)  # (1, H, T, d)
            h = h + layer.o(att[0].transpose(0, 1).reshape(T, H * d))
            x = norm(h, layer.norm_post, self.eps)
            h = h + layer.down(silu_mul(layer.gate_up(x).contiguous()))
        self.length = p + T
        return self.head(norm(h[-1:].contiguous(), self.norm, self.eps))[0]

    # -------------------------------------------------------------------------- helpers
    def _reserve(self, n: int) -> None:
        """Make the cache and the rotary table hold at least ``n`` positions."""
        capacity = self.cos.shape[0]
        if n <= capacity:
            return
        new = min(self.context_length, max(n, _FIRST_CAPACITY, 2 * capacity))
        angle = torch.arange(new, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat([angle, angle], dim=-1)  # (new, d)
        self.cos, self.sin = emb.cos(), emb.sin()
        shape = (self.n_kv, new, self.head_dim)
        for cache in (self.k_cache, self.v_cache):
            old = list(cache)
            cache[:] = [torch.zeros(shape) for _ in self.layers]
            for grown, kept in zip(cache, old):
                grown[:, :capacity] = kept[:, :capacity]
