"""DPM-Solver++(2M) (Lu et al., 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", algorithm 2): a second-order multistep solver of the diffusion ODE in its
data-prediction form.

With alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t) (a = alpha_bar) and lambda_t = log(alpha_t / sigma_t),
one step from t_{i-1} to t_i, where x_0(i-1) is the network's predicted clean image:

    h_i  = lambda_{t_i} - lambda_{t_{i-1}}
    D_i  = x_0(i-1)                                                   first step (first order)
    D_i  = (1 + 1 / (2 r_i)) x_0(i-1) - 1 / (2 r_i) x_0(i-2),  r_i = h_{i-1} / h_i     (2M)
    x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x_{t_{i-1}} - alpha_{t_i} (exp(-h_i) - 1) D_i

The final step lands on sigma = 0, where the update reduces to ``x = x_0`` (first order, as the
paper recommends for the last step with few steps).
"""

from __future__ import annotations

import math

import torch

from aigc.models.samplers._common import trailing_timesteps, x0_and_eps


class DPMSolverPlusPlus2MSampler:
    def __init__(self, alphas_cumprod: torch.Tensor, prediction: str, *, clip_x0: bool = True):
        self.alphas_cumprod = alphas_cumprod.double().cpu()
        self.prediction, self.clip_x0 = prediction, clip_x0
        self.num_train_timesteps = len(alphas_cumprod)
        self.set_timesteps(20 if self.num_train_timesteps >= 20 else self.num_train_timesteps)

    def set_timesteps(self, n: int) -> None:
        self.timesteps = trailing_timesteps(self.num_train_timesteps, n)
        self._prev = dict(zip(self.timesteps, self.timesteps[1:] + [-1], strict=True))
        self._last_x0: torch.Tensor | None = None  # x_0(i-2) for the multistep correction
        self._last_h: float | None = None

    def _lambda(self, t: int) -> float:
        a = float(self.alphas_cumprod[t])
        return 0.5 * math.log(a / (1 - a))  # log(alpha_t / sigma_t)

    def step(self, model_output: torch.Tensor, t: int, x: torch.Tensor, *,
             generator: torch.Generator | None = None) -> torch.Tensor:
        # 1. data prediction x_0 at the current timestep
        a_t = float(self.alphas_cumprod[t])
        x0, _ = x0_and_eps(model_output, x, a_t, self.prediction)
        if self.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        t_prev = self._prev[t]
        if t_prev < 0:  # 2a. sigma_{t'} = 0: the solution is the data prediction itself
            self._last_x0, self._last_h = None, None
            return x0
        # 2b. alpha, sigma and the log-SNR step h
        a_prev = float(self.alphas_cumprod[t_prev])
        alpha_prev, sigma_prev, sigma_t = a_prev ** 0.5, (1 - a_prev) ** 0.5, (1 - a_t) ** 0.5
        h = self._lambda(t_prev) - self._lambda(t)
        # 3. D: first order on the first step, else the 2M combination of two x_0 predictions
        if self._last_x0 is None:
            d = x0
        else:
            r = self._last_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self._last_x0
        self._last_x0, self._last_h = x0, h
        # 4. the exponential-integrator update
        return (sigma_prev / sigma_t) * x - alpha_prev * math.expm1(-h) * d
