"""Latent diffusion (Rombach et al., 2022: the Stable Diffusion recipe) at aigc's scale, readable
top to bottom.

    image x ──AutoencoderKL encoder (frozen)──► z = latent / latent_std   (B, c_z, h, w)
    z_t = sqrt(a) z + sqrt(1 - a) eps ──UNet(z_t, t, context)──► eps_hat (or v_hat)
    context: per-token text embeddings (B, T, D) that every attention level reads by
             cross-attention (softmax(Q(x) K(c)^T / sqrt(d)) V(c), Rombach et al., eq. 3)

Sampling runs a sampler of :mod:`aigc.models.samplers` in the latent (with the x_0 clipping to
[-1, 1] switched off: latents are not bounded), then decodes with the autoencoder.

Text: by default the frozen English MiniLM (all-MiniLM-L6-v2) reads each prompt, and its last
hidden states per token, ``max_tokens`` of them, are the context. Any other encoder plugs in by
passing its embeddings (``text``, ``text_mask``) to :meth:`LatentDiffusion.sample` and by giving
batches a ``"text"`` / ``"text_mask"`` pair; ``text_encoder="none"`` records that the model takes
embeddings only. Classifier-free guidance (Ho & Salimans, 2022): in training a caption is
replaced by a learned null context with probability ``cond_drop_prob``; at sampling

    out = out_uncond + w * (out_cond - out_uncond)

The autoencoder's weights live inside this model (frozen), so one checkpoint rebuilds the whole
pipeline; ``aigc train latent-diffusion --autoencoder RUN`` copies them from a trained
``autoencoder-kl`` run and measures ``latent_std`` on the training images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from aigc.config import check_positive
from aigc.errors import ConfigError
from aigc.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig, latent_std
from aigc.models.diffusion import noise_schedule
from aigc.models.layers import Conv2d
from aigc.models.pretrained import MINILM_DIM
from aigc.models.samplers._common import noise_like
from aigc.models.text_zh import ZhTextEncoder, has_cjk
from aigc.models.unet import Attention, ResBlock, _groups, _norm, _norm_silu, timestep_embedding

# How a prompt reaches the UNet: "tokens", MiniLM's per-token states (the default for English);
# "sentence", one sentence token (English: the unit mean of those states; Chinese: the bundled
# encoder's vector, the only way a Chinese prompt is read); "auto", tokens for English and the
# sentence token for Chinese. Records store the route that ran, never "auto".
TEXT_ROUTES = ("auto", "tokens", "sentence")
ATTACH_HINT = ("attach one with `python -m aigc.models.latent_diffusion attach-zh MODEL OUT "
               "--scorer starter:clip-scorer-emoji` (see docs/latent-diffusion.md)")


@dataclass(frozen=True)
class LatentDiffusionConfig:
    image_size: int = 64
    image_channels: int = 3
    # The first stage. `aigc train` copies these from the --autoencoder checkpoint.
    autoencoder: str = ""  # the autoencoder-kl checkpoint the run started from (lineage)
    ae_channels: tuple[int, ...] = (32, 64, 128)
    ae_num_res_blocks: int = 1
    latent_channels: int = 4
    latent_std: float = 0.0  # std of the autoencoder's latents; 0: measure on the training data
    # The denoiser (in latent space).
    channels: tuple[int, ...] = (64, 128)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (1,)  # levels with self- and cross-attention
    dropout: float = 0.0
    # Text.
    text_encoder: Literal["minilm", "none"] = "minilm"  # none: precomputed embeddings only
    text_dim: int = MINILM_DIM
    max_tokens: int = 16
    cond_drop_prob: float = 0.1
    # Sentence-token conditioning: this share of training examples sees one token, the unit
    # mean of its caption's token states times ``sentence_scale``, instead of the tokens. That
    # is how a sentence encoder's vector (e.g. the distilled Chinese encoder's, which lands in
    # MiniLM's sentence space) conditions the model. 0: tokens only.
    sentence_prob: float = 0.0
    sentence_scale: float = 0.0  # mean norm of a real token state; 0: measure it (when used)
    # A bundled Chinese encoder (aigc.models.text_zh.ZhTextEncoder, distilled into MiniLM's
    # sentence space), copied in after training by :func:`attach_zh`: a Chinese prompt becomes
    # one sentence token. zh_buckets 0: none bundled (every checkpoint older than this field).
    zh_buckets: int = 0
    zh_dim: int = 64
    zh_hidden: int = 256
    zh_source: str = ""  # SHA-256 of the clip-scorer file the encoder was copied from
    # Noise.
    schedule: Literal["linear", "cosine"] = "linear"
    prediction: Literal["epsilon", "v"] = "epsilon"
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        check_positive(self, "image_size", "image_channels", "ae_num_res_blocks",
                       "latent_channels", "num_res_blocks", "text_dim", "max_tokens")
        for name in ("ae_channels", "channels"):
            widths = getattr(self, name)
            if not widths or any(c <= 0 for c in widths):
                raise ConfigError(f"{name} must be positive widths, got {widths}")
        bad = [i for i in self.attention_levels if not 0 <= i < len(self.channels)]
        if bad:
            raise ConfigError(f"attention_levels {bad} are outside 0..{len(self.channels) - 1} "
                              f"(one index per entry of channels={self.channels})")
        factor = 2 ** (len(self.ae_channels) - 1) * 2 ** (len(self.channels) - 1)
        if self.image_size % factor:
            raise ConfigError(f"image_size={self.image_size} must be divisible by "
                              f"2**(len(ae_channels)-1) * 2**(len(channels)-1) = {factor}")
        if self.latent_std < 0:
            raise ConfigError(f"latent_std must be >= 0 (0: measure it), got {self.latent_std}")
        if self.sentence_scale < 0:
            raise ConfigError(f"sentence_scale must be >= 0 (0: measure it), "
                              f"got {self.sentence_scale}")
        for name in ("dropout", "cond_drop_prob", "sentence_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.text_encoder == "minilm" and self.text_dim != MINILM_DIM:
            raise ConfigError(f"text_encoder='minilm' gives {MINILM_DIM}-d tokens, but "
                              f"text_dim={self.text_dim}; use text_encoder='none' for another")
        if self.num_train_timesteps < 2:
            raise ConfigError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.zh_buckets < 0:
            raise ConfigError(f"zh_buckets must be >= 0 (0: no Chinese encoder), "
                              f"got {self.zh_buckets}")
        if self.zh_buckets:
            check_positive(self, "zh_dim", "zh_hidden")
            if not self.sentence_scale or self.text_dim != MINILM_DIM:
                raise ConfigError("a bundled Chinese encoder (zh_buckets > 0) needs a model "
                                  f"trained on sentence tokens ({MINILM_DIM}-d text, "
                                  f"sentence_scale > 0); got text_dim={self.text_dim}, "
                                  f"sentence_scale={self.sentence_scale}")

    def autoencoder_config(self) -> AutoencoderKLConfig:
        return AutoencoderKLConfig(image_size=self.image_size, image_channels=self.image_channels,
                                   channels=self.ae_channels,
                                   num_res_blocks=self.ae_num_res_blocks,
                                   latent_channels=self.latent_channels)


class CrossAttention(nn.Module):
    """Attention of the H*W positions (queries) over the text tokens (keys, values), with a
    residual connection; padded tokens are masked out."""

    def __init__(self, channels: int, context_dim: int, head_dim: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)  # starts as the identity, like the other blocks
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        d = c // self.heads
        q = self.q(_norm(self.norm, x).flatten(2).transpose(1, 2))  # (B, HW, C)
        k, v = self.kv(context.to(q.dtype)).chunk(2, dim=-1)  # (B, T, C) each
        q, k, v = (t.reshape(b, -1, self.heads, d).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Block(nn.Module):
    """A ResBlock, then (at attention levels) self-attention and cross-attention to the text."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, attention: bool,
                 context_dim: int):
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, dropout)
        self.attn = Attention(c_out) if attention else None
        self.cross = CrossAttention(c_out, context_dim) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.cross(self.attn(x), context, mask)
        return x


