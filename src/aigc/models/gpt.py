"""GPT: a decoder-only transformer language model (Radford et al., 2019), readable top to bottom.

    h_0 = E[x] + P[pos]                          (learned positions; or rotary, Su et al. 2021)
    h_l = h_{l-1} + Attn(LN(h_{l-1}));  h_l += MLP(LN(h_l))        (pre-LayerNorm blocks)
    p(x_{t+1} | x_{<=t}) = softmax(LN(h_L) E^T)                    (tied input/output embeddings)

Attention is ``F.scaled_dot_product_attention`` with a causal mask; under ``torch.compile``,
for contexts up to ``MATH_ATTENTION_MAX_T`` tokens, it is written out (scores, mask, softmax,
product) so the compiler fuses the mask and softmax with their neighbours (issue #17;
`benchmarks/gpt_speed.py`'s compiled row measures it). Whole float32 sequences on the CPU
(training, scoring; up to 256 positions, head width a multiple of 16) take
:func:`aigc.models.native.causal_attention` instead where it is measured faster on the machine:
one call on the fused projection, eager or compiled. Linear layers
are plain ``nn.Linear`` modules (so state dicts match GPT-2's layout) applied with
:func:`aigc.models.layers.linear` (float32 CPU products by the kernels measured fastest on the
machine); the MLP's GELU is :func:`aigc.models.native.gelu_tanh` (likewise), and the whole MLP
over whole sequences is :func:`aigc.models.native.gpt_mlp` where this machine measured those
fused kernels faster (the forward and the backward's first product one kernel call each, with the
biases and the GELU applied in registers). Generation keeps
a key/value cache (:class:`KVCache`) so each new token costs one position, not the whole prefix.

The model knows nothing about text: it maps token ids ``0..vocab_size-1`` to next-token logits,
so music (event tokens) reuses it unchanged. ``tokenizer`` and ``bpe_vocab_size`` in the config
only tell ``aigc train gpt`` which tokenizer to build for a text corpus; ``vocab_size = 0`` means
"take it from that tokenizer". The tokenizer is stored in the checkpoint's ``meta["tokenizer"]``
(see :mod:`aigc.tokenizers`), so ``model.safetensors`` alone rebuilds model and tokenizer.

Batches are ``{"tokens": (B, T+1) int64}``: inputs ``tokens[:, :-1]``, targets ``tokens[:, 1:]``;
an optional ``"loss_mask": (B, T)`` restricts the loss to some targets (answers when
fine-tuning on question -> answer pairs).

:func:`gpt2_state_dict_from_hf` imports a Hugging Face GPT-2 checkpoint (same maths: learned
positions, biases, tanh-GELU, tied embeddings), so our model reproduces its logits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from aigc.config import check_non_negative, check_positive
from aigc.errors import CheckpointError, ConfigError
from aigc.models import native
from aigc.models.layers import linear
from aigc.models.native import gelu_tanh


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 0  # 0: set from the tokenizer trained on the corpus
    context_length: int = 256  # the longest sequence the model sees (T)
    layers: int = 4
    heads: int = 4
    width: int = 128  # embedding width; heads divide it
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * width
    dropout: float = 0.0
    positions: Literal["learned", "rotary"] = "learned"
    bias: bool = True  # biases in linear layers and LayerNorms (GPT-2 has them)
    tie_embeddings: bool = True  # output projection = token embedding matrix
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    tokenizer: Literal["char", "bpe"] = "char"  # for text corpora (ignored by the network)
    bpe_vocab_size: int = 2048  # BPE merges + bytes + <|endoftext|>

    def __post_init__(self) -> None:
        check_positive(self, "context_length", "layers", "heads", "width", "mlp_ratio",
                       "norm_eps", "rope_base")
        check_non_negative(self, "vocab_size")
        if self.width % self.heads:
            raise ConfigError(f"width={self.width} must be divisible by heads={self.heads}")
        if self.positions == "rotary" and (self.width // self.heads) % 2:
            raise ConfigError(
                f"rotary positions need an even head width, got width/heads={self.width // self.heads}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.bpe_vocab_size < 258:
            raise ConfigError(f"bpe_vocab_size must be >= 258 (256 bytes + 2), got {self.bpe_vocab_size}")


# ---------------------------------------------------------------------------------- helpers


def rotary_tables(head_dim: int, length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of ``pos * base^(-2i/d)``, each ``(length, head_dim / 2)`` (RoFormer eq. 15)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs ``(x[..., i], x[..., i + d/2])`` of ``x: (B, H, T, d)`` by their angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class KVCache:
    """Keys and values of every layer for positions ``0..length-1``, preallocated to ``max_len``.

    Shapes: ``keys[l]``, ``values[l]``: ``(B, H, max_len, head_dim)``.
    """

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.heads, max_len, cfg.width // cfg.heads)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.layers)]
        self.max_len = max_len
        self.length = 0  # positions filled (advanced by GPT.forward after all layers ran)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``k, v: (B, H, T, d)`` at positions ``length..length+T-1``; return all so far."""
        start, end = self.length, self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked for {end}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


