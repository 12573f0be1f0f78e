"""Samplers for diffusion models, one algorithm per file, all with one small contract::

    sampler = make_sampler("dpm-solver++", alphas_cumprod, prediction="epsilon")
    sampler.set_timesteps(20)               # choose the 20 timesteps to visit, descending
    for t in sampler.timesteps:
        out = network(x, t)                 # epsilon or v, as the model was trained
        x = sampler.step(out, t, x, generator=g)   # x_t -> x_{t_prev}

The sampling loop itself lives in :meth:`aigc.models.diffusion.Diffusion.sample`.
"""

from __future__ import annotations

import torch

from aigc.errors import ConfigError
from aigc.models.samplers.ddim import DDIMSampler
from aigc.models.samplers.ddpm import DDPMSampler
from aigc.models.samplers.dpm_solver import DPMSolverPlusPlus2MSampler

SAMPLERS = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpm-solver++": DPMSolverPlusPlus2MSampler,
}


def make_sampler(name: str, alphas_cumprod: torch.Tensor, prediction: str, *,
                 eta: float = 0.0, clip_x0: bool = True):
    """Build a sampler by name (``ddpm``, ``ddim``, ``dpm-solver++``); ``eta`` is DDIM's only."""
    if name not in SAMPLERS:
        raise ConfigError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    if name == "ddim":
        return DDIMSampler(alphas_cumprod, prediction, eta=eta, clip_x0=clip_x0)
    if eta:
        raise ConfigError(f"eta applies to the ddim sampler only, not {name!r}")
    return SAMPLERS[name](alphas_cumprod, prediction, clip_x0=clip_x0)