class CrossAttentionUNet(nn.Module):
    """The UNet of :mod:`aigc.models.unet` (same ResBlocks and self-attention, timestep
    embedding only) with cross-attention to a token sequence at the attention levels and in
    the middle."""

    def __init__(self, *, in_channels: int, channels: tuple[int, ...], num_res_blocks: int,
                 attention_levels: tuple[int, ...], dropout: float, context_dim: int):
        super().__init__()
        c0 = channels[0]
        emb_dim = 4 * c0
        self.time_mlp = nn.Sequential(nn.Linear(c0, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = Conv2d(in_channels, c0, 3, padding=1)

        def block(c_in: int, c_out: int, attention: bool) -> Block:
            return Block(c_in, c_out, emb_dim, dropout, attention, context_dim)

        # same down/mid/up layout as aigc.models.unet.UNet.__init__ (kept as a copy so that each
        # family reads top to bottom and its state-dict names stay its own; change both together)
        self.down = nn.ModuleList()
        skip_widths, ch = [c0], c0
        for level, width in enumerate(channels):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, width, level in attention_levels))
                ch = width
                skip_widths.append(ch)
            if level < len(channels) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_widths.append(ch)
        self.mid = nn.ModuleList([block(ch, ch, True), block(ch, ch, False)])
        self.up = nn.ModuleList()
        for level, width in reversed(list(enumerate(channels))):
            for i in range(num_res_blocks + 1):
                self.up.append(block(ch + skip_widths.pop(), width, level in attention_levels))
                ch = width
                if level > 0 and i == num_res_blocks:
                    self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                 Conv2d(ch, ch, 3, padding=1)))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """``x`` (B, c_z, h, w), ``t`` (B,), ``context`` (B, T, D), ``mask`` (B, T) bool."""
        emb = F.silu(self.time_mlp(timestep_embedding(t, self.conv_in.out_channels).to(x.dtype)))
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb, context, mask) if isinstance(layer, Block) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb, context, mask)
        for layer in self.up:
            if isinstance(layer, Block):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb, context, mask)
            else:
                h = layer(h)
        return self.conv_out(_norm_silu(self.norm_out, h))


