"""Convolutional variational autoencoder (Kingma & Welling, 2014), readable top to bottom.

    encoder q(z|x) = N(mu(x), diag sigma(x)^2)      prior p(z) = N(0, I)
    decoder p(x|z) = Bernoulli(sigmoid(logits(z)))  or  N(mu(z), sigma^2) with one learned sigma

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))            (nats; we minimise -ELBO)
    KL      = 1/2 * sum(mu^2 + sigma^2 - 1 - log sigma^2)     (closed form for Gaussians)

Batches are ``{"image": (B, C, H, W) in [0, 1]}``. With the Bernoulli likelihood and
``binarize=True`` each image is re-binarised at every step (``x ~ Bernoulli(pixel)``): the
"dynamically binarised MNIST" protocol under which the literature reports test -ELBO in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from aigc.config import check_positive
from aigc.errors import ConfigError


@dataclass(frozen=True)
class VAEConfig:
    image_size: int = 28
    image_channels: int = 1
    channels: tuple[int, ...] = (32, 64)  # conv widths; each level halves the resolution
    hidden: int = 512
    latent_dim: int = 32
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    binarize: bool = True  # dynamic binarisation of targets (Bernoulli likelihood only)
    kl_warmup_steps: int = 0  # KL weight rises linearly from 0 to 1 over these steps

    def __post_init__(self) -> None:
        check_positive(self, "image_size", "image_channels", "hidden", "latent_dim")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(f"channels must be positive widths, got {self.channels}")
        factor = 2 ** len(self.channels)
        if self.image_size % factor:
            raise ConfigError(
                f"image_size={self.image_size} must be divisible by 2**len(channels)={factor}"
            )
        if self.kl_warmup_steps < 0:
            raise ConfigError(f"kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        layers, c_in = [], cfg.image_channels
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.SiLU()]
            c_in = c
        self.conv = nn.Sequential(*layers)
        side = cfg.image_size // 2 ** len(cfg.channels)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * side * side, cfg.hidden), nn.SiLU(),
            nn.Linear(cfg.hidden, 2 * cfg.latent_dim),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.fc(self.conv(x)).chunk(2, dim=1)  # (B, Z) each
        return mu, logvar.clamp(-30.0, 20.0)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.side = cfg.image_size // 2 ** len(cfg.channels)
        self.c0 = cfg.channels[-1]
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim, cfg.hidden), nn.SiLU(),
            nn.Linear(cfg.hidden, self.c0 * self.side * self.side), nn.SiLU(),
        )
        layers = []
        widths = list(reversed(cfg.channels))  # e.g. (64, 32)
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.SiLU()]
        layers += [nn.ConvTranspose2d(widths[-1], cfg.image_channels, 4, stride=2, padding=1)]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.c0, self.side, self.side)
        return self.deconv(h)  # (B, C, H, W): Bernoulli logits or Gaussian means


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # log sigma of the Gaussian likelihood, shared by all pixels (unused for Bernoulli).
        self.log_sigma = nn.Parameter(torch.zeros(()))
        # Training steps seen, for the KL warm-up; a buffer so it is checkpointed and resumed.
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ the maths
    def _targets(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.likelihood == "bernoulli" and self.cfg.binarize:
            return torch.bernoulli(x)
        return x

    def _log_likelihood(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels, per example: (B,)."""
        if self.cfg.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        log_sigma = self.log_sigma.clamp(-6.0, 2.0)
        z = (x - out) / log_sigma.exp()
        return (-0.5 * z.pow(2) - log_sigma - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    @staticmethod
    def kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mu, sigma^2) || N(0, I)) per example: (B,)."""
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)

    def negative_elbo(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example ``(-ELBO, -log p(x|z), KL)`` in nats for targets ``x`` (already binarised
        where the protocol asks), with one reparameterised sample ``z = mu + sigma * eps``."""
        mu, logvar = self.encoder(x)
        z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        rec = -self._log_likelihood(self.decoder(z), x)
        kl = self.kl(mu, logvar)
        return rec + kl, rec, kl

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self._targets(batch["image"])
        _, rec, kl = self.negative_elbo(x)
        beta = 1.0
        if self.training:
            if self.cfg.kl_warmup_steps:
                beta = min(1.0, float(self.steps_seen) / self.cfg.kl_warmup_steps)
            self.steps_seen += 1
        return (rec + beta * kl).mean()

    # ------------------------------------------------------------------ inference
    def _mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.cfg.likelihood == "bernoulli" else out.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """Decode ``n`` draws from the prior; returns the decoder means, ``(n, C, H, W)`` in [0, 1]."""
        device = self.log_sigma.device
        z = torch.randn(n, self.cfg.latent_dim, generator=generator, device="cpu").to(device)
        return self._mean(self.decoder(z * temperature))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._mean(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder mean at the posterior mean: ``(B, C, H, W)`` in [0, 1]."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def interpolate(self, x0: torch.Tensor, x1: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode ``steps`` points on the line between the posterior means of two images."""
        z0, z1 = self.encode(x0[None]), self.encode(x1[None])
        w = torch.linspace(0, 1, steps, device=z0.device)[:, None]
        return self.decode(z0 * (1 - w) + z1 * w)


CONFIG_CLASS = VAEConfig
MODEL_CLASS = VAE

# ------------------------------------------------------------------ hooks used by `aigc train`
DATA_KIND = "images"
TRAIN_DEFAULTS = {"lr": 2e-3, "batch_size": 128, "steps": 4000, "warmup_steps": 200}
# Model-config fields that `aigc train` takes from the dataset (shown by --help).
MODEL_FROM_DATA = {"image_size": "the dataset's image size",
                   "image_channels": "the dataset's channels (1 grey, 3 colour)"}


def training_data(name: str):
    from aigc.data.images import image_training_data

    return image_training_data(name)


def preview(model: VAE, step: int, run_dir) -> None:
    """A grid of 64 prior samples at ``run_dir/samples/step-N.png`` (fixed seed across steps)."""
    from pathlib import Path

    from aigc.media import save_grid

    images = model.sample(64, generator=torch.Generator().manual_seed(0))
    save_grid(Path(run_dir) / "samples" / f"step-{step:08d}.png", images, nrow=8,
              record={"kind": "preview", "step": step})
