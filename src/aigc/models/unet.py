"""The denoising network of :mod:`aigc.models.diffusion`: a UNet (Ronneberger et al., 2015) in the
shape of DDPM / ADM (Ho et al., 2020; Dhariwal & Nichol, 2021), readable top to bottom.

    x_t (B, C, H, W) ──conv──► [ResBlock (+Attention)] x N ──down──► ... ──► middle (Res, Attn, Res)
                                                                        │
    output (B, C, H, W) ◄──conv── [ResBlock(concat skip) (+Attention)] x (N+1) ──up──◄ ...

Every ResBlock receives one embedding vector per image: ``emb = MLP(sinusoid(t)) + c`` where the
condition ``c`` is a learned class embedding, a projection of a 384-d MiniLM sentence embedding,
or the learned "null" embedding used for classifier-free guidance. The embedding scales and shifts
the block's second GroupNorm (ADM's "scale-shift norm"). Self-attention runs only at the levels
listed in ``attention_levels`` (the low resolutions) and in the middle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aigc.models import native
from aigc.models.layers import Conv2d


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al., 2017, section 3.5): ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def _norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm; a channels-last input is normalised in float32. Under bf16 autocast a bf16 NHWC
    tensor takes PyTorch's mixed-dtype NHWC kernel, which made GroupNorm a third of a training
    step (``benchmarks/diffusion_speed.py --profile``); the float32 NHWC kernel is ~2x faster. For
    NCHW inputs the bf16 kernel is the faster one and is kept (float32 inputs: no change)."""
    if x.dtype != torch.float32 and x.dim() == 4 and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last):
        return norm(x.float())
    return norm(x)


def _norm_silu(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
               shift: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(norm(x) * (1 + scale) + shift)`` (``scale``, ``shift``: ``(B, C, 1, 1)``, or
    none): one native kernel for a channels-last float32 ``x`` where this machine measured it
    faster (:func:`aigc.models.native.group_norm_silu`, ``AIGC_GROUPNORM_ROUTE``), else
    ATen's operations as written here."""
    if native.group_norm_silu_takes(x, norm):
        return native.group_norm_silu(x, norm, scale, shift)
    h = _norm(norm, x)
    if scale is not None:
        h = h * (1 + scale) + shift
    return F.silu(h)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then norm modulated by the embedding (scale-shift), SiLU-dropout-conv."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (ADM)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C_in, H, W); ``emb`` (B, E) already through SiLU (done once per UNet call)."""
        h = self.conv1(_norm_silu(self.norm1, x))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1)
        h = self.conv2(self.dropout(_norm_silu(self.norm2, h, scale, shift)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        # Channels of qkv are (3, heads, d). Going through (B, HW, 3C) costs nothing for a
        # channels-last tensor (its memory order), and hands SDPA the (B, heads, HW, d) views.
        qkv = self.qkv(_norm(self.norm, x)).permute(0, 2, 3, 1).reshape(b, h * w, 3, self.heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, HW, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d)) v
        out = out.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W), NHWC order
        if not x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous()
        return x + self.proj(out)


class Block(nn.Module):
    """A ResBlock, optionally followed by self-attention."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, dropout)
        self.attn = Attention(c_out) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class UNet(nn.Module):
    """Noise-prediction UNet conditioned on a timestep and a class or sentence embedding.

    Args:
        image_channels: channels of the images (1 grey, 3 RGB).
        channels: widths per resolution level; each level after the first halves H and W.
        num_res_blocks: ResBlocks per level on the way down (``+1`` on the way up).
        attention_levels: indices into ``channels`` whose blocks add self-attention.
        dropout: dropout inside ResBlocks.
        num_classes: class labels ``0..num_classes-1``; label ``num_classes`` is "no condition".
        text_dim: width of sentence embeddings (0: no text conditioning).
    """

    def __init__(self, *, image_channels: int, channels: tuple[int, ...], num_res_blocks: int,
                 attention_levels: tuple[int, ...], dropout: float, num_classes: int,
                 text_dim: int):
        super().__init__()
        c0 = channels[0]
        emb_dim = 4 * c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Row ``num_classes`` is the learned null condition used by classifier-free guidance.
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.text_proj = (
            nn.Sequential(nn.Linear(text_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if text_dim else None
        )
        self.conv_in = Conv2d(image_channels, c0, 3, padding=1)

        # copied in aigc.models.latent_diffusion.CrossAttentionUNet: change both together
        self.down = nn.ModuleList()
        skip_widths, ch = [c0], c0
        for level, width in enumerate(channels):
            for _ in range(num_res_blocks):
                self.down.append(Block(ch, width, emb_dim, dropout, level in attention_levels))
                ch = width
                skip_widths.append(ch)
            if level < len(channels) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # halves H, W
                skip_widths.append(ch)
        self.mid = nn.ModuleList([
            Block(ch, ch, emb_dim, dropout, attention=True), Block(ch, ch, emb_dim, dropout, False),
        ])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(channels))):
            for i in range(num_res_blocks + 1):
                attention = level in attention_levels
                self.up.append(Block(ch + skip_widths.pop(), width, emb_dim, dropout, attention))
                ch = width
                if level > 0 and i == num_res_blocks:
                    self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                 Conv2d(ch, ch, 3, padding=1)))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = Conv2d(ch, image_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def condition(self, labels: torch.Tensor, text: torch.Tensor | None = None,
                  text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The condition vector ``c``: ``(B, emb_dim)``.

        Args:
            labels: ``(B,)`` class labels; ``num_classes`` means none (the null embedding).
            text: ``(B, text_dim)`` sentence embeddings, or ``None``.
            text_mask: ``(B,)`` bool, rows whose condition is the text instead of the label.
        """
        c = self.class_emb(labels)
        if text is not None and text_mask is not None:
            if self.text_proj is None:
                raise ValueError("this UNet was built without text conditioning (text_dim=0)")
            c = torch.where(text_mask[:, None], self.text_proj(text.to(c.dtype)), c)
        return c

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) noisy images, ``t`` (B,) timesteps, ``c`` (B, E) from
        :meth:`condition`; returns the prediction (epsilon or v), ``(B, C, H, W)``."""
        emb = self.time_mlp(timestep_embedding(t, self.conv_in.out_channels).to(c.dtype)) + c
        emb = F.silu(emb)  # every ResBlock's embedding projection starts with SiLU: apply it once
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, Block) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            if isinstance(layer, Block):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(_norm_silu(self.norm_out, h))