class LatentDiffusion(nn.Module):
    def __init__(self, cfg: LatentDiffusionConfig):
        super().__init__()
        self.cfg = cfg
        self.autoencoder = AutoencoderKL(cfg.autoencoder_config()).requires_grad_(False)
        self.unet = CrossAttentionUNet(
            in_channels=cfg.latent_channels, channels=cfg.channels,
            num_res_blocks=cfg.num_res_blocks, attention_levels=cfg.attention_levels,
            dropout=cfg.dropout, context_dim=cfg.text_dim)
        # The null context of classifier-free guidance: one learned token.
        self.null_context = nn.Parameter(torch.zeros(1, 1, cfg.text_dim))
        self.register_buffer("alphas_cumprod",
                             noise_schedule(cfg.schedule, cfg.num_train_timesteps), persistent=False)
        # Built last, so that the other weights draw the same initial values with or without it.
        self.zh = (ZhTextEncoder(buckets=cfg.zh_buckets, dim=cfg.zh_dim, hidden=cfg.zh_hidden)
                   .requires_grad_(False) if cfg.zh_buckets else None)

    @property
    def scale(self) -> float:
        """The divisor that gives latents unit variance (1 until it is measured)."""
        return self.cfg.latent_std or 1.0

    def _null(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        context = self.null_context.expand(b, 1, -1)
        return context, torch.ones(b, 1, dtype=torch.bool, device=context.device)

    def _check_text(self, text: torch.Tensor, mask: torch.Tensor, n: int) -> None:
        if text.dim() != 3 or text.shape[0] != n or text.shape[2] != self.cfg.text_dim:
            raise ConfigError(f"text must be (n={n}, tokens, {self.cfg.text_dim}) embeddings, "
                              f"got {tuple(text.shape)}")
        if mask.shape != text.shape[:2] or mask.dtype != torch.bool:
            raise ConfigError(f"text_mask must be a bool tensor of shape {tuple(text.shape[:2])}, "
                              f"got {mask.dtype} {tuple(mask.shape)}")
        if not mask.any(1).all():
            raise ConfigError("text_mask: every row needs at least one real token")

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "text" not in batch or "text_mask" not in batch:
            raise ConfigError("latent-diffusion batches need 'text' (B, T, D) token embeddings "
                              "and 'text_mask' (B, T); train on a captioned dataset")
        x = batch["image"]
        b, device = x.shape[0], x.device
        z0 = self.autoencoder.encode(x, sample=True) / self.scale  # frozen first stage
        t = torch.randint(0, self.cfg.num_train_timesteps, (b,), device=device)
        eps = torch.randn_like(z0)
        a = self.alphas_cumprod[t].float()[:, None, None, None]
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * eps
        target = eps if self.cfg.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z0
        text, mask = batch["text"].to(z0.dtype), batch["text_mask"]
        self._check_text(text, mask, b)
        first_only = first_token_mask(b, text.shape[1], device)  # one token, the rest masked
        if self.cfg.sentence_prob > 0:
            # Sentence tokens for a share of the examples: one token, then zeros (masked out).
            pooled = self.sentence_tokens(sentence_vectors(text, mask), text.shape[1])
            use = torch.rand(b, device=device) < self.cfg.sentence_prob
            text = torch.where(use[:, None, None], pooled, text)
            mask = torch.where(use[:, None], first_only, mask)
        # Caption dropout: the null context (one token) for a share of the examples.
        drop = torch.rand(b, device=device) < self.cfg.cond_drop_prob
        null = self.null_context.to(text.dtype).expand(b, 1, -1)
        null = F.pad(null, (0, 0, 0, text.shape[1] - 1))  # (B, T, D): the null token, then zeros
        text = torch.where(drop[:, None, None], null, text)
        mask = torch.where(drop[:, None], first_only, mask)
        pred = self.unet(z_t, t, text, mask)
        return F.mse_loss(pred.float(), target)

    # ------------------------------------------------------------------ text
    def sentence_tokens(self, vectors: torch.Tensor, tokens: int = 1) -> torch.Tensor:
        """``(n, tokens, D)`` contexts from ``(n, D)`` sentence vectors: the unit vector times
        ``sentence_scale`` as the first token, zeros after it (pair with a mask whose first
        entry alone is true). Needs a model trained with ``sentence_prob > 0``."""
        if not self.cfg.sentence_scale:
            raise ConfigError("this model was not trained on sentence tokens (sentence_prob 0); "
                              "condition it on token embeddings")
        if vectors.dim() != 2 or vectors.shape[1] != self.cfg.text_dim:
            raise ConfigError(f"sentence vectors must be (n, {self.cfg.text_dim}), "
                              f"got {tuple(vectors.shape)}")
        first = F.normalize(vectors.float(), dim=-1) * self.cfg.sentence_scale
        return F.pad(first[:, None, :], (0, 0, 0, tokens - 1)).to(vectors.dtype)

    def sentence_context(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(text (n, 1, D), mask (n, 1))`` for :meth:`sample` from sentence vectors, e.g.
        MiniLM sentence embeddings or the distilled Chinese encoder's (same space)."""
        text = self.sentence_tokens(vectors, 1)
        return text, torch.ones(text.shape[:2], dtype=torch.bool)

    def prompt_route(self, prompt: str, text_route: str = "auto") -> str:
        """The route ``"tokens"`` or ``"sentence"`` that ``prompt`` takes under ``text_route``
        (see :data:`TEXT_ROUTES`), or a :class:`ConfigError` saying why this model cannot read
        it: an empty prompt, a script other than Latin or Chinese, a Chinese prompt without a
        bundled encoder (or on the token route), the sentence route on a model not trained on
        sentence tokens."""
        import unicodedata

        from aigc.models.pretrained import minilm_unknown_characters

        if text_route not in TEXT_ROUTES:
            raise ConfigError(f"text_route must be one of {', '.join(TEXT_ROUTES)}, "
                              f"got {text_route!r}")
        if self.cfg.text_encoder != "minilm":
            raise ConfigError(f"this model's text_encoder is {self.cfg.text_encoder!r}: pass "
                              "precomputed embeddings (text=, text_mask=), not prompt strings")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"prompt must be a non-empty string, got {prompt!r}")
        other = sorted({c for c in prompt if c.isalpha() and not has_cjk(c)
                        and "LATIN" not in unicodedata.name(c, "")})
        if other:
            raise ConfigError(f"prompt {prompt!r}: letters {''.join(other)!r} are of a script "
                              "this model does not read; write the prompt in English (Latin "
                              "letters) or Chinese (Han characters)")
        if has_cjk(prompt):
            if self.zh is None:
                raise ConfigError(f"prompt {prompt!r}: the English MiniLM encoder cannot read "
                                  "Chinese and this model bundles no Chinese encoder; "
                                  + ATTACH_HINT)
            if text_route == "tokens":
                raise ConfigError(f"prompt {prompt!r}: a Chinese prompt is read by the bundled "
                                  "Chinese encoder as one sentence token; text_route='tokens' "
                                  "is for English prompts (use 'auto' or 'sentence')")
        else:
            unknown = minilm_unknown_characters(prompt)
            if unknown and len(unknown) * 2 >= len(set(prompt.replace(" ", ""))):
                raise ConfigError(
                    f"prompt {prompt!r}: the English MiniLM encoder cannot read "
                    f"{''.join(sorted(unknown))!r}; write it in English or Chinese, or pass "
                    "embeddings from an encoder for that script (text=, text_mask=)")
        route = "sentence" if has_cjk(prompt) or text_route == "sentence" else "tokens"
        if route == "sentence" and not self.cfg.sentence_scale:
            raise ConfigError(f"prompt {prompt!r} needs the sentence route, but this model was "
                              "not trained on sentence tokens (sentence_prob 0)")
        return route

    def embed_prompts(self, prompts: list[str], text_route: str = "auto"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(text (n, max_tokens, D), mask (n, max_tokens))`` of prompts, each read on its
        :meth:`prompt_route`: MiniLM's token states, or one sentence token (zeros after it,
        masked out) from MiniLM's sentence vector (English) or the bundled Chinese encoder.
        Each distinct prompt is encoded alone, so its context does not depend on the other
        prompts of the batch (a studio item replays alone to the same pixels)."""
        from aigc.models.pretrained import embed_tokens

        routes = [self.prompt_route(p, text_route) for p in prompts]
        seen: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        rows = []
        for p, route in zip(prompts, routes, strict=True):
            if (p, route) not in seen:
                if route == "tokens":
                    seen[p, route] = embed_tokens([p], max_length=self.cfg.max_tokens)
                else:
                    if has_cjk(p):
                        vector = self.zh.encode([p]).cpu()  # (1, 384), MiniLM's sentence space
                    else:  # the unit mean of the token states, as in training
                        vector = sentence_vectors(*embed_tokens([p], max_length=self.cfg.max_tokens))
                    seen[p, route] = (self.sentence_tokens(vector, self.cfg.max_tokens),
                                      first_token_mask(1, self.cfg.max_tokens))
            rows.append(seen[p, route])
        return torch.cat([t for t, _ in rows]), torch.cat([m for _, m in rows])

    # ------------------------------------------------------------------ sampling
    def _guided(self, z: torch.Tensor, t: int, text: torch.Tensor, mask: torch.Tensor,
                guidance: float) -> torch.Tensor:
        b = z.shape[0]
        tt = torch.full((b,), t, dtype=torch.long, device=z.device)
        if guidance == 1.0:
            return self.unet(z, tt, text, mask)
        null, null_mask = self._null(b)
        null = F.pad(null.to(text.dtype), (0, 0, 0, text.shape[1] - 1))
        null_mask = F.pad(null_mask, (0, text.shape[1] - 1))
        if guidance == 0.0:
            return self.unet(z, tt, null, null_mask)
        cond, uncond = self.unet(torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([text, null]),
                                 torch.cat([mask, null_mask])).chunk(2)
        return uncond + guidance * (cond - uncond)

    # image i of sample(n, generator=[g_1..g_n]) depends on g_i alone (as in Diffusion).
    per_image_generators = True

    @property
    def samplers(self) -> tuple[str, ...]:
        from aigc.models.samplers import SAMPLERS

        return tuple(SAMPLERS)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | list[torch.Generator] | None = None,
               prompt: str | list[str] | None = None, text: torch.Tensor | None = None,
               text_mask: torch.Tensor | None = None, sampler: str = "dpm-solver++",
               steps: int = 20, guidance: float = 3.0, eta: float = 0.0, size: int | None = None,
               text_route: str = "auto",
               progress: bool | Callable[[float], None] = False) -> torch.Tensor:
        """Draw ``n`` images ``(n, C, H, W)`` in [0, 1].

        Args:
            generator: CPU generator for the initial latent noise and sampler noise, or one
                generator per image.
            prompt: one prompt for all images or ``n`` prompts (English, read by MiniLM; or
                Chinese, read by the bundled encoder), or ``None`` with ``text`` /
                ``text_mask``, or neither (unconditional: the null context).
            text: ``(n, T, text_dim)`` precomputed token embeddings; ``text_mask`` ``(n, T)``
                bool marks real tokens (default all).
            sampler: ``ddpm``, ``ddim`` or ``dpm-solver++`` (x_0 clipping off in the latent).
            steps: network evaluations (``2 x`` with guidance other than 0 and 1).
            guidance: classifier-free guidance scale (1: conditional only, 0: unconditional).
            eta: DDIM's noise level.
            size: image side; must be the trained size (the decoder's latent grid is fixed).
            text_route: how prompts are read, one of :data:`TEXT_ROUTES` (see
                :meth:`prompt_route`); applies to ``prompt`` only.
            progress: ``True`` for a progress bar, or a callable given the fraction done.
        """
        from aigc.models.samplers import make_sampler

        if size is not None and size != self.cfg.image_size:
            raise ConfigError(f"size must be the trained image size {self.cfg.image_size} for a "
                              f"latent-diffusion model, got {size}")
        device = self.alphas_cumprod.device
        dtype = next(self.unet.parameters()).dtype
        if prompt is not None:
            if text is not None or text_mask is not None:
                raise ConfigError("give prompt strings or their embeddings (text=), not both")
            prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
            if len(prompts) != n:
                raise ConfigError(f"{len(prompts)} prompts for {n} images")
            text, text_mask = self.embed_prompts(prompts, text_route)
        elif text_route != "auto":
            raise ConfigError(f"text_route={text_route!r} applies to prompt strings; none given")
        if text is None:
            if text_mask is not None:
                raise ConfigError("text_mask without text")
            text, text_mask = self._null(n)
            guidance = 1.0  # the null context: guidance changes nothing
        elif text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool)
        self._check_text(text, text_mask, n)
        text, text_mask = text.to(device, dtype), text_mask.to(device)
        if isinstance(generator, list) and len(generator) != n:
            raise ConfigError(f"generator: a list needs one generator per image ({n}), "
                              f"got {len(generator)}")
        schedule = make_sampler(sampler, self.alphas_cumprod, self.cfg.prediction, eta=eta,
                                clip_x0=False)
        schedule.set_timesteps(steps)
        side = self.autoencoder.cfg.latent_size
        z = noise_like(torch.empty((n, self.cfg.latent_channels, side, side), device=device,
                                   dtype=dtype), generator)
        timesteps = schedule.timesteps
        report = progress if callable(progress) else None
        if progress is True:
            from tqdm.auto import tqdm

            timesteps = tqdm(timesteps, desc=f"{sampler} {steps} steps", leave=False)
        for i, t in enumerate(timesteps):
            out = self._guided(z, t, text, text_mask, guidance)
            z = schedule.step(out, t, z, generator=generator)
            if report is not None:
                report((i + 1) / len(schedule.timesteps))
        return self.autoencoder.decode(z.float() * self.scale)


CONFIG_CLASS = LatentDiffusionConfig
MODEL_CLASS = LatentDiffusion

# ------------------------------------------------------------------ hooks used by `aigc train`
DATA_KIND = "images"
# channels_last: with aigc's native 3x3 convolutions and GroupNorm + SiLU, the emoji starter's
# 6,000 steps in 1.69x less time, validation loss (EMA) 0.0625 against 0.0627 at the end and
# within 0.0005 at every evaluation, FID 1.89 against 2.07 and the prompt-retrieval card within
# its noise (benchmarks/results/channels_last-latent-diffusion-starter-2026-11-30.txt, Intel
# Xeon, 1 thread; issue #17).
TRAIN_DEFAULTS = {"lr": 2e-4, "batch_size": 32, "steps": 20000, "warmup_steps": 200,
                  "ema_decay": 0.999, "grad_clip": 1.0, "channels_last": True}
MODEL_FROM_DATA = {"image_size": "the dataset's image size",
                   "image_channels": "the dataset's channels (1 grey, 3 colour)",
                   "ae_channels": "the --autoencoder checkpoint's channels",
                   "ae_num_res_blocks": "the --autoencoder checkpoint's num_res_blocks",
                   "latent_channels": "the --autoencoder checkpoint's latent_channels",
                   "latent_std": "measured on the training images (when 0)",
                   "sentence_scale": "measured on the caption tokens (when 0 and "
                                     "sentence_prob > 0)"}


class CaptionedTokens:
    """An image split whose batches also hold token embeddings of one caption per image, drawn
    uniformly among that image's captions with the global RNG (checkpointed by the trainer).

    Args:
        images: the split (``len``, ``get_batch``).
        caption_ids: for image i, ``caption_ids[starts[i] : starts[i] + counts[i]]`` index the
            rows of ``text`` / ``mask``.
        text: ``(M, T, D)`` token embeddings (stored in float16), ``mask`` ``(M, T)`` bool.
    """

    def __init__(self, images, caption_ids: torch.Tensor, starts: torch.Tensor,
                 counts: torch.Tensor, text: torch.Tensor, mask: torch.Tensor):
        if (counts == 0).any():
            raise ConfigError("every image needs at least one caption")
        self.images, self.caption_ids, self.starts, self.counts = images, caption_ids, starts, counts
        self.text, self.mask = text, mask

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = self.images.get_batch(indices)
        pick = (torch.rand(len(indices)) * self.counts[indices]).long()
        rows = self.caption_ids[self.starts[indices] + pick]
        batch["text"] = self.text[rows].float()
        batch["text_mask"] = self.mask[rows]
        return batch


def first_token_mask(n: int, tokens: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, tokens)`` bool, true at the first position only: the mask of a one-token context
    (the null context, a sentence token) padded to ``tokens``."""
    mask = torch.zeros(n, tokens, dtype=torch.bool, device=device)
    mask[:, 0] = True
    return mask


def sentence_vectors(text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unit mean of each row's real token states, ``(n, D)``: MiniLM's sentence embedding
    (all-MiniLM-L6-v2 mean-pools its token states and normalises) of the same text."""
    m = mask[..., None].to(text.dtype)
    return F.normalize((text * m).sum(1) / m.sum(1).clamp_min(1), dim=-1)


def token_norm(text: torch.Tensor, mask: torch.Tensor) -> float:
    """The mean L2 norm of the real token states of ``text`` (``sentence_scale``)."""
    return float(text.float().norm(dim=-1)[mask].mean())


def image_captions(images, name: str) -> list[list[str]]:
    """The English captions of every image of a split: the emoji set's own per-image captions,
    or the caption bank of a labelled dataset's classes (:mod:`aigc.data.captions`)."""
    records = getattr(images, "records", None)
    if records:
        return [list(r.get("captions_en") or [r["name_en"]]) for r in records]
    if images.labels is None:
        raise ConfigError(f"latent-diffusion needs captioned images; {name!r} has no labels or "
                          "captions")
    from aigc.data.captions import caption_bank

    by_class: dict[int, list[str]] = {}
    for caption, label in caption_bank(name, images.class_names):
        if not any("\u4e00" <= c <= "\u9fff" for c in caption):  # English captions only
            by_class.setdefault(label, []).append(caption)
    return [by_class.get(int(y), [images.class_names[int(y)]]) for y in images.labels]


def caption_tokens(splits: list[list[list[str]]], max_tokens: int
                   ) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
    """MiniLM token embeddings of every distinct caption: ``(index, text (M, T, D) float16,
    mask (M, T))``."""
    from aigc.models.pretrained import embed_tokens

    index: dict[str, int] = {}
    for captions in splits:
        for per_image in captions:
            for c in per_image:
                index.setdefault(c, len(index))
    texts, masks = [], []
    ordered = list(index)
    for start in range(0, len(ordered), 256):
        t, m = embed_tokens(ordered[start : start + 256], max_length=max_tokens)
        texts.append(t.half())
        masks.append(m)
    return index, torch.cat(texts), torch.cat(masks)


def _with_captions(images, captions: list[list[str]], index: dict[str, int], text, mask):
    counts = torch.tensor([len(c) for c in captions])
    starts = torch.cumsum(counts, 0) - counts
    ids = torch.tensor([index[c] for per_image in captions for c in per_image], dtype=torch.long)
    return CaptionedTokens(images, ids, starts, counts, text, mask)


def training_data(name: str):
    from aigc.data.images import image_training_data

    return image_training_data(name)


def load_autoencoder(path: str) -> tuple[AutoencoderKL, dict]:
    """The trained first stage at ``path`` (a run, a checkpoint folder or model.safetensors)."""
    from aigc.models import model_from_checkpoint

    if not path:
        raise ConfigError("latent-diffusion needs --autoencoder PATH, a trained autoencoder-kl "
                          "run (`aigc train autoencoder-kl --data ...`)")
    model, ckpt = model_from_checkpoint(path)
    if ckpt.family != "autoencoder-kl":
        raise ConfigError(f"--autoencoder {path} is a {ckpt.family!r} checkpoint, not "
                          "'autoencoder-kl'")
    return model, ckpt.model_config


def bind_data(cfg: LatentDiffusionConfig, train, val, meta):
    """Copy the first stage's shape from ``cfg.autoencoder``, measure ``latent_std`` when it is
    0, and give every image the token embeddings of its captions."""
    ae, ae_cfg = load_autoencoder(cfg.autoencoder)
    if (ae.cfg.image_size, ae.cfg.image_channels) != (cfg.image_size, cfg.image_channels):
        raise ConfigError(f"--autoencoder {cfg.autoencoder} was trained on "
                          f"{ae.cfg.image_channels}x{ae.cfg.image_size}px images, the data are "
                          f"{cfg.image_channels}x{cfg.image_size}px")
    cfg = replace(cfg, ae_channels=tuple(ae.cfg.channels),
                  ae_num_res_blocks=ae.cfg.num_res_blocks, latent_channels=ae.cfg.latent_channels)
    if not cfg.latent_std:
        cfg = replace(cfg, latent_std=round(latent_std(ae, train), 6))
    if cfg.text_encoder != "minilm":
        raise ConfigError("`aigc train latent-diffusion` embeds captions with MiniLM; "
                          "text_encoder='none' models are trained from Python with your own "
                          "'text'/'text_mask' batches")
    name = meta.get("data", "")
    captions = [image_captions(train, name)]
    if val is not None:
        captions.append(image_captions(val, name))
    index, text, mask = caption_tokens(captions, cfg.max_tokens)
    if cfg.sentence_prob > 0 and not cfg.sentence_scale:
        cfg = replace(cfg, sentence_scale=round(token_norm(text, mask), 6))
    train = _with_captions(train, captions[0], index, text, mask)
    if val is not None:
        val = _with_captions(val, captions[1], index, text, mask)
    meta = {**meta, "captions": len(index), "latent_std": cfg.latent_std,
            "sentence_scale": cfg.sentence_scale}
    return cfg, train, val, meta


def after_init(model: LatentDiffusion) -> None:
    """Put the trained first stage's weights into a freshly built model."""
    ae, _ = load_autoencoder(model.cfg.autoencoder)
    model.autoencoder.load_state_dict(ae.state_dict())


def preview(model: LatentDiffusion, step: int, run_dir) -> None:
    """16 images of four fixed prompts, DPM-Solver++ 20 steps, guidance 3, fixed seed."""
    from pathlib import Path

    from aigc.media import save_grid

    prompts = [p for p in ("a red heart", "a smiling face", "a cat", "a yellow star")
               for _ in range(4)]
    images = model.sample(len(prompts), generator=torch.Generator().manual_seed(0),
                          prompt=prompts, guidance=3.0)
    save_grid(Path(run_dir) / "samples" / f"step-{step:08d}.png", images, nrow=4,
              record={"kind": "preview", "step": step, "prompts": prompts[::4]})


# ------------------------------------------------------------------ a bundled Chinese encoder
def attach_zh(model_path: str, out: str, *, scorer: str):
    """Copy the distilled Chinese encoder (``zh.*``) of a finished clip-scorer file into a
    latent-diffusion checkpoint, so that the checkpoint alone reads Chinese prompts.

    The encoder's shape goes into the config (``zh_buckets``, ``zh_dim``, ``zh_hidden``) and
    the scorer file's SHA-256 into ``zh_source`` (lineage); its weights go in under ``zh.``,
    next to the raw and the EMA weights alike. The rest of the checkpoint (weights, step,
    train config, meta) is kept; an encoder already bundled is replaced. Returns the path of
    the new ``model.safetensors``-format file ``out``. Paths only (``python -m
    aigc.models.latent_diffusion attach-zh`` also takes ``starter:NAME``).

    Example:
        >>> attach_zh("runs/ldm-emoji", "out/ldm-zh.safetensors",
        ...           scorer="src/aigc/assets/starters/clip-scorer-emoji.safetensors")  # doctest: +SKIP
    """
    from pathlib import Path

    from aigc.checkpoints import load_checkpoint, save_model_file
    from aigc.config import config_from_dict, config_to_dict
    from aigc.models import model_from_checkpoint
    from aigc.models.clip_scorer import ClipScorerConfig

    ckpt = load_checkpoint(model_path)
    if ckpt.family != "latent-diffusion":
        raise ConfigError(f"{ckpt.path} is a {ckpt.family!r} checkpoint, not 'latent-diffusion'")
    cfg = config_from_dict(LatentDiffusionConfig, ckpt.model_config, where=str(ckpt.path))
    if not cfg.sentence_scale:
        raise ConfigError(f"{ckpt.path} was not trained on sentence tokens (sentence_prob 0), "
                          "so a Chinese encoder's sentence vector cannot condition it; train "
                          "with sentence_prob > 0")
    source = load_checkpoint(scorer)
    if source.family != "clip-scorer":
        raise ConfigError(f"--scorer {scorer}: {source.path} is a {source.family!r} checkpoint, "
                          "not a 'clip-scorer'")
    if "zh_distillation" not in source.meta:
        raise ConfigError(f"--scorer {scorer}: {source.path} has no distilled Chinese encoder "
                          "(no zh_distillation in its meta); export it with "
                          "`python -m aigc.models.clip_scorer finish RUN OUT`")
    scfg = config_from_dict(ClipScorerConfig, source.model_config, where=str(source.path))
    zh = {k: v for k, v in source.weights.items() if k.startswith("zh.")}
    new_cfg = replace(cfg, zh_buckets=scfg.zh_buckets, zh_dim=scfg.zh_dim,
                      zh_hidden=scfg.zh_hidden, zh_source=source.sha256)

    def with_zh(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**{k: v for k, v in weights.items() if not k.startswith("zh.")}, **zh}

    meta = {**ckpt.meta, "zh_encoder": {"source": str(source.path), "sha256": source.sha256,
                                        "distillation": source.meta["zh_distillation"]}}
    out_path = save_model_file(
        Path(out), family="latent-diffusion", model_config=config_to_dict(new_cfg),
        weights=with_zh(ckpt.weights),
        ema_weights=None if ckpt.ema_weights is None else with_zh(ckpt.ema_weights),
        step=ckpt.step, train_config=ckpt.train_config, meta=meta)
    model_from_checkpoint(out_path)  # the file rebuilds its model, encoder included
    return out_path


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from aigc.errors import AigcError
    from aigc.registry import resolve_model  # the command line takes starter:NAME too

    p = argparse.ArgumentParser(prog="python -m aigc.models.latent_diffusion")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attach-zh", help="bundle a distilled Chinese encoder into a checkpoint")
    a.add_argument("model", help="latent-diffusion run, checkpoint folder or file")
    a.add_argument("out", help="the new model file (.safetensors)")
    a.add_argument("--scorer", default="starter:clip-scorer-emoji",
                   help="a finished clip-scorer file whose zh encoder is copied "
                   "(default starter:clip-scorer-emoji)")
    args = p.parse_args(argv)
    try:
        path = attach_zh(resolve_model(args.model), args.out, scorer=resolve_model(args.scorer))
    except AigcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
