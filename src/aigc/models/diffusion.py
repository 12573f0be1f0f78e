"""Denoising diffusion (Ho et al., 2020) with class and text conditioning and classifier-free
guidance (Ho & Salimans, 2022), readable top to bottom.

Forward process, with a = alpha_bar_t = prod_{s<=t} (1 - beta_s):

    q(x_t | x_0) = N(sqrt(a) x_0, (1 - a) I)      x_t = sqrt(a) x_0 + sqrt(1 - a) eps

Noise schedules: ``linear`` beta from 1e-4 to 0.02 (Ho et al.) or ``cosine``
a(t) = f(t) / f(0), f(t) = cos^2(((t / T + s) / (1 + s)) * pi / 2), s = 0.008 (Nichol & Dhariwal,
2021, eq. 17). The network predicts ``epsilon`` (loss ||eps - eps_hat||^2, Ho et al. eq. 14) or
``v = sqrt(a) eps - sqrt(1 - a) x_0`` (Salimans & Ho, 2022).

Conditioning: each training image is conditioned on its class label, or (with probability
``text_prob``) on the MiniLM embedding of a random templated caption of its class, or (with
probability ``cond_drop_prob``) on nothing - the null condition that classifier-free guidance
needs. At sampling, guidance scale w mixes the two predictions:

    out = out_uncond + w * (out_cond - out_uncond)                  (Ho & Salimans, eq. 6)

Images are scaled to [-1, 1] inside the model; batches and samples are in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from aigc.config import check_positive
from aigc.errors import ConfigError
from aigc.models.pretrained import MINILM_DIM, embed_sentences
from aigc.models.samplers._common import noise_like
from aigc.models.unet import UNet


@dataclass(frozen=True)
class DiffusionConfig:
    image_size: int = 28
    image_channels: int = 1
    channels: tuple[int, ...] = (32, 64, 64)  # UNet widths; each level after the first halves H, W
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)  # levels (indices into channels) with self-attention
    dropout: float = 0.0
    num_classes: int = 0  # 0: no class conditioning
    text_conditioning: bool = False  # condition on MiniLM sentence embeddings of captions
    cond_drop_prob: float = 0.1  # training examples with the null condition (for guidance)
    text_prob: float = 0.5  # of the conditioned examples, the share conditioned on a caption
    # Weight of the alignment loss ||text_proj(caption) - class_emb(label)||^2 (see
    # `text_alignment_loss`); 0 leaves the text path to the denoising loss alone.
    text_align_weight: float = 0.0
    text_noise: float = 0.0  # std of Gaussian noise on unit-norm caption embeddings in training
    # How prompts become embeddings: "minilm" (as typed) or "minilm-zh-gloss" (Chinese class
    # words MiniLM cannot read are glossed into English first; see pretrained.gloss_for_minilm).
    text_encoder: Literal["minilm", "minilm-zh-gloss"] = "minilm"
    schedule: Literal["linear", "cosine"] = "cosine"
    prediction: Literal["epsilon", "v"] = "epsilon"
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        check_positive(self, "image_size", "image_channels", "num_res_blocks",
                       "num_train_timesteps")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(f"channels must be positive widths, got {self.channels}")
        bad = [i for i in self.attention_levels if not 0 <= i < len(self.channels)]
        if bad:
            raise ConfigError(f"attention_levels {bad} are outside 0..{len(self.channels) - 1} "
                              f"(one index per entry of channels={self.channels})")
        factor = 2 ** (len(self.channels) - 1)
        if self.image_size % factor:
            raise ConfigError(f"image_size={self.image_size} must be divisible by "
                              f"2**(len(channels)-1)={factor}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        if self.text_align_weight < 0 or self.text_noise < 0:
            raise ConfigError("text_align_weight and text_noise must be >= 0, got "
                              f"{self.text_align_weight} and {self.text_noise}")
        for name in ("dropout", "cond_drop_prob", "text_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.num_train_timesteps < 2:
            raise ConfigError(f"num_train_timesteps must be >= 2, got {self.num_train_timesteps}")


def noise_schedule(kind: str, timesteps: int) -> torch.Tensor:
    """alpha_bar_t for t = 0..T-1 (float64)."""
    if kind == "linear":
        # Ho et al.'s 1e-4..0.02 over 1000 steps, rescaled so other T keep the same total noise.
        scale = 1000 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)  # clipped as in Nichol & Dhariwal
        return torch.cumprod(1.0 - betas, dim=0)
    raise ConfigError(f"schedule must be 'linear' or 'cosine', got {kind!r}")


class Diffusion(nn.Module):
    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        self.unet = UNet(
            image_channels=cfg.image_channels, channels=cfg.channels,
            num_res_blocks=cfg.num_res_blocks, attention_levels=cfg.attention_levels,
            dropout=cfg.dropout, num_classes=cfg.num_classes,
            text_dim=MINILM_DIM if cfg.text_conditioning else 0,
        )
        # Derived from the config, so not stored in checkpoints.
        self.register_buffer("alphas_cumprod",
                             noise_schedule(cfg.schedule, cfg.num_train_timesteps), persistent=False)

    @property
    def null_label(self) -> int:
        return self.cfg.num_classes

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = batch["image"] * 2 - 1  # (B, C, H, W) in [-1, 1]
        b, device = x0.shape[0], x0.device
        t = torch.randint(0, self.cfg.num_train_timesteps, (b,), device=device)
        eps = torch.randn_like(x0)
        a = self.alphas_cumprod[t].float()[:, None, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps  # q(x_t | x_0)
        target = eps if self.cfg.prediction == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0

        # The condition of each example: class, caption, or null (probability cond_drop_prob).
        labels = torch.full((b,), self.null_label, dtype=torch.long, device=device)
        if self.cfg.num_classes and "label" in batch:
            labels = batch["label"].clone()
        text, text_mask = None, None
        if self.cfg.text_conditioning:
            if "text" not in batch:
                raise ConfigError("text_conditioning=True needs batches with caption embeddings "
                                  "('text'); train on a labelled dataset")
            text = noisy_embeddings(batch["text"], self.cfg.text_noise)
            share = self.cfg.text_prob if self.cfg.num_classes else 1.0
            text_mask = torch.rand(b, device=device) < share
        drop = torch.rand(b, device=device) < self.cfg.cond_drop_prob
        labels = labels.masked_fill(drop, self.null_label)
        if text_mask is not None:
            text_mask = text_mask & ~drop
        pred = self.unet(x_t, t, self.unet.condition(labels, text, text_mask))
        loss = F.mse_loss(pred.float(), target)
        if text is not None and self.cfg.text_align_weight > 0 and "label" in batch:
            loss = loss + self.cfg.text_align_weight * text_alignment_loss(
                self.unet, text, batch["label"])
        return loss

    # ------------------------------------------------------------------ sampling
    def _guided(self, x: torch.Tensor, t: int, cond: torch.Tensor | None, null: torch.Tensor,
                guidance: float) -> torch.Tensor:
        """The network output at ``t`` with classifier-free guidance (Ho & Salimans, eq. 6)."""
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        if cond is None:
            return self.unet(x, tt, null)
        if guidance == 1.0:
            return self.unet(x, tt, cond)
        out_cond, out_uncond = self.unet(torch.cat([x, x]), torch.cat([tt, tt]),
                                         torch.cat([cond, null])).chunk(2)
        return out_uncond + guidance * (out_cond - out_uncond)

    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """``(len(prompts), 384)`` embeddings of prompts, read the way this model was trained."""
        if not self.cfg.text_conditioning:
            raise ConfigError("this model was trained without text conditioning; a prompt cannot "
                              "be used (use a class instead, if it has classes)")
        return embed_sentences(prompt_texts(prompts, self.cfg.text_encoder))

    # sample(n, generator=[g_1, ..., g_n]) draws image i from g_i alone, so requests with
    # different seeds share one batch and still give the images each seed gives alone.
    per_image_generators = True

    @property
    def samplers(self) -> tuple[str, ...]:
        """The names ``sample(sampler=...)`` accepts."""
        from aigc.models.samplers import SAMPLERS

        return tuple(SAMPLERS)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | list[torch.Generator] | None = None,
               labels: torch.Tensor | None = None, text: torch.Tensor | None = None,
               prompt: list[str] | None = None,
               sampler: str = "dpm-solver++", steps: int = 20, guidance: float = 3.0,
               eta: float = 0.0, size: int | None = None,
               progress: bool | Callable[[float], None] = False) -> torch.Tensor:
        """Draw ``n`` images, ``(n, C, H, W)`` in [0, 1].

        Args:
            generator: the CPU generator for the initial noise and any sampler noise; or a list
                of ``n`` generators, one per image, which makes image i exactly the image
                ``sample(1, generator=generator[i])`` draws, whatever the batch (the studio
                batches requests this way).
            labels: ``(n,)`` class labels, or ``None``.
            text: ``(n, 384)`` MiniLM embeddings of prompts, or ``None`` (not with ``labels``).
            prompt: ``n`` prompts (embedded with :meth:`embed_prompts`), instead of ``text``.
            sampler: ``ddpm``, ``ddim`` or ``dpm-solver++``.
            steps: network evaluations (``2 x`` with guidance), 1..num_train_timesteps.
            guidance: classifier-free guidance scale w (1: plain conditional, 0: unconditional).
            eta: DDIM's noise level (0 deterministic).
            size: image side (default the trained size; the UNet is fully convolutional).
            progress: ``True`` for a progress bar; a callable gets the fraction done after
                each step (it may raise to stop sampling).
        """
        from aigc.models.samplers import make_sampler

        device = self.alphas_cumprod.device
        dtype = next(self.parameters()).dtype
        if prompt is not None:
            if text is not None:
                raise ConfigError("give prompt strings or their embeddings, not both")
            if isinstance(prompt, str):
                prompt = [prompt] * n
            if len(prompt) != n:
                raise ConfigError(f"{len(prompt)} prompts for {n} images")
            text = self.embed_prompts(list(prompt))
        if labels is not None and text is not None:
            raise ConfigError("condition on a class or on a prompt, not both")
        if text is not None and not self.cfg.text_conditioning:
            raise ConfigError("this model was trained without text conditioning; a prompt cannot "
                              "be used (use a class instead, if it has classes)")
        if labels is not None and not self.cfg.num_classes:
            raise ConfigError("this model was trained without class labels; --class is not available")
        size = size or self.cfg.image_size
        null = self.unet.condition(torch.full((n,), self.null_label, device=device))
        cond = None
        if labels is not None:
            cond = self.unet.condition(labels.to(device))
        elif text is not None:
            cond = self.unet.condition(torch.full((n,), self.null_label, device=device),
                                       text.to(device, dtype), torch.ones(n, dtype=torch.bool,
                                                                          device=device))
        schedule = make_sampler(sampler, self.alphas_cumprod, self.cfg.prediction, eta=eta)
        schedule.set_timesteps(steps)
        if isinstance(generator, list) and len(generator) != n:
            raise ConfigError(f"generator: a list needs one generator per image ({n}), "
                              f"got {len(generator)}")
        shape = (n, self.cfg.image_channels, size, size)
        x = noise_like(torch.empty(shape, device=device, dtype=dtype), generator)  # x_T ~ N(0, I)
        timesteps = schedule.timesteps
        report = progress if callable(progress) else None
        if progress is True:
            from tqdm.auto import tqdm

            timesteps = tqdm(timesteps, desc=f"{sampler} {steps} steps", leave=False)
        for i, t in enumerate(timesteps):  # the whole sampling loop: network output -> step
            out = self._guided(x, t, cond, null, guidance)
            x = schedule.step(out, t, x, generator=generator)
            if report is not None:
                report((i + 1) / len(schedule.timesteps))
        return ((x.float() + 1) / 2).clamp(0, 1)


def noisy_embeddings(text: torch.Tensor, std: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Unit-norm sentence embeddings moved by Gaussian noise of per-dimension std
    ``std / sqrt(dim)`` and renormalised: the text map sees a neighbourhood of each caption, not
    one point, so an unseen paraphrase nearby lands where its class is."""
    if std <= 0:
        return text
    noise = torch.randn(text.shape, generator=generator, dtype=text.dtype, device=text.device)
    return F.normalize(text + noise * (std / math.sqrt(text.shape[-1])), dim=-1)