# ----------------------------------------------------------------------------------- blocks

# Longest context whose attention is written out under torch.compile (see the module notes);
# past it the score matrix outgrows the caches and the fused flash kernel is the better choice.
MATH_ATTENTION_MAX_T = 128


def causal_attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + causal mask) v`` for ``q, k, v: (B, H, T, d)``, as plain ops."""
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))  # (B, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        p = self.dropout if self.training else 0.0
        whole = cache is None and rope is None and p == 0.0
        bias = self.qkv.bias
        fold = (whole and bias is not None and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")
                and native.attention_shape_fits(T, C // self.heads)
                and native.attention_route() == "native")
        # where the native kernels take the call, the fused projection's bias goes into them
        # (added to each head's rows in cache; ATen's addmm would first write it into the whole
        # output), else the product adds it as usual
        qkv = linear(x, self.qkv.weight, None if fold else bias)
        if whole and native.attention_takes(qkv, self.heads) and (
                not fold or native.bias_fits(qkv, bias)):
            # whole sequences (training, scoring) on the CPU: one call on the fused projection,
            # no head split or merge copied (aigc.models.native, measured per machine)
            y = native.native_causal_attention(qkv, self.heads, bias if fold else None)
            return self._project(y)
        if fold:  # the kernels do not take this qkv after all: the bias the usual way
            qkv = qkv + bias
        if (T == 1 and cache is not None and rope is None and p == 0.0
                and native.gpt_decode_fits(qkv, cache.keys[layer], self.heads, cache.length)
                and native.decode_route() == "native"):
            # one new token (generation): the cache writes and the attention over the cache in
            # one native call instead of a dozen ATen operations (measured per machine)
            y = native.gpt_decode_attention_fitted(qkv, cache.keys[layer], cache.values[layer],
                                                   self.heads, cache.length)
            return self._project(y)
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        if rope is not None:  # (T, d/2) tables for the positions of these T tokens
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, T_past + T, d)
        S = k.size(2)
        if S == T and p == 0.0 and T <= MATH_ATTENTION_MAX_T and torch.compiler.is_compiling():
            y = causal_attention_math(q, k, v)
        elif S == T:  # no past: the usual causal mask
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        elif T == 1:  # one new token attends to everything before it
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:  # T new tokens after S - T cached ones: token i sees keys 0 .. S - T + i
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self._project(y)

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        if self.proj.bias is not None and torch.compiler.is_compiling():
            # under the compiler the bias joins the residual add that the block fuses around
            # this product (addmm would first write it into the product's whole output)
            return linear(y, self.proj.weight) + self.proj.bias
        return linear(y, self.proj.weight, self.proj.bias)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2's "gelu_new". One position per row is a decoding step with a key/value cache:
        # a few hundred values, where a call costs more than the arithmetic and ATen's dispatch
        # is the cheaper one (generation measured slower through the native kernel). Whole
        # sequences take the measured routes, so a score never depends on the batch size: the
        # fused MLP kernels (the first product, its bias and the GELU in one pass, and the
        # same for their backward) where this machine measured them faster, else the two
        # linear layers around the GELU kernel.
        whole = x.dim() != 3 or x.shape[1] > 1
        if whole and native.mlp_takes(x, self.fc, self.proj):
            return native.gpt_mlp(x, self.fc, self.proj)
        u = linear(x, self.fc.weight, self.fc.bias)
        h = gelu_tanh(u) if whole else F.gelu(u, approximate="tanh")
        return linear(h, self.proj.weight, self.proj.bias)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, cache, layer):
        if not self.drop.p:  # no dropout (the default): skip the module call, one per token matters
            x = x + self.attn(self.ln_1(x), rope, cache, layer)
            return x + self.mlp(self.ln_2(x))
        x = x + self.drop(self.attn(self.ln_1(x), rope, cache, layer))
        return x + self.drop(self.mlp(self.ln_2(x)))


# ------------------------------------------------------------------------------------ model


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.vocab_size < 1:
            raise ConfigError(
                "vocab_size must be >= 1 to build a GPT (0 means 'from the tokenizer', which "
                "`aigc train gpt` fills in from the corpus)"
            )
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.width)
        self.wpe = nn.Embedding(cfg.context_length, cfg.width) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.width, eps=cfg.norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if cfg.positions == "rotary":
            cos, sin = rotary_tables(cfg.width // cfg.heads, cfg.context_length, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * layers) so the residual stream's
        # variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits ``(B, T, vocab)`` for token ids ``idx: (B, T)``.

        With a ``cache``, ``idx`` continues the sequence already in the cache (positions
        ``cache.length ..``), and the cache is extended.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds context_length={self.cfg.context_length}"
            )
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe.weight[start : start + T]  # the rows an embedding lookup would take
        else:
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        if self.drop.p:
            x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, cache, layer)
        if cache is not None:
            cache.length += T
        return linear(self.ln_f(x), self.lm_head.weight)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy in nats (over ``loss_mask`` targets when given)."""
        tokens = batch["tokens"]
        logits = self(tokens[:, :-1])  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
        if "loss_mask" in batch:
            mask = batch["loss_mask"].flatten().to(nll.dtype)
            return (nll * mask).sum() / mask.sum().clamp(min=1)
        return nll.mean()

    @torch.no_grad()
    def log_likelihood(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum of log p(target) per sequence (B,) float64, targets counted per sequence (B,))``.

        Natural logs of the softmax over float64 logits; with a ``"loss_mask": (B, T)`` only the
        marked targets count (the evaluation's sliding windows score each token once).
        """
        tokens = batch["tokens"]
        logp = self(tokens[:, :-1]).double().log_softmax(dim=-1)  # (B, T, V)
        picked = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, T)
        mask = batch.get("loss_mask")
        mask = torch.ones_like(picked, dtype=torch.bool) if mask is None else mask.bool()
        return (picked * mask).sum(1), mask.sum(1)

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        p = self.wte.weight
        return KVCache(self.cfg, batch, max_len or self.cfg.context_length, p.device, p.dtype)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue each row of ``idx: (B, T)`` by ``max_new_tokens`` sampled tokens (KV cache).

        Returns ``(B, T + max_new_tokens)``. Sampling controls are those of
        :class:`aigc.generation.SamplingParams`; text, streaming and stop strings live in
        :func:`aigc.generation.stream_text`.
        """
        from aigc.generation import SamplingParams, next_token

        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty, max_tokens=max_new_tokens)
        if idx.size(1) + max_new_tokens > self.cfg.context_length:
            raise ValueError(
                f"prompt ({idx.size(1)}) + max_new_tokens ({max_new_tokens}) exceeds "
                f"context_length={self.cfg.context_length}; use aigc.generation.stream_text, "
                "which slides the window"
            )
        cache = self.new_cache(idx.size(0))
        logits = self(idx, cache)[:, -1]  # (B, V)
        out = idx
        for _ in range(max_new_tokens):
            nxt = next_token(logits, params, generator=generator, previous=out)  # (B,)
            out = torch.cat([out, nxt[:, None]], dim=1)
            logits = self(nxt[:, None], cache)[:, -1]
        return out


