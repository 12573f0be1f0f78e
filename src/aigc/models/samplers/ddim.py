"""DDIM (Song, Meng & Ermon, 2021, "Denoising Diffusion Implicit Models").

One step from x_t to x_{t'} (eq. 12), with a = alpha_bar:

    x_0     = predicted clean image                     ("predicted x_0")
    sigma   = eta * sqrt((1 - a_{t'}) / (1 - a_t)) * sqrt(1 - a_t / a_{t'})          (eq. 16)
    x_{t'}  = sqrt(a_{t'}) x_0 + sqrt(1 - a_{t'} - sigma^2) * eps + sigma * z         (eq. 12)

``eta = 0`` is the deterministic DDIM sampler; ``eta = 1`` matches DDPM's variance.

t' is the next visited timestep (``spacing``, :func:`spaced_timesteps`); after the last one,
a_{t'} = 1 (``alpha_to_one=True``: land on x_0) or a_0 (``False``, as Stable Diffusion 1.x's
scheduler: ``set_alpha_to_one=false``). ``diffusers_rules=True`` steps to t' = t - T // n
instead, as diffusers' DDIMScheduler does: the same with "leading" spacing, or trailing when n
divides T; elsewhere t' is not the next visited timestep (linspace: far from it).
"""

from __future__ import annotations

import torch

from aigc.errors import ConfigError
from aigc.models.samplers._common import initial_steps, noise_like, spaced_timesteps, x0_and_eps


class DDIMSampler:
    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str, *, eta: float = 0.0,
                 clip_x0: bool = True, spacing: str = "trailing", steps_offset: int = 0,
                 alpha_to_one: bool = True, diffusers_rules: bool = False):
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"eta must be between 0 and 1, got {eta}")
        self.alphas_cumprod = alphas_cumprod.double().cpu()
        self.prediction, self.eta, self.clip_x0 = prediction, eta, clip_x0
        self.spacing, self.steps_offset = spacing, steps_offset
        self.diffusers_rules = diffusers_rules
        self.final_alpha_bar = 1.0 if alpha_to_one else float(self.alphas_cumprod[0])
        self.num_train_timesteps = len(alphas_cumprod)
        self.set_timesteps(initial_steps(self.num_train_timesteps, 50, spacing, steps_offset,
                                         diffusers_rules=diffusers_rules))

    def set_timesteps(self, n: int) -> None:
        self.timesteps = spaced_timesteps(self.num_train_timesteps, n, self.spacing,
                                          self.steps_offset, diffusers_rules=self.diffusers_rules)
        if self.diffusers_rules:
            stride = self.num_train_timesteps // n
            self._prev = {t: max(-1, t - stride) for t in self.timesteps}
        else:
            self._prev = dict(zip(self.timesteps, self.timesteps[1:] + [-1], strict=True))

    def step(self, model_output: torch.Tensor, t: int, x: torch.Tensor, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        # 1. previous timestep and cumulative alphas (after the last: the final alpha_bar)
        t_prev = self._prev[t]
        a_t = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else self.final_alpha_bar
        # 2. predicted x_0 and the epsilon consistent with it
        x0, eps = x0_and_eps(model_output, x, a_t, self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5
        # 3. sigma_t (eq. 16)
        sigma = self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        # 4. x_{t'} = sqrt(a') x_0 + "direction pointing to x_t" + random noise (eq. 12)
        x_prev = a_prev ** 0.5 * x0 + max(0.0, 1 - a_prev - sigma ** 2) ** 0.5 * eps
        if sigma > 0:
            x_prev = x_prev + sigma * noise_like(x, generator)
        return x_prev