def text_alignment_loss(unet: UNet, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between each caption's condition vector and its class's, the class
    embedding held fixed. The denoising loss alone teaches the text path slowly (it shares the
    condition slot with the labels and only sees ~25 distinct captions per class); this term
    ties each caption to the condition the network already renders as its class."""
    if unet.text_proj is None:
        raise ConfigError("this model was built without text conditioning")
    target = unet.class_emb(labels).detach()
    return F.mse_loss(unet.text_proj(text.to(target.dtype)).float(), target.float())


def align_text(model: Diffusion, embeddings: torch.Tensor, labels: torch.Tensor, *,
               steps: int = 2000, batch_size: int = 256, lr: float = 1e-3, noise: float = 0.5,
               seed: int = 0, progress: bool = True) -> dict:
    """Fit only the text projection of a trained class- and text-conditional model so that every
    caption embedding (with ``noise``, see :func:`noisy_embeddings`) maps to the condition vector
    of its class; the rest of the network is untouched. Returns a record of what was done,
    including the nearest-class accuracy of the mapped captions before and after (the condition
    vector of a caption compared with the ten class vectors)."""
    if not model.cfg.text_conditioning or not model.cfg.num_classes:
        raise ConfigError("text alignment needs a model trained with classes and text "
                          "conditioning (num_classes > 0, text_conditioning=true)")
    if steps < 1 or batch_size < 1 or lr <= 0 or noise < 0:
        raise ConfigError(f"steps and batch_size must be >= 1, lr > 0 and noise >= 0; got "
                          f"steps={steps}, batch_size={batch_size}, lr={lr}, noise={noise}")
    unet = model.unet
    classes = torch.arange(model.cfg.num_classes)

    @torch.no_grad()
    def nearest_class_accuracy() -> float:
        mapped = unet.text_proj(embeddings)
        dist = torch.cdist(mapped, unet.class_emb(classes))
        return float((dist.argmin(1) == labels).float().mean())

    before = nearest_class_accuracy()
    gen = torch.Generator().manual_seed(seed)
    params = list(unet.text_proj.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    was_training = model.training
    model.train()
    # Under torchrun every process draws the same global batch and noise and takes its slice
    # (aigc.distributed.shard_slice); the mean of the equal-sized slices' gradients is the global
    # batch's, so W processes follow one process's run.
    from aigc.distributed import all_reduce_mean, average_gradients, context, shard_slice

    ctx = context()
    mine = shard_slice(batch_size, ctx.rank, ctx.world_size)
    iterator = range(steps)
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="text alignment", leave=False)
    loss = torch.zeros(())
    for _ in iterator:
        idx = torch.randint(0, len(embeddings), (batch_size,), generator=gen)
        text = noisy_embeddings(embeddings[idx], noise, gen)
        loss = text_alignment_loss(unet, text[mine], labels[idx][mine])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(params)
        opt.step()
    loss = all_reduce_mean(loss.detach().clone())  # the global batch's loss (equal slices)
    model.train(was_training)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "noise": noise, "seed": seed,
            "captions": len(embeddings), "final_loss": round(loss.item(), 6),
            "nearest_class_accuracy_before": round(before, 4),
            "nearest_class_accuracy_after": round(nearest_class_accuracy(), 4)}


CONFIG_CLASS = DiffusionConfig
MODEL_CLASS = Diffusion

# ------------------------------------------------------------------ hooks used by `aigc train`
DATA_KIND = "images"
# channels_last: 1.11x faster steps with the same training losses to the last bit over 30 steps
# (benchmarks/channels_last_check.py, Intel Xeon, 1 thread, 2026-11-30; issue #17).
TRAIN_DEFAULTS = {"lr": 1e-3, "batch_size": 64, "steps": 4000, "warmup_steps": 200,
                  "ema_decay": 0.999, "grad_clip": 1.0, "channels_last": True}
# Model-config fields that `aigc train` takes from the dataset (shown by --help).
MODEL_FROM_DATA = {"image_size": "the dataset's image size",
                   "image_channels": "the dataset's channels (1 grey, 3 colour)",
                   "num_classes": "the dataset's class count (0 when unlabelled)",
                   "text_conditioning": "True when the dataset is labelled, else False",
                   "text_encoder": "minilm-zh-gloss when the dataset is labelled, else minilm"}


class CaptionedImages:
    """An image split whose batches also hold ``"text"``: for every image, the MiniLM embedding
    of a random caption of its class (drawn with the global RNG, which the trainer checkpoints,
    so resume stays exact)."""

    def __init__(self, images, embeddings: torch.Tensor, caption_labels: torch.Tensor):
        self.images = images
        self.embeddings = embeddings  # (M, 384), grouped by class
        counts = torch.bincount(caption_labels, minlength=len(images.class_names))
        if (counts == 0).any():
            raise ConfigError("every class needs at least one caption")
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def __len__(self) -> int:
        return len(self.images)

    def get_batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = self.images.get_batch(indices)
        label = batch["label"]
        pick = (torch.rand(len(label)) * self.counts[label]).long()  # uniform within the class
        batch["text"] = self.embeddings[self.starts[label] + pick]
        return batch


def prompt_texts(prompts: list[str], text_encoder: str) -> list[str]:
    """The strings MiniLM embeds for ``prompts`` under a model's ``text_encoder``."""
    if text_encoder == "minilm-zh-gloss":
        from aigc.models.pretrained import gloss_for_minilm

        return [gloss_for_minilm(p) for p in prompts]
    return list(prompts)


def caption_embeddings(name: str, class_names: list[str], text_encoder: str = "minilm-zh-gloss",
                       ) -> tuple[torch.Tensor, torch.Tensor, list]:
    """MiniLM embeddings of the caption bank of a dataset, grouped by class:
    ``(embeddings (M, 384), labels (M,), bank)``."""
    from aigc.data.captions import caption_bank

    bank = caption_bank(name, class_names)
    embeddings = embed_sentences(prompt_texts([caption for caption, _ in bank], text_encoder))
    labels = torch.tensor([label for _, label in bank])
    order = torch.argsort(labels, stable=True)
    return embeddings[order], labels[order], bank


def training_data(name: str):
    """Images plus caption embeddings; class and text conditioning on when the data is labelled."""
    from aigc.data.images import image_training_data

    train, val, meta, defaults = image_training_data(name)
    if train.labels is None:
        return train, val, meta, defaults
    embeddings, labels, bank = caption_embeddings(name, train.class_names)
    meta = {**meta, "captions": len(bank), "caption_example": bank[0][0]}
    defaults = {**defaults, "num_classes": len(train.class_names), "text_conditioning": True,
                "text_encoder": "minilm-zh-gloss"}
    val = CaptionedImages(val, embeddings, labels) if val is not None else None
    return CaptionedImages(train, embeddings, labels), val, meta, defaults


def preview(model: Diffusion, step: int, run_dir) -> None:
    """One row per class (or 64 unconditional samples), DPM-Solver++ 20 steps, fixed seed."""
    from pathlib import Path

    from aigc.media import save_grid

    gen = torch.Generator().manual_seed(0)
    if model.cfg.num_classes:
        k = model.cfg.num_classes
        labels = torch.arange(k).repeat_interleave(8)
        images = model.sample(len(labels), generator=gen, labels=labels, guidance=3.0)
    else:
        images = model.sample(64, generator=gen, guidance=1.0)
    save_grid(Path(run_dir) / "samples" / f"step-{step:08d}.png", images, nrow=8,
              record={"kind": "preview", "step": step})