CONFIG_CLASS = GPTConfig
MODEL_CLASS = GPT


def grow_depth(model: GPT, layers: int) -> GPT:
    """A deeper copy of ``model`` that computes the same function (depth up-scaling).

    Block i of the old model becomes blocks ``k*i .. k*i + k-1`` of the new one (``layers`` must
    be a multiple ``k`` of the old depth); each added copy has its two output projections
    (attention and MLP) zeroed, so with pre-LayerNorm residual blocks it starts as the identity
    and the grown model's logits equal the old model's. Training then uses the new blocks, which
    start from trained weights rather than noise (Net2Net-style growth, Chen et al., 2016).
    """
    old = model.cfg.layers
    if layers < old or layers % old:
        raise ConfigError(f"layers must be a multiple of the model's {old} layers, got {layers}")
    grown = GPT(replace(model.cfg, layers=layers)).to(model.wte.weight.device,
                                                      model.wte.weight.dtype)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    k = layers // old
    for i, block in enumerate(model.blocks):
        for j in range(k):
            for name, value in block.state_dict().items():
                zero = j > 0 and name.startswith(("attn.proj.", "mlp.proj."))
                sd[f"blocks.{k * i + j}.{name}"] = torch.zeros_like(value) if zero else value
    grown.load_state_dict(sd)
    return grown


