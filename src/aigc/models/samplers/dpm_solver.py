"""DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", algorithm 2): a second-order multistep solver of the diffusion ODE in its
data-prediction form.

With alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t) (a = alpha_bar) and lambda_t = log(alpha_t / sigma_t),
one step from t_{i-1} to t_i, where x_0(i-1) is the network's predicted clean image:

    h_i  = lambda_{t_i} - lambda_{t_{i-1}}
    D_i  = x_0(i-1)                                                   first step (first order)
    D_i  = (1 + 1 / (2 r_i)) x_0(i-1) - 1 / (2 r_i) x_0(i-2),  r_i = h_{i-1} / h_i     (2M)
    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i

The final step lands on sigma = 0 (``final="zero"``), where the update reduces to ``x = x_0``
(first order, as the paper recommends for the last step with few steps), or on alpha_bar_0
(``final="sigma_min"``), first order when ``euler_at_final`` or (``lower_order_final`` and
fewer than 15 steps), else 2M: the rules of diffusers' ``DPMSolverMultistepScheduler``.
``spacing`` places the visited timesteps (:func:`spaced_timesteps` with ``extra_point``).
"""

from __future__ import annotations

import math

import torch

from aigc.errors import ConfigError
from aigc.models.samplers._common import initial_steps, spaced_timesteps, x0_and_eps

FINALS = ("zero", "sigma_min")


class DPMSolverPlusPlus2MSampler:
    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str, *, clip_x0: bool = True,
                 spacing: str = "trailing", steps_offset: int = 0, final: str = "zero",
                 lower_order_final: bool = True, euler_at_final: bool = False,
                 diffusers_rules: bool = False):
        if final not in FINALS:
            raise ConfigError(f"final must be one of {', '.join(FINALS)}, got {final!r}")
        self.alphas_cumprod = alphas_cumprod.double().cpu()
        self.prediction, self.clip_x0 = prediction, clip_x0
        self.spacing, self.steps_offset = spacing, steps_offset
        self.diffusers_rules = diffusers_rules
        self.final, self.lower_order_final = final, bool(lower_order_final)
        self.euler_at_final = bool(euler_at_final)
        self.num_train_timesteps = len(alphas_cumprod)
        self.set_timesteps(initial_steps(self.num_train_timesteps, 20, spacing, steps_offset,
                                         extra_point=True, diffusers_rules=diffusers_rules))

    def set_timesteps(self, n: int) -> None:
        self.timesteps = spaced_timesteps(self.num_train_timesteps, n, self.spacing,
                                          self.steps_offset, extra_point=True,
                                          diffusers_rules=self.diffusers_rules)
        self._prev = dict(zip(self.timesteps, self.timesteps[1:] + [-1], strict=True))
        self._last_x0: torch.Tensor | None = None  # x_0(i-2) for the multistep correction
        self._last_h: float | None = None
        # the last step is first order when it lands on sigma = 0 or by diffusers' rules
        self._first_order_final = (self.final == "zero" or self.euler_at_final
                                   or (self.lower_order_final and n < 15))

    @staticmethod
    def _lambda(a: float) -> float:
        return 0.5 * math.log(a / (1 - a))  # log(alpha_t / sigma_t), a = alpha_bar_t

    def step(self, model_output: torch.Tensor, t: int, x: torch.Tensor, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        # 1. data prediction x_0 at the current timestep
        a_t = float(self.alphas_cumprod[t])
        x0, _ = x0_and_eps(model_output, x, a_t, self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        t_prev = self._prev[t]
        if t_prev < 0 and self.final == "zero":  # 2a. sigma = 0: the solution is x_0 itself
            self._last_x0, self._last_h = None, None
            return x0
        # 2b. alpha, sigma and the log-SNR step h (after the last timestep: alpha_bar_0)
        a_prev = float(self.alphas_cumprod[t_prev if t_prev >= 0 else 0])
        alpha_prev, sigma_prev, sigma_t = a_prev ** 0.5, (1 - a_prev) ** 0.5, (1 - a_t) ** 0.5
        h = self._lambda(a_prev) - self._lambda(a_t)
        # 3. D: first order on the first (and maybe the last) step, else the 2M combination
        if self._last_x0 is None or (t_prev < 0 and self._first_order_final):
            d = x0
        else:
            r = self._last_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self._last_x0
        self._last_x0, self._last_h = (None, None) if t_prev < 0 else (x0, h)
        # 4. the exponential-integrator update
        return (sigma_prev / sigma_t) * x - alpha_prev * math.expm1(-h) * d
