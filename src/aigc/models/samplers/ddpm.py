"""DDPM ancestral sampling (Ho et al., 2020, "Denoising Diffusion Probabilistic Models").

Each step draws x_{t'} from the Gaussian posterior q(x_{t'} | x_t, x_0) with x_0 predicted by the
network (eq. 6-7), generalised to a stride (t' = the previous visited timestep, not t - 1):

    alpha_t  = a_t / a_{t'}                  (a = alpha_bar; the effective one-step alpha)
    beta_t   = 1 - alpha_t
    mu       = sqrt(a_{t'}) beta_t / (1 - a_t) * x_0  +  sqrt(alpha_t) (1 - a_{t'}) / (1 - a_t) * x_t
    var      = (1 - a_{t'}) / (1 - a_t) * beta_t     (beta-tilde, eq. 7)
    x_{t'}   = mu + sqrt(var) * z,  z ~ N(0, I)   (no noise on the last step)

With ``set_timesteps(T)`` this is exactly the 1000-step sampler of the paper. ``spacing`` and
``steps_offset`` place the visited timesteps (:func:`spaced_timesteps`; ``diffusers_rules``:
trailing rounded as diffusers does); the last step always lands on a = 1, as in diffusers' DDPM.
"""

from __future__ import annotations

import torch

from aigc.models.samplers._common import initial_steps, noise_like, spaced_timesteps, x0_and_eps


class DDPMSampler:
    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str, *, clip_x0: bool = True,
                 spacing: str = "trailing", steps_offset: int = 0,
                 diffusers_rules: bool = False):
        self.alphas_cumprod = alphas_cumprod.double().cpu()
        self.prediction, self.clip_x0 = prediction, clip_x0
        self.spacing, self.steps_offset = spacing, steps_offset
        self.diffusers_rules = diffusers_rules
        self.num_train_timesteps = len(alphas_cumprod)
        self.set_timesteps(initial_steps(self.num_train_timesteps, self.num_train_timesteps,
                                         spacing, steps_offset,
                                         diffusers_rules=diffusers_rules))

    def set_timesteps(self, n: int) -> None:
        self.timesteps = spaced_timesteps(self.num_train_timesteps, n, self.spacing,
                                          self.steps_offset, diffusers_rules=self.diffusers_rules)
        self._prev = dict(zip(self.timesteps, self.timesteps[1:] + [-1], strict=True))

    def step(self, model_output: torch.Tensor, t: int, x: torch.Tensor, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        # 1. the previous timestep t' and the cumulative alphas at t and t' (a_{-1} = 1)
        t_prev = self._prev[t]
        a_t = float(self.alphas_cumprod[t])
        a_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        alpha_t = a_t / a_prev
        beta_t = 1.0 - alpha_t
        # 2. predicted x_0 (clipped to the data range [-1, 1])
        x0, _ = x0_and_eps(model_output, x, a_t, self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        # 3. posterior mean mu(x_t, x_0), eq. 7
        mean = (a_prev ** 0.5 * beta_t / (1 - a_t)) * x0 + (alpha_t ** 0.5 * (1 - a_prev) / (1 - a_t)) * x
        if t_prev < 0:
            return mean
        # 4. add noise with the posterior variance beta-tilde
        var = (1 - a_prev) / (1 - a_t) * beta_t
        return mean + var ** 0.5 * noise_like(x, generator)