# ----------------------------------------------------------- Hugging Face GPT-2 interoperability


def gpt2_config_from_hf(hf: dict) -> GPTConfig:
    """Our config for a Hugging Face ``GPT2Config`` (as the dict of its ``config.json``)."""
    if hf.get("model_type") != "gpt2":
        raise CheckpointError(f"not a GPT-2 config (model_type={hf.get('model_type')!r})")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"GPT-2 activation {act!r} is not supported (only tanh-GELU)")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise CheckpointError("GPT-2 variants with per-layer attention scaling are not supported")
    width = hf["n_embd"]
    inner = hf.get("n_inner") or 4 * width
    if inner % width:
        raise CheckpointError(f"n_inner={inner} is not a multiple of n_embd={width}")
    return GPTConfig(
        vocab_size=hf["vocab_size"], context_length=hf["n_positions"], layers=hf["n_layer"],
        heads=hf["n_head"], width=width, mlp_ratio=inner // width, dropout=0.0,
        positions="learned", bias=True, tie_embeddings=hf.get("tie_word_embeddings", True),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
    )


def gpt2_state_dict_from_hf(hf_sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """Rename (and transpose) a ``GPT2LMHeadModel`` state dict into ours.

    GPT-2 stores its linear layers as ``Conv1D`` with weights ``(in, out)``; ours are
    ``nn.Linear`` with ``(out, in)``.
    """
    sd = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    out = {"wte.weight": sd["wte.weight"], "wpe.weight": sd["wpe.weight"],
           "ln_f.weight": sd["ln_f.weight"], "ln_f.bias": sd["ln_f.bias"]}
    names = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.fc",
             "mlp.c_proj": "mlp.proj", "ln_1": "ln_1", "ln_2": "ln_2"}
    for i in range(cfg.layers):
        for theirs, ours in names.items():
            w, b = sd[f"h.{i}.{theirs}.weight"], sd[f"h.{i}.{theirs}.bias"]
            out[f"blocks.{i}.{ours}.weight"] = w if theirs.startswith("ln") else w.t().contiguous()
            out[f"blocks.{i}.{ours}.bias"] = b
    out["lm_head.weight"] = sd["wte.weight"] if cfg.tie_embeddings else hf_sd["lm_head.weight"]
    return out


def gpt2_state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The inverse of :func:`gpt2_state_dict_from_hf` (for learned positions with biases)."""
    if cfg.positions != "learned" or not cfg.bias:
        raise ConfigError("only GPTs with learned positions and biases map onto GPT-2")
    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"],
           "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"],
           "lm_head.weight": sd["lm_head.weight"]}
    names = {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "mlp.fc": "mlp.c_fc",
             "mlp.proj": "mlp.c_proj", "ln_1": "ln_1", "ln_2": "ln_2"}
    for i in range(cfg.layers):
        for ours, theirs in names.items():
            w, b = sd[f"blocks.{i}.{ours}.weight"], sd[f"blocks.{i}.{ours}.bias"]
            out[f"transformer.h.{i}.{theirs}.weight"] = w if ours.startswith("ln") else w.t().contiguous()
            out[f"transformer.h.{i}.{theirs}.bias"] = b
    return out


def load_hf_gpt2(directory: str | Path) -> GPT:
    """Our GPT with the weights of a local Hugging Face GPT-2 folder (``config.json`` +
    ``model.safetensors``); never reads a pickle and never reaches the network."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in ("config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not a GPT-2 folder: {name} is missing")
    cfg = gpt2_config_from_hf(json.loads((directory / "config.json").read_text(encoding="utf-8")))
    model = GPT(cfg)
    model.load_state_dict(gpt2_state_dict_from_hf(load_file(str(directory / "model.safetensors")), cfg))
    return model.eval()


