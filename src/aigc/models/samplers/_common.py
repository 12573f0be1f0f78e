"""Pieces every sampler shares: timestep spacing and turning a network output into (x_0, eps)."""

from __future__ import annotations

import torch

from aigc.errors import ConfigError


def trailing_timesteps(num_train_timesteps: int, n: int) -> list[int]:
    """``n`` timesteps, descending, that start at ``T - 1`` ("trailing" spacing, Lin et al., 2024,
    table 2): the first step sees pure noise even with few steps."""
    if not 1 <= n <= num_train_timesteps:
        raise ConfigError(f"steps must be between 1 and {num_train_timesteps}, got {n}")
    step = num_train_timesteps / n
    return [round(num_train_timesteps - i * step) - 1 for i in range(n)]


def x0_and_eps(model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: float,
               prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted clean image and noise from the network output.

    epsilon:  x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a)                (Ho et al., 2020, eq. 15)
    v:        x_0 = sqrt(a) x_t - sqrt(1 - a) v,  eps = sqrt(1 - a) x_t + sqrt(a) v
              (Salimans & Ho, 2022, section 4), with a = alpha_bar_t.
    """
    sqrt_a, sqrt_1ma = alpha_bar ** 0.5, (1.0 - alpha_bar) ** 0.5
    if prediction == "epsilon":
        eps = model_output
        x0 = (x_t - sqrt_1ma * eps) / sqrt_a
    elif prediction == "v":
        x0 = sqrt_a * x_t - sqrt_1ma * model_output
        eps = sqrt_1ma * x_t + sqrt_a * model_output
    else:
        raise ConfigError(f"prediction must be 'epsilon' or 'v', got {prediction!r}")
    return x0, eps


def noise_like(x: torch.Tensor,
               generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise drawn on the CPU (so a seed gives the same images on any device).

    With a list of generators, one per image, row i is drawn from generator i alone, so an
    image's noise does not depend on the batch it is drawn in.
    """
    if isinstance(generator, list):
        rows = [torch.randn((1, *x.shape[1:]), generator=g, dtype=torch.float32)
                for g in generator]
        return torch.cat(rows).to(x.device, x.dtype)
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
