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


SPACINGS = ("trailing", "leading", "linspace")


def check_spacing(spacing: str, steps_offset: int) -> None:
    if spacing not in SPACINGS:
        raise ConfigError(f"timestep spacing must be one of {', '.join(SPACINGS)}, "
                          f"got {spacing!r}")
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
        raise ConfigError(f"steps_offset must be an integer >= 0, got {steps_offset!r}")


def spaced_timesteps(num_train_timesteps: int, n: int, spacing: str = "trailing",
                     steps_offset: int = 0, *, extra_point: bool = False,
                     diffusers_rules: bool = False) -> list[int]:
    """``n`` timesteps, descending, placed by ``spacing`` (Lin et al., 2024, table 2), with the
    arithmetic of diffusers' schedulers so that a Stable Diffusion folder samples as its own
    scheduler does (T = ``num_train_timesteps``):

    trailing:  round(T - i T/n) - 1,  i = 0..n-1             (first step at T - 1)
    leading:   k (T // n) + steps_offset,  k = n-1..0         (SD 1.x: steps_offset = 1)
    linspace:  round(k (T - 1) / (n - 1)),  k = n-1..0        (ends on t = 0)

    ``extra_point``: place n + 1 points and drop the smallest (leading: ``T // (n + 1)``
    apart; linspace: over n + 1 points), as diffusers' DPM-Solver does so that its last step
    lands on sigma = 0 from a t > 0. Trailing is the same either way. ``steps_offset`` shifts
    leading only (as in diffusers).

    ``diffusers_rules``: trailing rounded as diffusers' ``numpy.arange(T, 0, -T/n)`` places
    its points (start + i * ((T - T/n) - T)), which differs from ``round(T - i T/n)`` at a
    few step counts (T = 1000: 48, 96, 144...). Our own families keep the plain formula.
    """
    check_spacing(spacing, steps_offset)
    if spacing == "trailing" and not diffusers_rules:
        return trailing_timesteps(num_train_timesteps, n)
    if not 1 <= n <= num_train_timesteps:
        raise ConfigError(f"steps must be between 1 and {num_train_timesteps}, got {n}")
    points = n + 1 if extra_point else n
    if spacing == "trailing":  # diffusers_rules: the points numpy.arange computes
        delta = (num_train_timesteps - num_train_timesteps / n) - num_train_timesteps
        ts = [round(num_train_timesteps + i * delta) - 1 for i in range(n)]
    elif spacing == "leading":
        ratio = num_train_timesteps // points
        ts = [k * ratio + steps_offset for k in range(points - 1, -1, -1)]
    else:  # linspace: points evenly over [0, T - 1], rounded half to even as numpy does
        step = (num_train_timesteps - 1) / (points - 1) if points > 1 else 0.0
        ts = [round(k * step) for k in range(points - 1, -1, -1)]
    ts = ts[:n]
    if ts[0] > num_train_timesteps - 1 or ts[-1] < 0 or any(a <= b for a, b in zip(ts, ts[1:])):
        raise ConfigError(f"{spacing!r} spacing (steps_offset={steps_offset}) gives timesteps "
                          f"outside 0..{num_train_timesteps - 1} or repeated ones for {n} steps; "
                          "use fewer steps")
    return ts


def initial_steps(num_train_timesteps: int, wanted: int, spacing: str, steps_offset: int, *,
                  extra_point: bool = False, diffusers_rules: bool = False) -> int:
    """The most steps up to ``wanted`` that ``spacing`` can place (what a sampler is built with
    before ``set_timesteps``; leading with an offset cannot place all T)."""
    check_spacing(spacing, steps_offset)
    n = min(wanted, num_train_timesteps)
    while n > 1:
        try:
            spaced_timesteps(num_train_timesteps, n, spacing, steps_offset,
                             extra_point=extra_point, diffusers_rules=diffusers_rules)
            return n
        except ConfigError:
            n -= 1
    return 1


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