# ------------------------------------------------------------------ hooks used by `aigc train`
DATA_KIND = "text"
TRAIN_DEFAULTS = {"lr": 1e-3, "batch_size": 32, "steps": 3000, "warmup_steps": 100,
                  "weight_decay": 0.1, "betas": (0.9, 0.95), "ema_decay": 0.0,
                  "eval_every": 250, "sample_every": 500}
# Model-config fields that `aigc train` takes from the data (shown by --help): 0 means this.
MODEL_FROM_DATA = {"vocab_size": "0, the trained tokenizer's size"}


def training_data(name: str):
    """``(train, val, meta, model_defaults)`` for a text corpus; the token streams are built by
    :func:`bind_data` once the model config (tokenizer, context length) is known."""
    from aigc.data.text import load_corpus

    corpus = load_corpus(name)
    return corpus, None, {"corpus_report": corpus.report.lines()[0]}, {}


def bind_data(model_cfg: GPTConfig, train, val, meta: dict):
    """Train the tokenizer the config asks for on the corpus, tokenize the splits, and fill in
    ``vocab_size``. Returns ``(model_cfg, train, val, meta)`` with ``meta["tokenizer"]``."""
    from dataclasses import replace

    from aigc.data.text import TextCorpus
    from aigc.data.tokens import TokenWindows, encode_documents
    from aigc.tokenizers import train_tokenizer

    if not isinstance(train, TextCorpus):  # already token windows (e.g. music events)
        return model_cfg, train, val, meta
    corpus = train
    texts = corpus.documents("train")
    if model_cfg.tokenizer == "char":  # every character of the corpus, so val/test encode too
        texts = [d for s in ("train", "val", "test") for d in corpus.documents(s)]
    tokenizer = train_tokenizer(model_cfg.tokenizer, texts, vocab_size=model_cfg.bpe_vocab_size)
    if model_cfg.vocab_size and model_cfg.vocab_size < tokenizer.vocab_size:
        raise ConfigError(
            f"vocab_size={model_cfg.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size} tokens; leave it at 0 to take the tokenizer's size"
        )
    model_cfg = replace(model_cfg, vocab_size=model_cfg.vocab_size or tokenizer.vocab_size)
    T = model_cfg.context_length
    train_ds = TokenWindows(encode_documents(tokenizer, corpus.documents("train")), T, stride=1,
                            where=f"{corpus.name} train split")
    val_ds = TokenWindows(encode_documents(tokenizer, corpus.documents("val")), T, stride=T,
                          where=f"{corpus.name} val split")
    return model_cfg, train_ds, val_ds, {**meta, "tokenizer": tokenizer.to_dict()}


def preview(model: GPT, step: int, run_dir) -> None:
    """``run_dir/samples/step-N.txt``: 400 tokens sampled at temperature 0.8 (seed 0).

    The tokenizer comes from the run's latest checkpoint (previews are drawn before the
    checkpoint of the same step is written, so the first preview of a run is skipped).
    """
    from aigc.checkpoints import MODEL_FILE, latest_checkpoint_dir, read_metadata
    from aigc.generation import SamplingParams, generate_text
    from aigc.tokenizers import tokenizer_from_dict

    folder = latest_checkpoint_dir(run_dir)
    if folder is None:
        return
    meta = json.loads(read_metadata(folder / MODEL_FILE).get("meta") or "{}")
    if "tokenizer" not in meta:
        return
    tokenizer = tokenizer_from_dict(meta["tokenizer"])
    params = SamplingParams(temperature=0.8, max_tokens=400, seed=0, stop_at_end=False)
    text = generate_text(model, tokenizer, "", params).text
    path = Path(run_dir) / "samples" / f"step-{step:08d}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def load_text_model(path, *, use_ema: bool = True):
    """``(model, tokenizer, checkpoint)`` from a GPT checkpoint trained on text."""
    from aigc.models import model_from_checkpoint
    from aigc.tokenizers import tokenizer_from_dict

    model, ckpt = model_from_checkpoint(path, use_ema=use_ema)
    if ckpt.family != "gpt":
        raise CheckpointError(f"{ckpt.path} holds a {ckpt.family!r} model, not a GPT")
    if "tokenizer" not in ckpt.meta:
        raise CheckpointError(f"{ckpt.path} has no tokenizer in its metadata (not trained on text)")
    return model, tokenizer_from_dict(ckpt.meta["tokenizer"]), ckpt
